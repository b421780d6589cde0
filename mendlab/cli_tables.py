"""The results-table commands of ``mendlab`` (``compare``, ``ablate``, ``batch``, ``sequential``), and the two
helpers every command shares (:func:`emit`, :func:`command`).

Each table command runs one runner of :mod:`mendlab.experiments` over setups and seeds, writes ``--out`` row by
row with a provenance sidecar (:mod:`mendlab.experiments.report`) and ``--figure``, and prints the summary.
"""

from __future__ import annotations

import argparse
import json

from mendlab.cli_data import add_data_arguments
from mendlab.editors import ALGS  # the parser's choices (building it imports the editors anyway)
from mendlab.nets import VARIANTS


def emit(args, result: dict, human: str) -> None:
    print(human)
    if args.json:
        print(json.dumps(result, default=str))


def command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``: it runs ``func(args)`` and takes ``--json``."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)
    return p


def _run_table(args, default_setups, run, items: str, summarize, figure, **options) -> None:
    """Run ``run(setups, items, seeds, **options)`` (a runner of :mod:`mendlab.experiments`; ``items``: algs or
    variants) with the shared options, writing ``--out`` row by row with provenance and ``--figure``; print it."""
    import pandas as pd

    from mendlab.config import profile
    from mendlab.experiments import report

    setups = [tuple(s.split(":", 1)) for s in args.setup] or list(default_setups)
    seeds = [int(s) for s in args.seeds.split(",")]
    recorded = {k: getattr(args, k) for k in ("algs", "variants", "ranks", "items", "ks", "train_k", "split", "n",
                                              "steps", "n_val", "world_seed", "T", "data", "train_file", "val_file",
                                              "test_file", "loc_file") if hasattr(args, k)}
    table = report.ResultsTable(args.out, report.provenance(report.command_line(args.argv), profile(), seeds, setups=[
        ":".join(s) for s in setups], **recorded)) if args.out else None
    frame = run(setups, items.split(","), seeds, split=args.split, steps=args.steps, world_seed=args.world_seed,
                progress=not args.json, on_row=table.add if table is not None else None, **options)
    if table is not None:
        table.close()
        if args.figure:
            figure(frame).savefig(args.figure, dpi=120, bbox_inches="tight")
    with pd.option_context("display.width", 200):
        human = summarize(frame).to_string()
    emit(args, {"rows": frame.round(5).to_dict(orient="records")}, human)


def cmd_compare(args) -> None:
    from mendlab import experiments, plots
    from mendlab.cli_data import data_files
    from mendlab.filetasks import check_model

    data = data_files(args)
    if data is not None:  # your own files: every --setup names a model folder (or hub name) and the files' task
        if not args.setup:
            raise ValueError("compare --data needs --setup MODEL:TASK for each model (a folder or hub name)")
        for model in {s.split(":", 1)[0] for s in args.setup}:
            check_model(model, data)
    _run_table(args, experiments.DEFAULT_SETUPS, experiments.compare, args.algs, experiments.summarize,
               plots.compare, n=args.n, n_val=args.n_val, data=data)


def cmd_ablate(args) -> None:
    from mendlab import plots
    from mendlab.experiments import ablations

    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
    _run_table(args, ablations.ABLATION_SETUPS, ablations.ablate, args.variants, ablations.summarize,
               plots.ranks if ranks else plots.ablations, n=args.n, ranks=ranks)


def cmd_sequential(args) -> None:
    from mendlab import plots
    from mendlab.experiments import sequential

    _run_table(args, sequential.SETUPS, sequential.run, args.algs, sequential.summarize, plots.retention, T=args.T)


def cmd_batch(args) -> None:
    from mendlab import plots
    from mendlab.experiments import batch

    _run_table(args, batch.SETUPS, batch.run, args.items, batch.summarize, plots.batch, n=args.n,
               ks=[int(k) for k in args.ks.split(",")], train_k=args.train_k)


def _table_options(p: argparse.ArgumentParser, default_setups: str, example_out: str, n: bool = True) -> None:
    """The options every results-table command shares (``n``: with ``--n``)."""
    p.add_argument("--setup", action="append", default=[], help=f"MODEL:TASK (repeatable; default: {default_setups})")
    p.add_argument("--seeds", default="0,1,2")
    if n:
        p.add_argument("--n", type=int, default=None, help="evaluate only the first N requests")
    p.add_argument("--steps", type=int, default=None, help="training steps of trained editors (default: profile)")
    p.add_argument("--world-seed", type=int, default=None,
                   help="one world and base model for every seed (the seeds then vary only the editors)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--out", default=None, help=f"also write the rows as CSV, row by row, with a provenance sidecar "
                                               f"(e.g. {example_out})")
    p.add_argument("--figure", default=None, help="with --out: also save the figure (e.g. .png)")


def _add_compare(sub) -> None:
    c = command(sub, "compare", cmd_compare, "MEND against FT, FT+KL, KE and ENN (paper Table 4)")
    _table_options(c, "tiny-bert:claim, tiny-bart:qa, tiny-gpt2:gen", "results/compare_ci.csv")
    c.add_argument("--algs", default=",".join(ALGS))
    c.add_argument("--n-val", type=int, default=48, help="validation requests in FT's lr sweep")
    add_data_arguments(c)


def _add_ablate(sub) -> None:
    a = command(sub, "ablate", cmd_ablate, "MEND's editor-network ablations (paper Table 6)")
    _table_options(a, "tiny-gpt2:gen, tiny-bart:qa", "results/ablations.csv")
    a.add_argument("--variants", default=",".join(VARIANTS), help=f"among {','.join(VARIANTS)}")
    a.add_argument("--ranks", default=None, help="train each variant at these editor ranks, e.g. 1920,128,64 "
                                                  "(default: NetConfig's rank)")


def _add_sequential(sub) -> None:
    q = command(sub, "sequential", cmd_sequential, "T edits one after another to one model: retention and drawdown")
    _table_options(q, "tiny-bart:qa", "results/sequential.csv", n=False)
    q.add_argument("--algs", default="mend,mend:least_squares,ft",
                   help="editors: ALG, or ALG:least_squares for the least-squares memory (mendlab.memory)")
    q.add_argument("--T", type=int, default=100, help="edits in the sequence: the split's first T requests")


def _add_batch(sub) -> None:
    b = command(sub, "batch", cmd_batch, "k edits at once as one edit, pooled or aggregated (paper Table 5)")
    _table_options(b, "tiny-bart:qa", "results/batch.csv")
    b.add_argument("--items", default="mend:sum,mend:least_squares,enn:sum,ft",
                   help="ALG[:AGGREGATION], AGGREGATION sum or least_squares (none: the editor's pooled edit)")
    b.add_argument("--ks", default="1,5,25,75,125", help="numbers of edits made at once")
    b.add_argument("--train-k", default="1", choices=("1", "same"),
                   help="1: editors trained on single edits; same: one editor per k, trained with k edits at once")


ADD_TABLE_COMMANDS = (_add_compare, _add_ablate, _add_sequential, _add_batch)
