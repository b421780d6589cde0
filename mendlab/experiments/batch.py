"""Batch editing (paper §5.3, Table 5): k requests edited at once, as ONE edit of the model.

Each group of k held-out requests gets one edit, and every member is scored under it
(:func:`mendlab.metrics.evaluate` with ``n_edits=k``). An editor item ``ALG[:AGGREGATION]`` says how the k
requests become that one edit:

- ``"mend:sum"``, ``"enn:sum"``: each request edited alone (``edit_many``), the k edits summed, ΔW = Σ_b ΔW_b;
- ``"mend:least_squares"``: the one ΔW that best reproduces, on each edit's own layer inputs, the change that
  edit alone makes (MALMEN; :meth:`mendlab.edit.EditSet.aggregate`);
- ``"mend"`` (no aggregation): the editor's pooled edit, ``editor.edit`` of the k requests together, one loss
  over all their tokens (for a plain gradient step that is the token-weighted *mean* of the k edits, not their
  sum);
- ``"ft"``: fine-tuning on the k facts at once (an editor without ``edit_many`` always pools).

At k = 1 every item is the request's own edit (one edit needs no aggregation). The paper's editors are also
*trained* with k simultaneous edits: :func:`run` with ``train_k="same"`` trains one editor per k
(``TrainConfig.batch_edits = k`` with the item's aggregation), the default ``train_k="1"`` evaluates the editor
trained on single edits at every k.
"""

from __future__ import annotations

import warnings

from mendlab import interference, metrics
from mendlab.data import Collator
from mendlab.edit import AGGREGATIONS
from mendlab.editors import editor_class
from mendlab.experiments.editors import editor_for, task_for, world_of_run

SETUPS = (("tiny-bart", "qa"),)  # Table 5's zsRE BART-base, in miniature: the default of `mendlab batch`
EDITOR_SPECS = ("mend:sum", "mend:least_squares", "enn:sum", "ft")  # the default items
KS = (1, 5, 25, 75, 125)  # Table 5's numbers of simultaneous edits
COHERENCE_N = 125  # requests whose edits give the coherence columns (the largest k of Table 5)
TRAIN_KS = ("1", "same")  # editors trained on single edits, or on k at once
# Table 5 as printed: (edit success, accuracy drawdown) on zsRE with BART-base, per k; ENN's drawdown not entered
PAPER_TABLE5 = {
    "mend": {1: (0.98, 0.002), 5: (0.97, 0.005), 25: (0.89, 0.011), 75: (0.78, 0.011), 125: (0.67, 0.012)},
    # "<0.001" at k = 1 is entered as 0.001
    "enn": {1: (0.99, 0.001), 5: (0.94, 0.007), 25: (0.35, 0.005), 75: (0.16, 0.005), 125: (0.11, 0.006)},
}


def parse_item(item: str) -> tuple[str, str | None]:
    """``"mend:least_squares"`` → ``("mend", "least_squares")``; ``"ft"`` → ``("ft", None)``. An aggregation needs
    an editor with ``edit_many`` (FT fine-tunes on the k facts at once and takes none)."""
    alg, sep, aggregate = item.partition(":")
    cls = editor_class(alg)  # a clear error for an unknown alg
    if sep and aggregate not in AGGREGATIONS:
        raise ValueError(f"{item!r}: unknown aggregation {aggregate!r}; choose one of {AGGREGATIONS}, or none "
                         f"({alg!r}: the editor's pooled edit)")
    if sep and not cls.batched:
        raise ValueError(f"{item!r}: {alg} edits k requests together in one go and takes no aggregation; "
                         f"give it as {alg!r}")
    return alg, aggregate or None


def train_overrides(k: int, aggregate: str | None, train_k: str = "1") -> dict | None:
    """The ``TrainConfig`` fields of the editor evaluated at k: None (the editor trained on single edits) for
    ``train_k="1"`` or k = 1, else ``batch_edits=k``, the item's aggregation (a pooled item trains with
    ``"sum"``) and ``edits_per_step`` = max(10, k) rounded up to a multiple of k."""
    if train_k not in TRAIN_KS:
        raise ValueError(f"train_k must be one of {TRAIN_KS}, got {train_k!r}")
    if train_k == "1" or k == 1:
        return None
    return {"batch_edits": k, "aggregate": aggregate or "sum", "edits_per_step": -(-max(10, k) // k) * k}


def run(setups, items, seeds, *, ks=KS, train_k: str = "1", n: int | None = None, split: str = "test",
        steps: int | None = None, world_seed: int | None = None, progress: bool = True, on_row=None):
    """For each seed, (model, task) of ``setups``, editor item (``ALG[:AGGREGATION]``, see the module) and k of
    ``ks``: the first ``n`` requests of ``split`` (all when None; ``n`` must be at least max(ks)) edited in groups
    of k, cut to a whole number of groups, each member scored under its group's one edit.

    Editors come from :func:`~mendlab.experiments.editors.editor_for` (cached): trained on single edits for every
    k (``train_k="1"``), or one per k trained with k simultaneous edits (``train_k="same"``, see
    :func:`train_overrides`); ``steps`` overrides the profile's training length. A k larger than the requests
    there are is skipped with a warning.

    Returns a long DataFrame, one row per (seed, setup, item, k), seeds outermost: ``model``, ``task``,
    ``editor`` (the item), ``alg``, ``aggregate``, ``train_k`` (the k its editor was trained with; None for an
    editor that trains nothing), ``k``, ``seed``, ``world_seed``, ``es_edit``, ``es_rephrase``, ``drawdown``
    (acc_dd, or ppl_dd where accuracy is not defined), ``edit_ms`` (per request), ``n`` (requests scored), and
    how alike the editor's single edits of the split's first 125 requests are: ``coherence`` and ``edit_size``
    (:mod:`mendlab.interference`; None for FT). Summed edits grow with k like √(k (1 + (k − 1) coherence)).
    ``on_row(row)`` is called as each row is finished (``ResultsTable.add``).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    specs = {item: parse_item(item) for item in items}
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive numbers of edits, got {ks}")
    train_overrides(1, None, train_k)  # a clear error for a bad train_k before any work
    if n is not None and n < max(ks):
        raise ValueError(f"n ({n}) must be at least the largest k ({max(ks)}), or None for the whole split")
    rows = []
    jobs = [(s, m, t, item) for s in seeds for m, t in setups for item in items]
    for seed, model_name, task, item in tqdm(jobs, desc="batch editing", disable=not progress):
        for row in _rows(model_name, task, item, specs[item], seed, ks, train_k, n, split, steps, world_seed):
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return pd.DataFrame(rows)


def _rows(model_name, task, item, spec, seed, ks, train_k, n, split, steps, world_seed):
    """The rows of one (seed, setup, item), k by k; an editor is fetched again only when k changes its training."""
    alg, aggregate = spec
    ws = world_of_run(seed, world_seed)
    trains = editor_class(alg).trainable
    editor = data = current = None
    examples: list = []
    alike, alike_for = {}, None  # the coherence columns, computed once per editor
    for k in ks:
        if data is not None and not _fits(k, examples, split, model_name, task):
            continue
        overrides = train_overrides(k, aggregate, train_k) if trains else None  # FT trains nothing
        if editor is None or overrides != current:
            editor, model, tok, _ = editor_for(model_name, alg, seed, task, steps=steps, world_seed=world_seed,
                                               train_overrides=overrides)
            current = overrides
        if data is None:
            data = task_for(model_name, model, tok, task, ws)
            examples = data.split(split)[:n] if n else data.split(split)
            if not _fits(k, examples, split, model_name, task):
                continue
        if alike_for is not editor:
            alike, alike_for = _alike(editor, model, tok, examples), editor
        r = metrics.evaluate(editor, model, tok, examples[:len(examples) // k * k], data.panel, n_edits=k,
                             aggregate=aggregate, progress=False)
        yield {"model": model_name, "task": task, "editor": item, "alg": alg, "aggregate": aggregate,
               "train_k": (overrides or {}).get("batch_edits", 1) if trains else None, "k": k, "seed": seed,
               "world_seed": ws, "es_edit": r["es_edit"], "es_rephrase": r["es_rephrase"],
               "drawdown": r["acc_dd"] if r["acc_dd"] is not None else r["ppl_dd"], "edit_ms": r["edit_ms"],
               "n": r["n"], "coherence": alike["coherence"], "edit_size": alike["edit_size"]}


def _alike(editor, model, tok, examples, n: int = COHERENCE_N) -> dict:
    """How alike the editor's edits of the first ``n`` requests are (:func:`mendlab.interference.coherence`):
    ``coherence`` (ρ, the mean over edited weights) and ``edit_size`` (the mean over weights of the root mean square
    ‖ΔW_b‖_F); None for an editor without ``edit_many`` (FT) or fewer than 2 requests."""
    if not editor.batched or len(examples) < 2:
        return {"coherence": None, "edit_size": None}
    enc = Collator.for_model(model, tok).encode([(e.prompt, e.target) for e in examples[:n]],
                                                gen=examples[0].kind == "gen")  # as metrics.evaluate encodes
    table = interference.coherence(editor.edit_many(model, enc).detach())
    return {"coherence": float(table["coherence"].mean()), "edit_size": float(table["size"].mean())}


def _fits(k: int, examples: list, split: str, model_name: str, task) -> bool:
    """Whether there are at least k requests to edit at once; a warning when not (that k is skipped)."""
    if k <= len(examples):
        return True
    warnings.warn(f"batch editing: k = {k} is more than the {len(examples)} {split} requests of "
                  f"{model_name}:{task}; skipped", stacklevel=4)
    return False


def _mean_std(values, digits: int) -> str:
    mean, std = values.mean(), values.std()
    return f"{mean:.{digits}f}" + ("" if std != std else f" ± {std:.{digits}f}")  # NaN std: one seed


def summarize(frame, digits: int = 3):
    """Paper Table 5's layout: one row per (model, task, k), and per editor item a pair of columns,
    ``"<item> es"`` (edit success on x'_e) and ``"<item> drawdown"``, each the mean ± std over seeds; then the
    paper's figures at that k (``"paper mend es"``, ...; NaN where the paper has no such k)."""
    import pandas as pd

    items = list(dict.fromkeys(frame["editor"]))
    out = []
    for (model, task, k), g in frame.groupby(["model", "task", "k"], sort=True):
        row = {"model": model, "task": task, "k": int(k), "seeds": int(g["seed"].nunique())}
        for item in items:
            mine = g[g["editor"] == item]
            row[f"{item} es"] = _mean_std(mine["es_rephrase"], digits) if len(mine) else ""
            row[f"{item} drawdown"] = _mean_std(mine["drawdown"], digits) if len(mine) else ""
        for alg, figures in PAPER_TABLE5.items():
            es, dd = figures.get(int(k), (float("nan"), None))
            row[f"paper {alg} es"] = es
            if any(d is not None for _, d in figures.values()):
                row[f"paper {alg} drawdown"] = float("nan") if dd is None else dd
        out.append(row)
    return pd.DataFrame(out)
