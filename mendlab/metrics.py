"""Edit success and drawdown, as the paper (§5, Eq. 1) and the official ``trainer.py`` define them.

- edit success: teacher-forced all-token argmax match of the target (sign match for a classifier), reported on
  the edit input itself (``es_edit``), on its rephrasings in trained templates (``es_rephrase``) and in the
  held-out template (``es_heldout``);
- accuracy drawdown ``acc_dd`` = accuracy before − after the edit on unrelated facts (the task's panel);
- perplexity drawdown ``ppl_dd`` = e^{pooled NLL after} − e^{pooled NLL before} on the same panel (absolute);
- ``kl``: the locality KL(pre ‖ post) on the panel (§5.4).

Every request is edited on its own (``n_edits=1``) unless ``n_edits`` > 1, in which case requests are edited
in groups of that size and each member is scored under the group's one edit (batch editing, paper §5.3): by
default the editor's pooled edit of the k requests (``editor.edit``: one loss over all their tokens), or, with
``aggregate``, the k requests edited apart (``edit_many``) and combined by ``EditSet.aggregate`` (``"sum"``,
``"least_squares"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from mendlab import losses
from mendlab.data import Collator, EditExample
from mendlab.edit import AGGREGATIONS

KEYS = ("es_edit", "es_rephrase", "es_heldout", "acc_dd", "ppl_dd", "kl", "n")


def _flat(examples: Sequence[EditExample], field: str) -> tuple[list[tuple[str, str]], list[int]]:
    pairs, owner = [], []
    for b, e in enumerate(examples):
        for text in getattr(e, field):
            pairs.append((text, e.target))
            owner.append(b)
    return pairs, owner


class _Panel:
    """The unrelated pairs, encoded once, with the unedited model's logits and scores."""

    def __init__(self, model, collator: Collator, pairs: list[tuple[str, str]]):
        self.kind = collator.kind
        self.enc = {k: v.to(next(model.parameters()).device) for k, v in collator.encode(pairs).items()}
        self.lm = all(a == "" for _, a in pairs)
        with torch.no_grad():
            self.pre = losses.forward(model, self.enc)
        self.acc_pre, self.nll_pre, self.tokens = self.score(self.pre)

    def score(self, logits) -> tuple[float, float, int]:
        labels = self.enc["labels"]
        acc = float(losses.correct(self.kind, logits, labels).float().mean())
        if self.kind == "classifier":
            return acc, float(losses.nll(self.kind, logits, labels)) * len(labels), len(labels)
        total, count = losses.token_nll(self.kind, logits, labels)
        return acc, float(total.sum()), int(count.sum())

    def kl(self, post) -> float:
        return float(losses.kl_loc(self.kind, self.pre, post, self.enc))


@torch.no_grad()
def evaluate(editor, model, tokenizer, examples: Sequence[EditExample], panel: list[tuple[str, str]], *,
             n_edits: int = 1, aggregate: str | None = None, chunk: int = 16, max_length: int = 128,
             progress: bool = True, return_rows: bool = False):
    """Edit every example (alone, or in groups of ``n_edits``) and score it; returns a dict of the ``KEYS``
    plus ``acc_pre``, ``acc_post``, ``ppl_pre``, ``ppl_post``, ``n_edits``, ``aggregate``, ``edit_ms`` (mean per
    request); with ``return_rows`` also a per-request DataFrame. The model is never modified.

    A group of ``n_edits`` > 1 gets one edit: ``editor.edit`` of the k requests together (``aggregate=None``: a
    pooled edit, one loss over all their tokens; FT fine-tunes on the k facts at once), or, with ``aggregate``
    (one of :data:`mendlab.edit.AGGREGATIONS`) and an editor with ``edit_many``, ``edit_many(...).aggregate``:
    each request edited alone, the k edits combined. An editor without ``edit_many`` (FT) always pools. The
    result's ``aggregate`` is the aggregation used (None where none was).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    collator = Collator.for_model(model, tokenizer, max_length=max_length)
    device = next(model.parameters()).device
    gen = examples[0].kind == "gen"

    def enc_of(pairs):
        return {k: v.to(device) for k, v in collator.encode(pairs, gen=gen).items()}

    if aggregate is not None and aggregate not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregate!r}; choose one of {AGGREGATIONS} (or None: a pooled edit)")
    pan = _Panel(model, collator, panel)
    separate = n_edits == 1 and editor.batched  # many requests apart in one pass (an EditSet)
    aggregate = aggregate if n_edits > 1 and editor.batched else None
    group = chunk if separate else n_edits
    rows, nll_post, tok_post, edit_s = [], 0.0, 0, 0.0
    for start in tqdm(range(0, len(examples), group), desc="evaluate", disable=not progress, mininterval=1.0):
        members = list(examples[start:start + group])
        inner = enc_of([(e.prompt, e.target) for e in members])
        t0 = time.perf_counter()
        # editors switch gradients on where they need them (MEND: only for the base model's backward)
        if separate:
            edits = editor.edit_many(model, inner)
        elif n_edits == 1:
            edits = [editor.edit(model, enc_of([(e.prompt, e.target)])) for e in members]
        elif aggregate is not None:  # the k requests edited apart, then combined into one edit
            edits = editor.edit_many(model, inner).aggregate(aggregate)
        else:
            edits = editor.edit(model, inner)
        edit_s += time.perf_counter() - t0
        run = _runner(model, _detach(edits), separate, n_edits)
        scores = _edit_scores(collator.kind, run, inner, members, enc_of)
        for b, e in enumerate(members):
            post = run(pan.enc, [b] * len(pan.enc["labels"]))
            acc, nll, tokens = pan.score(post)
            nll_post, tok_post = nll_post + nll, tok_post + tokens
            rows.append({"prompt": e.prompt, "target": e.target, "subject": e.subject, "relation": e.relation,
                         **{k: float(v[b]) for k, v in scores.items()}, "acc_post": acc, "kl": pan.kl(post)})
    df = pd.DataFrame(rows)
    result = _summary(df, pan, nll_post, tok_post, collator.kind, n_edits, edit_s, aggregate)
    return (result, df) if return_rows else result


def _runner(model, edits, separate: bool, n_edits: int):
    """``run(enc, owner)``: the logits of each row of ``enc`` under the edit its request ``owner[row]`` got (a
    group edited together shares one edit)."""
    device = next(model.parameters()).device

    def run(enc, owner):
        if separate:
            return edits.forward(model, enc, torch.tensor(owner, device=device))
        if n_edits != 1:
            return edits.forward(model, enc)
        out, i = [], 0
        while i < len(owner):  # one forward per run of rows that share an edit
            j = i
            while j < len(owner) and owner[j] == owner[i]:
                j += 1
            out.append(edits[owner[i]].forward(model, {k: v[i:j] for k, v in enc.items()}))
            i = j
        return torch.cat(out)

    return run


def _edit_scores(kind: str, run, inner: dict, members: list[EditExample], enc_of) -> dict[str, torch.Tensor]:
    """Per-request edit success on x_e and the mean over its rephrasings (trained and held-out templates)."""
    scores = {"es_edit": losses.correct(kind, run(inner, list(range(len(members)))), inner["labels"]).float()}
    for key, field in (("es_rephrase", "rephrases"), ("es_heldout", "heldout_rephrases")):
        pairs, owner = _flat(members, field)
        per = torch.full((len(members),), float("nan"))
        if pairs:
            enc = enc_of(pairs)
            ok = losses.correct(kind, run(enc, owner), enc["labels"]).float().cpu()
            own = torch.tensor(owner)
            per = torch.stack([ok[own == b].mean() if (own == b).any() else torch.tensor(float("nan"))
                               for b in range(len(members))])
        scores[key] = per
    return scores


def _summary(df, pan: _Panel, nll_post: float, tok_post: int, kind: str, n_edits: int, edit_s: float,
             aggregate: str | None = None) -> dict:
    ppl_pre = math.exp(pan.nll_pre / max(pan.tokens, 1))
    ppl_post = math.exp(nll_post / max(tok_post, 1))
    return {
        "es_edit": float(df["es_edit"].mean()),
        "es_rephrase": _mean(df["es_rephrase"]),
        "es_heldout": _mean(df["es_heldout"]),
        "acc_pre": pan.acc_pre, "acc_post": float(df["acc_post"].mean()),
        "acc_dd": None if pan.lm else pan.acc_pre - float(df["acc_post"].mean()),
        "ppl_pre": ppl_pre, "ppl_post": ppl_post,
        "ppl_dd": None if kind == "classifier" else ppl_post - ppl_pre,
        "kl": float(df["kl"].mean()), "n": len(df), "n_edits": n_edits, "aggregate": aggregate,
        "edit_ms": 1000 * edit_s / max(len(df), 1),
    }


def panel_changes(editor, model, tokenizer, examples: Sequence[EditExample], panel: list[tuple[str, str]], *,
                  max_length: int = 128, progress: bool = True):
    """Which unrelated facts each edit breaks: one row per (request, panel pair), with whether the pair's answer
    is right before and after that request's edit alone (``correct_pre``, ``correct_post``) and the request's
    ``subject`` and ``relation``. ``acc_dd`` is the mean of ``correct_pre − correct_post``; this says where it
    comes from. The model is never modified."""
    import pandas as pd
    from tqdm.auto import tqdm

    collator = Collator.for_model(model, tokenizer, max_length=max_length)
    pan = _Panel(model, collator, panel)
    if pan.lm:
        raise ValueError("panel_changes needs (prompt, answer) pairs; a generation panel has no answers")
    labels = pan.enc["labels"]
    pre = losses.correct(collator.kind, pan.pre, labels).cpu()
    device = next(model.parameters()).device
    rows = []
    for i, e in enumerate(tqdm(examples, desc="panel changes", disable=not progress, mininterval=1.0)):
        enc = {k: v.to(device) for k, v in collator.encode([(e.prompt, e.target)]).items()}
        edit = _detach(editor.edit(model, enc))
        with torch.no_grad():
            post = losses.correct(collator.kind, edit.forward(model, pan.enc), labels).cpu()
        rows += [{"request": i, "prompt": e.prompt, "target": e.target, "subject": e.subject,
                  "relation": e.relation, "panel_prompt": p, "panel_answer": a,
                  "correct_pre": bool(pre[j]), "correct_post": bool(post[j])} for j, (p, a) in enumerate(panel)]
    return pd.DataFrame(rows)


@torch.no_grad()
def margin_moves(editor, model, tokenizer, examples: Sequence[EditExample], *, max_length: int = 128):
    """For a classifier: how far each edit moves the logit of x'_e towards the requested label, against the margin
    it has to cross. One row per request: ``margin_pre`` and ``margin_post`` (the logit signed towards the target
    label: > 0 means the model gives the target), ``moved`` = post − pre. An editor that reads the request's
    direction moves every margin up; one that edits too weakly moves it up by less than the margin (ES is the
    share with ``margin_post`` > 0). The model is never modified."""
    import pandas as pd

    collator = Collator.for_model(model, tokenizer, max_length=max_length)
    if collator.kind != "classifier":
        raise ValueError(f"margin_moves is for classifiers; this model is a {collator.kind}")
    device = next(model.parameters()).device
    rows = []
    for e in examples:
        x = e.rephrases[0] if e.rephrases else e.prompt
        enc = {k: v.to(device) for k, v in collator.encode([(x, e.target)]).items()}
        sign = 2 * float(enc["labels"][0]) - 1
        pre = sign * float(losses.forward(model, enc).reshape(-1)[0])
        edit = _detach(editor.edit(model, tokenizer, e))
        post = sign * float(edit.forward(model, enc).reshape(-1)[0])
        rows.append({"prompt": x, "target": e.target, "margin_pre": pre, "margin_post": post, "moved": post - pre})
    return pd.DataFrame(rows)


def _detach(edits):
    return [e.detach() for e in edits] if isinstance(edits, list) else edits.detach()


def _mean(series) -> float | None:
    s = series.dropna()
    return float(s.mean()) if len(s) else None


def rounded(result: dict, digits: int = 3) -> dict:
    """The result with floats rounded, for printing and stored notebook outputs."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in result.items()}
