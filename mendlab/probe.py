"""What a model knows: greedy answers to the world's questions, as a table.

Used by ``mendlab demo`` and the first notebook to show, before any editing, which facts the base model
gets right in trained phrasings and in the held-out phrasing, and where it is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from mendlab.data import LABELS
from mendlab.families import get_family
from mendlab.world import N_TEMPLATES, World


@torch.no_grad()
def answer(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 4, words: int = 1) -> list[str]:
    """Greedy answers of ``words`` words (one by default) to ``prompts``; for a classifier,
    ``SUPPORTS``/``REFUTES``."""
    model.eval()
    kind = get_family(model).kind
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        if kind == "classifier":
            out.append(LABELS[int(model(**enc).logits.squeeze() > 0)])
            continue
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = ids[0] if kind == "seq2seq" else ids[0, enc["input_ids"].shape[1]:]
        new_words = tokenizer.decode(new, skip_special_tokens=True).split()
        # world answers are one word; a decoder trained without an end marker runs on after it
        out.append(" ".join(w.strip(".?,") for w in new_words[:words]))
    return out


def knowledge(model, tokenizer, world: World, subjects: Sequence[str], templates: Sequence[int] | None = None,
              ) -> pd.DataFrame:
    """One row per (subject, relation, template): question, truth, greedy prediction, correct.

    For a classifier the rows are claims stated with the true object (truth ``SUPPORTS``).
    ``templates`` defaults to every template; the last one (held out of pre-training) is flagged.
    """
    kind = get_family(model).kind
    templates = range(N_TEMPLATES) if templates is None else templates
    rows = []
    for s in subjects:
        for r in world.relations:
            fact = next(f for f in world.facts_in(world.split_of[s]) if f.subject == s and f.relation == r.name)
            for t in templates:
                if kind == "classifier":
                    rows.append((s, r.name, t, world.statement(fact, t), "SUPPORTS"))
                else:
                    rows.append((s, r.name, t, world.question(fact, t), fact.object))
    df = pd.DataFrame(rows, columns=["subject", "relation", "template", "prompt", "truth"])
    df["heldout_template"] = df["template"] == N_TEMPLATES - 1
    df["prediction"] = answer(model, tokenizer, df["prompt"].tolist(), max_new_tokens=4)
    df["correct"] = df["prediction"] == df["truth"]
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per relation, trained templates vs the held-out one."""
    table = df.pivot_table(index="relation", columns="heldout_template", values="correct", aggfunc="mean")
    return table.rename(columns={False: "trained templates", True: "held-out template"}).round(3)
