"""Ablations of MEND's editor network (paper §5.3, Table 6): which of its parts an edit needs.

Each variant of :data:`mendlab.nets.VARIANTS` is trained with the profile's settings, exactly as MEND is in the
method comparison (the ``"mend"`` row *is* that comparison's editor, from the same cache), and scored on the
held-out edits of generation (tiny-gpt2, the paper's Wikitext distilGPT-2 column) and QA (tiny-bart, its zsRE
BART-base column). Beside the scores go the editor's size on the tiny model and on distilGPT-2's shapes (built
on the meta device, so no weights are allocated) and its training time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mendlab.experiments.editors import editor_for, world_of_run
from mendlab.experiments.evaluate import evaluate_editor
from mendlab.nets import VARIANTS, NetConfig, parameter_count

ABLATION_SETUPS = (("tiny-gpt2", "gen"), ("tiny-bart", "qa"))  # Table 6's two columns
LABELS = {"mend": "MEND", "no_share": "No sharing", "no_norm": "No norm.", "no_id_init": "No ID init.",
          "only_u": "Only u", "only_delta": "Only δ", "only_smaller": "Only smaller"}
ORDER = tuple(LABELS)
# Table 6 as printed: (ES, drawdown) on Wikitext distilGPT-2 (perplexity) and zsRE BART-base (accuracy); ">0.99"
# and "<0.001" are entered as 0.99 and 0.001
PAPER_TABLE6 = {
    "gen": {"mend": (0.86, 0.225), "no_share": (0.86, 0.195), "no_norm": (0.02, 0.370), "no_id_init": (0.27, 0.898),
            "only_u": (0.63, 0.559), "only_delta": (0.80, 0.445), "only_smaller": (0.80, 0.593)},
    "qa": {"mend": (0.99, 0.001), "no_share": (0.99, 0.001), "no_norm": (0.97, 0.001), "no_id_init": (0.94, 0.001),
           "only_u": (0.98, 0.002), "only_delta": (0.99, 0.001), "only_smaller": (0.98, 0.002)},
}
assert set(ORDER) == set(VARIANTS), "every network variant needs a label"


def reference_shapes(model_type: str = "gpt2", **config) -> dict[str, tuple[int, int]]:
    """(in, out) of the weights MEND edits in a model of ``model_type`` with the given config fields (default:
    distilGPT-2, 6 blocks of 768↔3072), read from the family registry on a model built on the meta device."""
    import transformers

    from mendlab.families import edited_weights, get_family, shape_key

    hf = transformers.AutoConfig.for_model(model_type, **(config or {"n_layer": 6}))
    auto = getattr(transformers, get_family(hf).auto_class)
    with torch.device("meta"):
        model = auto.from_config(hf)
    return {name: shape_key(model, name) for name in edited_weights(model)}


def variant_parameters(shapes: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    """Editor parameters of every variant for ``shapes`` (default: distilGPT-2's), α not counted."""
    shapes = shapes or reference_shapes()
    return {v: parameter_count(shapes, NetConfig.variant(v)) for v in ORDER}


def ablate(setups=ABLATION_SETUPS, variants=ORDER, seeds=(0, 1, 2), *, n: int | None = None, split: str = "test",
           steps: int | None = None, world_seed: int | None = None, progress: bool = True, on_row=None,
           ranks: Sequence[int] | None = None):
    """Train and score every ``variant`` on every (model, task) of ``setups`` and seed; one row each in a long
    DataFrame (``es_edit``, ``es_rephrase``, ``drawdown``, the network's ``rank``, editor parameters on the tiny
    model and on distilGPT-2's shapes, training time and steps). ``ranks``: train each variant at every one of
    these ``NetConfig`` ranks (default: the config's own, 1920), a study of how small an editor can be. Seeds run
    one after another, so a cut run holds whole seeds; ``on_row(row)`` is called as each row is finished
    (``ResultsTable.add``)."""
    import pandas as pd
    from tqdm.auto import tqdm

    unknown = sorted(set(variants) - set(ORDER))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose among {list(ORDER)}")
    rows, shapes = [], reference_shapes()
    jobs = [(s, m, t, v, r) for s in seeds for m, t in setups for v in variants for r in (ranks or [None])]
    for seed, model_name, task, variant, rank in tqdm(jobs, desc="ablate", disable=not progress):
        net = {"rank": int(rank)} if rank is not None else None
        editor, model, tok, card = editor_for(model_name, "mend", seed, task, steps=steps, world_seed=world_seed,
                                              variant=variant, net=net)
        reference = parameter_count(shapes, NetConfig.variant(variant, **(net or {})))
        r = evaluate_editor(editor, model, tok, model_name, seed=world_of_run(seed, world_seed), task=task,
                            split=split, n=n, progress=False)
        rows.append({"model": model_name, "task": task, "variant": variant,
                     "rank": NetConfig.variant(variant, **(net or {})).rank, "seed": seed,
                     "world_seed": world_of_run(seed, world_seed), "es_edit": r["es_edit"],
                     "es_rephrase": r["es_rephrase"],
                     "drawdown": r["acc_dd"] if r["acc_dd"] is not None else r["ppl_dd"], "n": r["n"],
                     "editor_params": card["editor_params"], "params_distilgpt2": reference,
                     "train_s": card["train_seconds"], "steps": card["steps"], "best_step": card["best_step"]})
        if on_row is not None:
            on_row(rows[-1])
    return pd.DataFrame(rows)


def summarize(frame, digits: int = 3):
    """Mean ± std over seeds per task, variant and rank (tables written before ranks were recorded are at
    ``NetConfig``'s default), with the paper's Table 6 figures beside them."""
    import pandas as pd

    out = []
    frame = with_rank(frame)
    for (task, variant, rank), g in frame.groupby(["task", "variant", "rank"], sort=False):
        paper = PAPER_TABLE6.get(task, {}).get(variant, (float("nan"), float("nan")))
        row = {"task": task, "variant": LABELS[variant], "rank": int(rank), "seeds": len(g)}
        for key in ("es_rephrase", "drawdown"):
            mean, std = g[key].mean(), g[key].std()
            row[key] = f"{mean:.{digits}f}" + ("" if std != std else f" ± {std:.{digits}f}")
        row |= {"paper_es": paper[0], "paper_drawdown": paper[1], "train_s": round(g["train_s"].mean(), 1),
                "editor_params": int(g["editor_params"].iloc[0]),
                "params_distilgpt2": int(g["params_distilgpt2"].iloc[0])}
        out.append(row)
    table = pd.DataFrame(out)
    table["order"] = table["variant"].map({LABELS[v]: i for i, v in enumerate(ORDER)})
    table = table.sort_values(["task", "order", "rank"], ascending=[True, True, False])
    return table.drop(columns="order").reset_index(drop=True)


def with_rank(frame):
    """``frame`` with a ``rank`` column: rows without one were trained at ``NetConfig``'s default rank."""
    default = NetConfig().rank
    rank = frame["rank"].fillna(default) if "rank" in frame else default
    return frame.assign(rank=rank).astype({"rank": int})


def load_results(pattern: str = "ablations*.csv", folder=None):
    """(rows, sources): every ablation table in the repository's ``results/`` (or ``folder``) matching
    ``pattern``, concatenated, with each row's ``profile``; and one line per table (command, profile, seeds,
    rows, complete). A run cut short leaves a seed with only some variants, and tables written side by side
    hold different variants of one seed: per task, only the seeds that have every variant the task has are kept."""
    import pandas as pd

    from mendlab.experiments import report

    folder = report.RESULTS if folder is None else folder
    frames, sources = [], []
    for path in sorted(folder.glob(pattern)):
        frame, prov = report.load(path)
        frames.append(frame.assign(profile=prov["profile"]))
        sources.append({"table": path.stem, **{k: prov.get(k) for k in ("command", "profile", "seeds", "rows",
                                                                          "complete")}})
    if not frames:
        raise FileNotFoundError(f"no ablation table {pattern} in {folder}: run `mendlab ablate --out ...` first")
    frame = with_rank(pd.concat(frames, ignore_index=True))
    frame = frame[frame["rank"] == NetConfig().rank].drop_duplicates(["task", "variant", "seed"], keep="last")
    n_variants = frame.groupby(["task", "seed"])["variant"].transform("nunique")
    frame = frame[n_variants == frame.groupby("task")["variant"].transform("nunique")]
    return frame.reset_index(drop=True), pd.DataFrame(sources)
