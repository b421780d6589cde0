"""Sequential (lifelong) editing: T edits made one after another to the same model.

The paper scores every edit alone, on the unedited model. An editor in use keeps editing: edit t is computed on the
model that already holds edits 0 … t−1 and is added on top of them. Two questions then matter: does an early edit
survive the later ones (retention), and how far do unrelated facts drift as edits pile up (drawdown)?

- :func:`sequential` runs one sequence and, after each step, scores every edit made so far;
- :func:`retention_matrix` turns its long table into R[i, t], the score of edit i once t + 1 edits are in;
- :func:`run` does it for zoo models, editors and seeds (the ``mendlab sequential`` command), :func:`summarize`
  tabulates where each sequence ends.

The model is always handed back exactly as it was: each edit is applied in place with
:meth:`mendlab.edit.Edit.applied`, and an ``ExitStack`` undoes them in reverse order, after the last step or on
an error.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np
import torch

from mendlab import losses
from mendlab.data import Collator
from mendlab.edit import restore
from mendlab.experiments.batch import parse_item
from mendlab.experiments.editors import editor_for, task_for, world_of_run
from mendlab.memory import LeastSquaresMemory
from mendlab.metrics import _flat, _Panel

SETUPS = (("tiny-bart", "qa"),)  # the default of `mendlab sequential`
CHUNK = 64  # rows per forward pass when scoring


def _correct(model, kind: str, enc: dict, n: int) -> torch.Tensor:
    """Teacher-forced all-token argmax match [n] (float, on the CPU) of the first ``n`` rows of ``enc``."""
    out = []
    for start in range(0, n, CHUNK):
        part = {k: v[start:min(n, start + CHUNK)] for k, v in enc.items()}
        out.append(losses.correct(kind, losses.forward(model, part), part["labels"]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class _Probes:
    """Every request's x_e and its rephrasings x'_e, encoded once in edit order, so that the edits made so far
    are always the first rows."""

    def __init__(self, model, collator: Collator, examples):
        device = next(model.parameters()).device
        gen = examples[0].kind == "gen"

        def enc_of(pairs):
            return {k: v.to(device) for k, v in collator.encode(pairs, gen=gen).items()}

        self.kind = collator.kind
        self.single = [enc_of([(e.prompt, e.target)]) for e in examples]  # what each edit is computed from
        self.inner = enc_of([(e.prompt, e.target) for e in examples])
        pairs, owner = _flat(examples, "rephrases")
        self.outer = enc_of(pairs) if pairs else None
        self.owner = torch.tensor(owner, dtype=torch.long)

    def score(self, model, t: int) -> list[dict]:
        """One row per edit i ≤ t under the model as it is now: ``es_edit`` on x_e, ``es_rephrase`` the mean over
        the edit's rephrasings (NaN for an edit without any)."""
        n = t + 1
        es_edit = _correct(model, self.kind, self.inner, n)
        m = int((self.owner <= t).sum())  # owners are in edit order: the rephrasings of edits ≤ t come first
        es_rephrase = torch.full((n,), float("nan"))
        if m:
            ok = _correct(model, self.kind, self.outer, m)
            owner = self.owner[:m]
            es_rephrase = torch.zeros(n).index_add_(0, owner, ok) / torch.bincount(owner, minlength=n)  # 0/0: NaN
        return [{"edit": i, "step": t, "es_rephrase": float(es_rephrase[i]), "es_edit": float(es_edit[i])}
                for i in range(n)]


def _drawdown(pan: _Panel, model) -> tuple[float, float]:
    """(accuracy on the panel, drawdown) of the model as it is now. The drawdown is ``acc_pre − acc_post``, or,
    for a language-modelling panel (no answers to be right about), the rise in perplexity."""
    acc, nll, tokens = pan.score(losses.forward(model, pan.enc))
    if pan.lm:
        return acc, float(np.exp(nll / max(tokens, 1)) - np.exp(pan.nll_pre / max(pan.tokens, 1)))
    return acc, pan.acc_pre - acc


class _Stacked:
    """Edits applied one after another in place; what each weight was before its first edit is kept in
    ``originals``. ``aggregate=None``: each edit's own ΔW is added on top (undone in reverse order on exit);
    ``"least_squares"``: the editor's edits go into a :class:`~mendlab.memory.LeastSquaresMemory` and its new
    total replaces the old one at every step."""

    def __init__(self, editor, model, stack: ExitStack, aggregate: str | None):
        if aggregate not in (None, "sum", "least_squares"):
            raise ValueError(f"unknown aggregation {aggregate!r} for sequential editing; use sum or least_squares")
        if aggregate == "least_squares" and not editor.batched:
            raise ValueError(f"{editor.alg} makes no keys for least squares (it has no edit_many)")
        self.editor, self.model, self.stack = editor, model, stack
        self.memory = LeastSquaresMemory() if aggregate == "least_squares" else None
        self.weights = dict(model.named_parameters())
        self.originals: dict[str, torch.Tensor] = {}
        self.saved: dict[str, torch.Tensor] | None = None
        if self.memory is not None:
            stack.callback(lambda: restore(model, self.saved) if self.saved is not None else None)

    def step(self, enc) -> None:
        """Make the next edit from ``enc`` on the model as it is now (editors enable gradients where needed)."""
        if self.memory is None:
            edit = self.editor.edit(self.model, enc).detach()
            self._keep(edit.names)
            self.stack.enter_context(edit.applied(self.model))
            return
        total = self.memory.add(self.editor.edit_many(self.model, enc).detach())
        if self.saved is not None:
            restore(self.model, self.saved)
        self._keep(total.names)
        self.saved = total.apply_(self.model)

    def _keep(self, names) -> None:
        for name in names:
            if name not in self.originals:  # cloned before its first edit, so later edits do not enter the copy
                self.originals[name] = self.weights[name].detach().clone()

    def reverted(self) -> bool:
        return all(torch.equal(self.weights[name], w) for name, w in self.originals.items())


@torch.no_grad()
def sequential(editor, model, tok, examples, panel: list[tuple[str, str]], *, aggregate: str | None = None,
               progress: bool = True, max_length: int = 128):
    """Apply the T = ``len(examples)`` edits one after another to ``model`` and score, after each step t, every
    edit i ≤ t and the panel of unrelated ``(prompt, answer)`` pairs.

    Edit t is computed on the model that already holds edits 0 … t−1. ``aggregate``: None or ``"sum"``, each
    edit's ΔW added on top of the others (in place); ``"least_squares"``, the least-squares total of every edit's
    keys and wanted outputs so far (:class:`~mendlab.memory.LeastSquaresMemory`) replaces the previous total.
    Returns ``(frame, info)``: ``frame`` has one row per (edit i, step t) with i ≤ t, columns ``edit``, ``step``,
    ``es_rephrase`` and ``es_edit``; ``info`` holds ``acc_pre``, per step ``acc_post`` and ``drawdown``,
    ``edit_ms`` (mean time of one edit) and ``reverted_exactly``: whether every weight is, bit for bit, what it
    was before the first edit once the sequence is undone. The model is restored even if an edit raises.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("sequential needs at least one edit request")
    collator = Collator.for_model(model, tok, max_length=max_length)
    probes, pan = _Probes(model, collator, examples), _Panel(model, collator, panel)
    rows, acc_post, drawdown, edit_s = [], [], [], 0.0
    with ExitStack() as stack:
        stacked = _Stacked(editor, model, stack, aggregate)
        for t in tqdm(range(len(examples)), desc="sequential", disable=not progress, mininterval=1.0):
            t0 = time.perf_counter()
            stacked.step(probes.single[t])
            edit_s += time.perf_counter() - t0
            rows += probes.score(model, t)
            acc, dd = _drawdown(pan, model)
            acc_post.append(acc)
            drawdown.append(dd)
    info = {"acc_pre": pan.acc_pre, "acc_post": acc_post, "drawdown": drawdown, "reverted_exactly": stacked.reverted(),
            "edit_ms": 1000 * edit_s / len(examples)}
    return pd.DataFrame(rows, columns=["edit", "step", "es_rephrase", "es_edit"]), info


def retention_matrix(frame, key: str = "es_rephrase") -> np.ndarray:
    """R [T, T] with R[i, t] the ``key`` score of edit i after t + 1 edits (NaN where i > t: not made yet).
    Row i read left to right is how edit i fares as later edits arrive; its diagonal is each edit just made."""
    T = int(frame["step"].max()) + 1
    R = np.full((T, T), np.nan)
    R[frame["edit"].to_numpy(int), frame["step"].to_numpy(int)] = frame[key].to_numpy(float)
    return R


def run(setups, algs, seeds, *, T: int = 100, split: str = "test", steps: int | None = None,
        world_seed: int | None = None, progress: bool = True, on_row=None):
    """For each seed, (model, task) of ``setups`` and item of ``algs``: the first ``T`` requests of the ``split``
    edited in sequence by the cached editor of :func:`~mendlab.experiments.editors.editor_for` (FT / FT+KL: lr
    swept on validation edits; MEND, KE, ENN: trained, ``steps`` overriding the profile's length). An item is an
    alg, or ``ALG:least_squares`` for the least-squares memory (``ALG:sum`` is the alg itself).

    Returns a long DataFrame: :func:`sequential`'s rows with ``model``, ``task``, ``editor`` (the item), ``alg``,
    ``aggregate``, ``seed``, the
    ``drawdown`` after that step (repeated on each row of the step) and ``reverted_exactly``. Seeds run one after
    another, so a cut run holds whole seeds; ``on_row(row)`` is called as each row is made (``ResultsTable.add``).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    specs = {item: parse_item(item) for item in algs}  # clear errors before any work
    jobs = [(s, m, t, a) for s in seeds for m, t in setups for a in algs]
    for seed, model_name, task, item in tqdm(jobs, desc="sequential runs", disable=not progress):
        alg, aggregate = specs[item]
        editor, model, tok, _ = editor_for(model_name, alg, seed, task, steps=steps, world_seed=world_seed)
        data = task_for(model_name, model, tok, task, world_of_run(seed, world_seed))
        frame, info = sequential(editor, model, tok, data.split(split)[:T], data.panel, aggregate=aggregate,
                                 progress=progress)
        for r in frame.to_dict(orient="records"):
            rows.append({"model": model_name, "task": task, "editor": item, "alg": alg,
                         "aggregate": aggregate or "sum", "seed": seed, **r,
                         "drawdown": info["drawdown"][r["step"]], "reverted_exactly": info["reverted_exactly"]})
            if on_row is not None:
                on_row(rows[-1])
    return pd.DataFrame(rows)


def summarize(frame, digits: int = 3):
    """Where each sequence ends, per (task, editor item): the mean over all T edits of ``es_rephrase`` and
    ``es_edit`` after the last edit, and the drawdown then; mean ± std over seeds."""
    import pandas as pd

    frame = frame.assign(editor=frame["editor"] if "editor" in frame else frame["alg"])  # older tables: no items
    run_keys = ["model", "task", "editor", "seed"]
    last = frame[frame["step"] == frame.groupby(run_keys)["step"].transform("max")]
    ends = last.groupby(run_keys, sort=False).agg(T=("edit", "size"), es_rephrase=("es_rephrase", "mean"),
                                                  es_edit=("es_edit", "mean"), drawdown=("drawdown", "first"))
    out = []
    for (task, item), g in ends.reset_index().groupby(["task", "editor"], sort=False):
        row = {"task": task, "editor": item, "seeds": len(g), "T": int(g["T"].max())}
        for key in ("es_rephrase", "es_edit", "drawdown"):
            mean, std = g[key].mean(), g[key].std()
            row[key] = f"{mean:.{digits}f}" + ("" if std != std else f" ± {std:.{digits}f}")  # NaN: one seed
        out.append(row)
    return pd.DataFrame(out)
