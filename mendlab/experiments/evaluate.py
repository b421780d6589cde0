"""Scoring an editor on held-out edits, and looking at one edit up close."""

from __future__ import annotations

import torch

from mendlab import metrics
from mendlab.experiments.editors import task_for


def evaluate_editor(editor, model, tok, model_name: str, *, seed: int = 0, task: str | None = None,
                    split: str = "test", n: int | None = None, n_edits: int = 1, aggregate: str | None = None,
                    progress: bool = True, return_rows: bool = False):
    """``metrics.evaluate`` on the held-out split of the model's world (test subjects never seen in training);
    ``n_edits`` and ``aggregate``: batch editing, see :func:`mendlab.metrics.evaluate`."""
    t = task_for(model_name, model, tok, task, seed, progress=progress)
    examples = t.split(split)[:n] if n else t.split(split)
    return metrics.evaluate(editor, model, tok, examples, t.panel, n_edits=n_edits, aggregate=aggregate,
                            progress=progress, return_rows=return_rows)


def target_probability(model, tok, prompt: str, target: str, edit=None) -> float:
    """p(target | prompt) under teacher forcing (product over the target's tokens), optionally edited."""
    from mendlab import losses
    from mendlab.data import Collator

    collator = Collator.for_model(model, tok)
    enc = {k: v.to(next(model.parameters()).device) for k, v in collator.encode([(prompt, target)]).items()}
    with torch.no_grad():
        logits = edit.forward(model, enc) if edit is not None else losses.forward(model, enc)
    if collator.kind == "classifier":
        p = torch.sigmoid(logits.float().reshape(-1))[0]
        return float(p if enc["labels"][0] == 1 else 1 - p)
    total, _ = losses.token_nll(collator.kind, logits, enc["labels"])
    return float(torch.exp(-total[0]))


def edit_report(editor, model, tok, prompt: str, target: str, rephrases=(), unrelated=()):
    """Edit ``prompt`` → ``target`` and tabulate answers and p(target) before and after, on the prompt, its
    rephrases and unrelated (prompt, answer) pairs (where p is of *their own* answer). Returns (edit, DataFrame)."""
    import pandas as pd

    from mendlab import probe
    from mendlab.data import EditExample

    with torch.no_grad():
        edit = editor.edit(model, tok, EditExample(prompt, target)).detach()
    checks = ([("edit", prompt, target)] + [("rephrase", r, target) for r in rephrases]
              + [("unrelated", p, a) for p, a in unrelated])
    prompts = [p for _, p, _ in checks]
    before = probe.answer(model, tok, prompts)
    with edit.applied(model):
        after = probe.answer(model, tok, prompts)
    rows = [{"role": role, "prompt": p, "expected": a, "answer_before": b, "answer_after": c,
             "p_before": target_probability(model, tok, p, a), "p_after": target_probability(model, tok, p, a, edit)}
            for (role, p, a), b, c in zip(checks, before, after, strict=True)]
    return edit, pd.DataFrame(rows)
