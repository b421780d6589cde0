"""The ``mendlab`` command (also ``python -m mendlab``). It only calls the library.

Every command that computes figures takes ``--json``: the last line printed is then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mendlab.editors import ALGS  # the parser's choices (building it imports the editors anyway)
from mendlab.nets import VARIANTS


def _emit(args, result: dict, human: str) -> None:
    print(human)
    if args.json:
        print(json.dumps(result, default=str))


def _setup(args) -> None:
    if getattr(args, "profile", None):
        os.environ["MENDLAB_PROFILE"] = args.profile
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def cmd_world(args) -> None:
    from mendlab.world import SPLITS, World, WorldConfig

    world = World(WorldConfig(seed=args.seed, n_subjects=args.subjects))
    paths = world.write(args.out)
    result = {"seed": args.seed, "out": str(args.out), "n_subjects": len(world.subjects),
              "n_relations": len(world.relations), "n_facts": len(world.facts),
              "subjects_per_split": {s: len(world.subjects_in(s)) for s in SPLITS},
              "files": {k: str(v) for k, v in paths.items()}}
    lines = [f"world seed {args.seed}: {result['n_subjects']} subjects × {result['n_relations']} relations "
             f"= {result['n_facts']} facts; subjects per split {result['subjects_per_split']}"]
    lines += [f"  {k:16s} {v}" for k, v in result["files"].items()]
    _emit(args, result, "\n".join(lines))


def cmd_zoo(args) -> None:
    from mendlab import zoo

    if args.zoo_cmd == "list":
        rows = []
        for name in zoo.names():
            s = zoo.spec(name, seed=args.seed)
            card_file = zoo.cache_path(s) / "mendlab_card.json"
            card = json.loads(card_file.read_text()) if card_file.exists() else None
            rows.append({"name": name, "model_type": s.model_type, "built": card is not None,
                         "params": card and card["params"], "path": str(zoo.cache_path(s))})
        human = "\n".join(f"{r['name']:12s} {r['model_type']:8s} {'built' if r['built'] else 'not built'}"
                          f"  {r['path']}" for r in rows)
        _emit(args, {"models": rows}, human)
        return
    if (args.name is None) == (not args.all):
        raise ValueError("mendlab zoo build: give one model NAME or --all, not both or neither")
    if args.all and (args.config or args.set):
        raise ValueError("mendlab zoo build: --config and --set change one model; give its NAME, not --all")
    keys = ("name", "model_type", "path", "params", "seconds", "cached", "acc_train", "acc_heldout_template",
            "build_seconds")
    if args.all:
        cards = [zoo.build(name, seed=args.seed, progress=not args.json) for name in zoo.names()]
        _emit(args, {"models": [{k: c[k] for k in keys} for c in cards]}, "\n".join(map(zoo.card_line, cards)))
        return
    name = args.name
    if args.config or args.set:
        name = zoo.variant(args.name, seed=args.seed, config=_pairs(args.config, "--config"),
                           **_pairs(args.set, "--set"))
    card = zoo.build(name, seed=args.seed, progress=not args.json)
    _emit(args, {k: card[k] for k in keys}, zoo.card_line(card))


def cmd_train(args) -> None:
    from mendlab import experiments
    from mendlab.editors import editor_class
    from mendlab.nets import NetConfig
    from mendlab.train import TrainConfig

    overrides = {k: v for k, v in (("steps", args.steps), ("time_limit", args.time_limit)) if v is not None}
    overrides = {**editor_class(args.alg).train_overrides(args.task), **overrides, **_settings(args.set, TrainConfig)}
    cfg = TrainConfig.for_profile(seed=args.seed, **overrides)
    net = _settings(args.net, NetConfig, "--net")
    names = [n.strip() for n in args.weights.split(",") if n.strip()] if args.weights else None
    _, _, _, card = experiments.train_editor(args.model, args.alg, args.variant, args.seed, args.task, args.out,
                                             cfg, progress=not args.json, force=args.force, names=names,
                                             net=net or None)
    if "lr" in card:  # FT / FT+KL: nothing trained, an lr chosen on validation edits
        sweep = "\n".join(f"  lr {r['lr']:g}: es_edit {r['es_edit']:.3f}, es_rephrase {r['es_rephrase']:.3f}"
                          for r in card["sweep"])
        _emit(args, card, f"{card['alg']} for {card['model']} (seed {card['seed']}): lr {card['lr']:g} chosen on "
                          f"validation edits{' (cached)' if card['cached'] else ''}\n{sweep}")
        return
    human = (f"{card['alg']} editor for {card['model']} ({card['variant']}, seed {card['seed']}): "
             f"{'cached' if card['cached'] else 'trained'} in {card['seconds']} s, {card['steps']} steps, "
             f"best validation loss {card['best_val']} at step {card['best_step']} ({card['stopped']})\n"
             f"saved to {card['path']}")
    _emit(args, card, human)


def _pairs(pairs, option: str) -> dict:
    """``["num_hidden_layers=6", "lr=1e-3"]`` → a dict (values parsed as JSON, else kept as strings)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} takes KEY=VALUE; got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _settings(pairs, config_class, option: str = "--set") -> dict:
    """``["lr=1e-4", "schedule=constant"]`` → overrides of ``config_class``'s fields (values parsed as JSON)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_class)}
    for pair in pairs or ():
        if pair.partition("=")[0] not in fields or "=" not in pair:
            raise SystemExit(f"{option} takes KEY=VALUE with KEY one of {sorted(fields)}; got {pair!r}")
    return _pairs(pairs, option)


def _load_editor(args):
    """(editor, model, tok, seed, card) from ``--editor DIR`` (any saved trainable editor), or, without it, the
    editor ``experiments.train_editor`` gives for ``--alg`` (cached; FT/FT+KL: lr swept on validation edits)."""
    from mendlab import experiments, zoo
    from mendlab.editors import load_editor

    if args.editor is None:
        seed = args.seed or 0
        editor, model, tok, card = experiments.train_editor(args.model, args.alg or "mend", seed=seed,
                                                            task=getattr(args, "task", None), progress=not args.json)
        return editor, model, tok, seed, card
    root = Path(args.editor)  # the saved editor folder (DIR or DIR/best) and its training card, if any
    best = root / "best" if (root / "best").exists() else root
    card_file = best.parent / "train_card.json"
    card = json.loads(card_file.read_text()) if card_file.exists() else {}
    seed = args.seed if args.seed is not None else card.get("seed", 0)
    model, tok = zoo.load(args.model, seed=seed if args.model in zoo.names() else None, progress=not args.json)
    editor = load_editor(best, model)
    if args.alg is not None and editor.alg != args.alg:
        raise ValueError(f"{args.editor} holds a {editor.alg!r} editor, not {args.alg!r}")
    return editor, model, tok, seed, card


def cmd_eval(args) -> None:
    from mendlab import experiments, metrics

    t0 = time.perf_counter()
    editor, model, tok, seed, card = _load_editor(args)
    result = experiments.evaluate_editor(editor, model, tok, args.model, seed=seed, task=card.get("task"),
                                         split=args.split, n=args.n, n_edits=args.n_edits, progress=not args.json)
    result = {**metrics.rounded(result, 4), "model": args.model, "alg": editor.alg, "seed": seed,
              "task": card.get("task"), "split": args.split, "seconds": round(time.perf_counter() - t0, 1)}
    _emit(args, result, "\n".join(f"{k:12s} {v}" for k, v in result.items()))


def _run_table(args, default_setups, run, items: str, summarize, figure, **options) -> None:
    """Run ``run(setups, items, seeds, **options)`` (a runner of :mod:`mendlab.experiments`; ``items``: algs or
    variants) with the shared options, writing ``--out`` row by row with provenance and ``--figure``; print it."""
    import pandas as pd

    from mendlab.config import profile
    from mendlab.experiments import report

    setups = [tuple(s.split(":", 1)) for s in args.setup] or list(default_setups)
    seeds = [int(s) for s in args.seeds.split(",")]
    recorded = {k: getattr(args, k) for k in ("algs", "variants", "items", "ks", "train_k", "split", "n", "steps",
                                              "n_val", "world_seed", "T") if hasattr(args, k)}
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
    _emit(args, {"rows": frame.round(5).to_dict(orient="records")}, human)


def cmd_compare(args) -> None:
    from mendlab import experiments, plots

    _run_table(args, experiments.DEFAULT_SETUPS, experiments.compare, args.algs, experiments.summarize,
               plots.compare, n=args.n, n_val=args.n_val)


def cmd_ablate(args) -> None:
    from mendlab import plots
    from mendlab.experiments import ablations

    _run_table(args, ablations.ABLATION_SETUPS, ablations.ablate, args.variants, ablations.summarize,
               plots.ablations, n=args.n)


def cmd_sequential(args) -> None:
    from mendlab import plots
    from mendlab.experiments import sequential

    _run_table(args, sequential.SETUPS, sequential.run, args.algs, sequential.summarize, plots.retention, T=args.T)


def cmd_batch(args) -> None:
    from mendlab import plots
    from mendlab.experiments import batch

    _run_table(args, batch.SETUPS, batch.run, args.items, batch.summarize, plots.batch, n=args.n,
               ks=[int(k) for k in args.ks.split(",")], train_k=args.train_k)


def cmd_edit(args) -> None:
    import pandas as pd

    from mendlab import experiments, tasks, zoo
    from mendlab.families import get_family

    editor, model, tok, seed, card = _load_editor(args)
    unrelated = [tuple(u.split("=", 1)) for u in args.unrelated]
    if not unrelated and args.model in zoo.names():
        unrelated = tasks.from_world(zoo.world_of(args.model, seed=seed), get_family(model).kind).panel[:1]
    _, df = experiments.edit_report(editor, model, tok, args.prompt, args.target, args.rephrase, unrelated)
    with pd.option_context("display.width", 160, "display.max_colwidth", 50):
        human = df.round(4).to_string(index=False)
    _emit(args, {"rows": df.round(6).to_dict(orient="records")}, human)


def cmd_demo(args) -> None:
    from mendlab.experiments.demo import demo

    result, lines = demo(args.model, args.seed or 0, subjects=args.subjects, edits=args.edits, n=args.n,
                         progress=not args.json)
    _emit(args, result, "\n".join(lines))


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


def _command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``: it runs ``func(args)`` and takes ``--json``."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)
    return p


def _add_world(sub) -> None:
    w = _command(sub, "world", cmd_world, "write the synthetic world in MEND's file formats")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--subjects", type=int, default=200)
    w.add_argument("--out", required=True)


def _add_zoo(sub) -> None:
    z = sub.add_parser("zoo", help="build or list the small base models")
    zsub = z.add_subparsers(dest="zoo_cmd", required=True)
    zb = zsub.add_parser("build", help="build (or find cached) one zoo model, or all of them")
    zb.add_argument("name", nargs="?", default=None)
    zb.add_argument("--all", action="store_true", help="every zoo model, in turn")
    zb.add_argument("--config", action="append", metavar="KEY=VALUE",
                    help="a field of the model's HF config, e.g. --config num_hidden_layers=6 (repeatable); the "
                         "variant is built into a cache folder of its own, which `train --model` takes")
    zb.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a ZooSpec field (steps, lr, cloze_steps, ...) or a world's as world_FIELD, e.g. "
                         "--set world_n_subjects=80 (repeatable)")
    zl = zsub.add_parser("list", help="list zoo models and whether they are built")
    for q in (zb, zl):
        q.add_argument("--seed", type=int, default=None)
        q.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_zoo)


def _add_train(sub) -> None:
    t = _command(sub, "train", cmd_train, "train an editor for a model (cached by configuration)")
    t.add_argument("--model", default="tiny-gpt2", help="zoo name or local model folder")
    t.add_argument("--alg", default="mend", choices=ALGS, help="ft and ft_kl train nothing: their lr is swept on "
                                                                  "validation edits")
    t.add_argument("--variant", default="mend", help="mend, no_share, no_norm, no_id_init, only_u, only_delta, "
                                                       "only_smaller")
    t.add_argument("--task", default=None, help="qa or gen for decoders (default qa), claim for classifiers")
    t.add_argument("--seed", type=int, default=0, help="world, base model and editor seed")
    t.add_argument("--out", default=None, help="folder (default: in the cache)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--time-limit", type=float, default=None, help="seconds")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a TrainConfig field, e.g. --set lr=1e-4 --set schedule=constant (repeatable)")
    t.add_argument("--net", action="append", metavar="KEY=VALUE",
                   help="a NetConfig field of MEND's editor network, e.g. --net rank=64 (repeatable)")
    t.add_argument("--weights", default=None, metavar="NAME[,NAME...]",
                   help="the weights to edit, full parameter names (default: the family's, see `families`)")
    t.add_argument("--force", action="store_true", help="retrain even when cached")


def _add_eval(sub) -> None:
    e = _command(sub, "eval", cmd_eval, "evaluate a trained editor on held-out edits")
    e.add_argument("--model", default="tiny-gpt2")
    e.add_argument("--editor", default=None, help="folder written by `mendlab train` (default: the cached editor "
                                                  "for --alg, trained if missing)")
    e.add_argument("--alg", default=None, choices=ALGS)
    e.add_argument("--task", default=None, help="with no --editor: qa or gen for decoders")
    e.add_argument("--n-edits", type=int, default=1, help="edits applied together (batch editing)")
    e.add_argument("--n", type=int, default=None, help="evaluate only the first N requests")
    e.add_argument("--split", default="test", choices=("val", "test"))
    e.add_argument("--seed", type=int, default=None, help="default: the editor's training seed")


def _add_edit(sub) -> None:
    ed = _command(sub, "edit", cmd_edit, "edit one fact you type and show before/after")
    ed.add_argument("--model", default="tiny-gpt2")
    ed.add_argument("--editor", default=None)
    ed.add_argument("--alg", default=None, choices=ALGS)
    ed.add_argument("--prompt", required=True)
    ed.add_argument("--target", required=True)
    ed.add_argument("--rephrase", action="append", default=[], help="an equivalent prompt (repeatable)")
    ed.add_argument("--unrelated", action="append", default=[], help="PROMPT=ANSWER that must not change")
    ed.add_argument("--seed", type=int, default=None)


def _add_compare(sub) -> None:
    c = _command(sub, "compare", cmd_compare, "MEND against FT, FT+KL, KE and ENN (paper Table 4)")
    _table_options(c, "tiny-bert:claim, tiny-bart:qa, tiny-gpt2:gen", "results/compare_ci.csv")
    c.add_argument("--algs", default=",".join(ALGS))
    c.add_argument("--n-val", type=int, default=48, help="validation requests in FT's lr sweep")


def _add_ablate(sub) -> None:
    a = _command(sub, "ablate", cmd_ablate, "MEND's editor-network ablations (paper Table 6)")
    _table_options(a, "tiny-gpt2:gen, tiny-bart:qa", "results/ablations.csv")
    a.add_argument("--variants", default=",".join(VARIANTS), help=f"among {','.join(VARIANTS)}")


def _add_sequential(sub) -> None:
    q = _command(sub, "sequential", cmd_sequential, "T edits one after another to one model: retention and drawdown")
    _table_options(q, "tiny-bart:qa", "results/sequential.csv", n=False)
    q.add_argument("--algs", default="mend,ft")
    q.add_argument("--T", type=int, default=100, help="edits in the sequence: the split's first T requests")


def _add_batch(sub) -> None:
    b = _command(sub, "batch", cmd_batch, "k edits at once as one edit, pooled or aggregated (paper Table 5)")
    _table_options(b, "tiny-bart:qa", "results/batch.csv")
    b.add_argument("--items", default="mend:sum,mend:least_squares,enn:sum,ft",
                   help="ALG[:AGGREGATION], AGGREGATION sum or least_squares (none: the editor's pooled edit)")
    b.add_argument("--ks", default="1,5,25,75,125", help="numbers of edits made at once")
    b.add_argument("--train-k", default="1", choices=("1", "same"),
                   help="1: editors trained on single edits; same: one editor per k, trained with k edits at once")


def _add_demo(sub) -> None:
    d = _command(sub, "demo", cmd_demo, "the main job: world, tiny model, train MEND, edit, evaluate")
    d.add_argument("--model", default="tiny-gpt2")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--subjects", type=int, default=5, help="test-split subjects to probe")
    d.add_argument("--edits", type=int, default=3, help="edits to show before/after")
    d.add_argument("--n", type=int, default=None, help="evaluate only the first N held-out edits")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mendlab", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("ci", "full"), help="overrides $MENDLAB_PROFILE")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_world, _add_zoo, _add_train, _add_eval, _add_edit, _add_compare, _add_ablate, _add_sequential,
                _add_batch, _add_demo):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = ["mendlab", *(sys.argv[1:] if argv is None else argv)]  # how this command was called
    _setup(args)
    try:
        args.func(args)
    except (KeyError, ValueError) as e:
        print(f"mendlab: error: {e}", file=sys.stderr)
        return 2
    return 0
