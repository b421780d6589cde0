"""The method comparison (paper Table 4): five editors on the three tasks, over seeds, as a long DataFrame."""

from __future__ import annotations

import json

from mendlab import filetasks
from mendlab.config import settings
from mendlab.editors import ALGS
from mendlab.experiments.editors import editor_for, world_of_run
from mendlab.experiments.evaluate import evaluate_editor

DEFAULT_SETUPS = (("tiny-bert", "claim"), ("tiny-bart", "qa"), ("tiny-gpt2", "gen"))  # paper Table 4's layout


def compare_budget(prof: str | None = None) -> dict:
    """The notebook-sized comparison settings of a profile (``config.Profile.compare``: editor training steps,
    test and FT-sweep requests); ``mendlab compare`` runs the whole profile instead."""
    return dict(settings(prof).compare)

def compare(setups=DEFAULT_SETUPS, algs=ALGS, seeds=(0, 1, 2), *,
            n: int | None = None, split: str = "test", steps: int | None = None, n_val: int = 48,
            world_seed: int | None = None, progress: bool = True, on_row=None, data=None):
    """The method comparison (paper Table 4): for every (model, task) in ``setups``, alg and seed, get the editor
    (trained and cached, or FT's lr swept on validation requests) and evaluate it on the ``split`` edits.

    ``seeds`` pick world, base model and editor; with ``world_seed`` every run uses that one world and base model,
    and the seeds vary only the editors (initialisation, sampling, FT's locality draws).
    ``steps`` overrides the profile's training steps of the trained editors; ``n_val``: validation requests in
    FT's lr sweep. Returns a long DataFrame, one row per (model, task, alg, seed), with the metric keys,
    ``drawdown`` (acc_dd, or ppl_dd where accuracy is not defined), ``edit_ms`` and ``train_s``. ``summarize``
    gives mean ± std. ``on_row(row)`` is called as each row is finished (``report.ResultsTable.add``).
    ``data``: your own files (:class:`mendlab.filetasks.DataFiles`) instead of each zoo model's world; the setups'
    models are then local folders or hub names and their task is the files'.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    jobs = [(m, t, a, s) for s in seeds for m, t in setups for a in algs]  # seed by seed: a cut run has whole seeds
    for model_name, task, alg, seed in tqdm(jobs, desc="compare", disable=not progress):
        editor, model, tok, card = editor_for(model_name, alg, seed, task, steps=steps, n_val=n_val,
                                              world_seed=world_seed, data=data)
        r = (evaluate_editor(editor, model, tok, model_name, seed=world_of_run(seed, world_seed), task=task,
                             split=split, n=n, progress=False) if data is None else
             filetasks.evaluate(editor, model, tok, data, split, n=n, progress=False))
        rows.append({"model": model_name, "task": task, "alg": alg, "seed": seed,
                     "world_seed": world_of_run(seed, world_seed),
                     **{k: r[k] for k in ("es_edit", "es_rephrase", "es_heldout", "acc_dd", "ppl_dd", "kl", "n")},
                     "drawdown": r["acc_dd"] if r["acc_dd"] is not None else r["ppl_dd"],
                     "edit_ms": r["edit_ms"], "train_s": card.get("train_seconds", 0.0),
                     "settings": json.dumps(editor_settings(alg, card), sort_keys=True)})
        if on_row is not None:
            on_row(rows[-1])
    return pd.DataFrame(rows)


def editor_settings(alg: str, card: dict) -> dict:
    """What an editor was run with, as the results table records it: FT's swept lr, the trained editors' steps."""
    if card.get("lr") is not None:
        return {"lr": card["lr"], "lrs_swept": [r["lr"] for r in card.get("sweep", [])]}
    return {k: card[k] for k in ("steps", "best_step", "train_seconds") if k in card}


def summarize(frame, keys=("es_rephrase", "drawdown"), digits: int = 3):
    """Mean ± std over seeds, one row per alg and a column pair per (task, key): paper Table 4's layout.

    The default ES is ``es_rephrase``: the official code scores edit success on x'_e (``edit_outer``, a rephrase
    or, for generation, the passage with a random prefix removed), never on the edited input itself."""
    stats = frame.groupby(["alg", "task"], sort=False)[list(keys)].agg(["mean", "std"])
    cells = {}
    for (alg, task), row in stats.iterrows():
        for key in keys:
            mean, std = row[(key, "mean")], row[(key, "std")]
            cells.setdefault(alg, {})[(task, key)] = (f"{mean:.{digits}f}" if std != std  # NaN: one seed
                                                       else f"{mean:.{digits}f} ± {std:.{digits}f}")
    import pandas as pd

    out = pd.DataFrame.from_dict(cells, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["task", "metric"])
    return out
