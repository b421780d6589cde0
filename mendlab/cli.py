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

from mendlab import cli_course
from mendlab.cli_data import add_data_arguments
from mendlab.cli_tables import ADD_TABLE_COMMANDS, command, emit
from mendlab.editors import ALGS  # the parser's choices (building it imports the editors anyway)
from mendlab.interrupts import TrainingInterrupted


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
    emit(args, result, "\n".join(lines))


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
        emit(args, {"models": rows}, human)
        return
    if (args.name is None) == (not args.all):
        raise ValueError("mendlab zoo build: give one model NAME or --all, not both or neither")
    if args.all and (args.config or args.set):
        raise ValueError("mendlab zoo build: --config and --set change one model; give its NAME, not --all")
    keys = ("name", "model_type", "path", "params", "seconds", "cached", "acc_train", "acc_heldout_template",
            "build_seconds")
    if args.all:
        cards = [zoo.build(name, seed=args.seed, progress=not args.json) for name in zoo.names()]
        emit(args, {"models": [{k: c[k] for k in keys} for c in cards]}, "\n".join(map(zoo.card_line, cards)))
        return
    name = args.name
    if args.config or args.set:
        name = zoo.variant(args.name, seed=args.seed, config=_pairs(args.config, "--config"),
                           **_pairs(args.set, "--set"))
    card = zoo.build(name, seed=args.seed, progress=not args.json)
    emit(args, {k: card[k] for k in keys}, zoo.card_line(card))


def cmd_train(args) -> None:
    from mendlab import experiments
    from mendlab.cli_data import prepare
    from mendlab.editors import editor_class
    from mendlab.nets import NetConfig
    from mendlab.train import TrainConfig

    data = prepare(args)  # --data and its files, or None (the zoo model's world)
    task = args.task or (data.task_name if data else None)
    overrides = {k: v for k, v in (("steps", args.steps), ("time_limit", args.time_limit)) if v is not None}
    overrides = {**editor_class(args.alg).train_overrides(task), **overrides, **_settings(args.set, TrainConfig)}
    cfg = TrainConfig.for_profile(seed=args.seed, **overrides)
    net = _settings(args.net, NetConfig, "--net")
    names = [n.strip() for n in args.weights.split(",") if n.strip()] if args.weights else None
    _, _, _, card = experiments.train_editor(args.model, args.alg, args.variant, args.seed, task, args.out,
                                             cfg, progress=not args.json, force=args.force, names=names,
                                             net=net or None, data=data)
    if "lr" in card:  # FT / FT+KL: nothing trained, an lr chosen on validation edits
        sweep = "\n".join(f"  lr {r['lr']:g}: es_edit {r['es_edit']:.3f}, es_rephrase {r['es_rephrase']:.3f}"
                          for r in card["sweep"])
        emit(args, card, f"{card['alg']} for {card['model']} (seed {card['seed']}): lr {card['lr']:g} chosen on "
                          f"validation edits{' (cached)' if card['cached'] else ''}\n{sweep}")
        return
    human = (f"{card['alg']} editor for {card['model']} ({card['variant']}, seed {card['seed']}): "
             f"{'cached' if card['cached'] else 'trained'} in {card['seconds']} s, {card['steps']} steps, "
             f"best validation loss {card['best_val']} at step {card['best_step']} ({card['stopped']})\n"
             f"saved to {card['path']}")
    emit(args, card, human)


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
    from mendlab.cli_data import prepare
    from mendlab.editors import load_editor

    if args.editor is None:
        seed = args.seed or 0
        editor, model, tok, card = experiments.train_editor(args.model, args.alg or "mend", seed=seed,
                                                            task=getattr(args, "task", None), progress=not args.json,
                                                            data=prepare(args))
        return editor, model, tok, seed, card
    root = Path(args.editor)  # the saved editor folder (DIR or DIR/best) and its training card, if any
    best = root / "best" if (root / "best").exists() else root
    card_file = best.parent / "train_card.json"
    card = json.loads(card_file.read_text()) if card_file.exists() else {}
    seed = args.seed if args.seed is not None else card.get("seed", 0)
    prepare(args, card)  # clear errors for a model that cannot load here, before loading it
    model, tok = zoo.load(args.model, seed=seed if zoo.known(args.model) else None, progress=not args.json)
    editor = load_editor(best, model)
    if args.alg is not None and editor.alg != args.alg:
        raise ValueError(f"{args.editor} holds a {editor.alg!r} editor, not {args.alg!r}")
    return editor, model, tok, seed, card


def cmd_eval(args) -> None:
    from mendlab import experiments, filetasks, metrics
    from mendlab.cli_data import data_files

    t0 = time.perf_counter()
    editor, model, tok, seed, card = _load_editor(args)
    data = data_files(args, card)  # --data, else the files the editor was trained on, else the world
    if data is not None:
        result = filetasks.evaluate(editor, model, tok, data, args.split, args.n, args.n_edits, not args.json)
    else:
        result = experiments.evaluate_editor(editor, model, tok, args.model, seed=seed, task=card.get("task"),
                                             split=args.split, n=args.n, n_edits=args.n_edits, progress=not args.json)
    result = {**metrics.rounded(result, 4), "model": args.model, "alg": editor.alg, "seed": seed,
              "task": card.get("task"), "data": data and data.data, "split": args.split,
              "seconds": round(time.perf_counter() - t0, 1)}
    emit(args, result, "\n".join(f"{k:12s} {v}" for k, v in result.items()))


def cmd_edit(args) -> None:
    import pandas as pd

    from mendlab import experiments, tasks, zoo
    from mendlab.cli_data import data_files
    from mendlab.families import get_family

    editor, model, tok, seed, card = _load_editor(args)
    unrelated = [tuple(u.split("=", 1)) for u in args.unrelated]
    data = data_files(args, card)
    if not unrelated and data is not None:  # one unrelated fact of the files' panel
        unrelated = data.task(get_family(model).kind, tok).panel[:1]
    elif not unrelated and zoo.known(args.model):
        unrelated = tasks.from_world(zoo.world_of(args.model, seed=seed), get_family(model).kind).panel[:1]
    _, df = experiments.edit_report(editor, model, tok, args.prompt, args.target, args.rephrase, unrelated)
    with pd.option_context("display.width", 160, "display.max_colwidth", 50):
        human = df.round(4).to_string(index=False)
    emit(args, {"rows": df.round(6).to_dict(orient="records")}, human)


def cmd_demo(args) -> None:
    from mendlab.experiments.demo import demo

    result, lines = demo(args.model, args.seed or 0, subjects=args.subjects, edits=args.edits, n=args.n,
                         progress=not args.json)
    emit(args, result, "\n".join(lines))


def cmd_scale(args) -> None:
    """One memory estimate (``--model-config``), the paper's six models (``--paper``) or the CPU check
    (``--measure``: one fresh interpreter per row, written row by row to ``--out`` with provenance)."""
    import pandas as pd

    from mendlab import scaling

    opts = dict(seq_len=args.seq_len, target_len=args.target_len)
    if args.model_config:
        e = scaling.estimate(args.model_config, dtype=args.dtype, batch=args.batch, mode=args.mode,
                             device=args.device, **opts)
        parts = " + ".join(f"{f} {getattr(e, f) / scaling.GIB:.2f}" for f in scaling.PARTS if getattr(e, f))
        fits = "/".join(str(gb) for gb in scaling.BUDGETS_GB if e.fits(gb)) or "none"
        emit(args, e.row(), f"{e.model} ({e.model_type}) {e.mode} {e.dtype} on {e.device}, batch {e.batch} x "
                            f"{e.seq_len} tokens: {e.total / scaling.GIB:.2f} GiB = {parts}; fits {fits} GB")
        return
    if args.paper:
        rows = scaling.paper_table(batch=args.batch, device=args.device, **opts)
    else:
        from mendlab.config import profile
        from mendlab.experiments import report

        meta = report.provenance(report.command_line(args.argv), profile(), [], models=args.models, **opts)
        table = report.ResultsTable(args.out, meta) if args.out else None
        rows = []
        for name, _, dtype in (m.partition(":") for m in args.models.split(",")):
            for mode in ("edit", "train"):
                rows.append(scaling.measure(name, dtype or "float32", mode, batch=args.batch, **opts))
                if table is not None:
                    table.add(rows[-1])
                if not args.json:
                    print(f"{name} {dtype or 'float32'} {mode}: measured {rows[-1]['measured_mib']:.1f} MiB, "
                          f"estimated {rows[-1]['estimated_mib']:.1f} MiB", flush=True)
        if table is not None:
            table.close()
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        emit(args, {"rows": rows}, pd.DataFrame(rows).round(3).to_string(index=False))


def _add_world(sub) -> None:
    w = command(sub, "world", cmd_world, "write the synthetic world in MEND's file formats")
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
    t = command(sub, "train", cmd_train, "train an editor for a model (cached by configuration)")
    t.add_argument("--model", default="tiny-gpt2", help="zoo name, local Hugging Face folder or hub name (online)")
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
    add_data_arguments(t)


def _add_eval(sub) -> None:
    e = command(sub, "eval", cmd_eval, "evaluate a trained editor on held-out edits")
    e.add_argument("--model", default="tiny-gpt2")
    e.add_argument("--editor", default=None, help="folder written by `mendlab train` (default: the cached editor "
                                                  "for --alg, trained if missing)")
    e.add_argument("--alg", default=None, choices=ALGS)
    e.add_argument("--task", default=None, help="with no --editor: qa or gen for decoders")
    e.add_argument("--n-edits", type=int, default=1, help="edits applied together (batch editing)")
    e.add_argument("--n", type=int, default=None, help="evaluate only the first N requests")
    e.add_argument("--split", default="test", choices=("val", "test"))
    e.add_argument("--seed", type=int, default=None, help="default: the editor's training seed")
    add_data_arguments(e)


def _add_edit(sub) -> None:
    ed = command(sub, "edit", cmd_edit, "edit one fact you type and show before/after")
    ed.add_argument("--model", default="tiny-gpt2")
    ed.add_argument("--editor", default=None)
    ed.add_argument("--alg", default=None, choices=ALGS)
    ed.add_argument("--prompt", required=True)
    ed.add_argument("--target", required=True)
    ed.add_argument("--rephrase", action="append", default=[], help="an equivalent prompt (repeatable)")
    ed.add_argument("--unrelated", action="append", default=[], help="PROMPT=ANSWER that must not change")
    ed.add_argument("--seed", type=int, default=None)
    add_data_arguments(ed)


def _add_demo(sub) -> None:
    d = command(sub, "demo", cmd_demo, "the main job: world, tiny model, train MEND, edit, evaluate")
    d.add_argument("--model", default="tiny-gpt2")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--subjects", type=int, default=5, help="test-split subjects to probe")
    d.add_argument("--edits", type=int, default=3, help="edits to show before/after")
    d.add_argument("--n", type=int, default=None, help="evaluate only the first N held-out edits")


def _add_scale(sub) -> None:
    s = command(sub, "scale", cmd_scale, "memory of a MEND edit or training step on any model, from its config alone")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--model-config", metavar="NAME_OR_JSON",
                      help="gpt-j-6B, t5-xxl, gpt2-xl, ... (mendlab.scaling.KNOWN), a zoo name, or a JSON object "
                           "with model_type and config fields, e.g. '{\"model_type\": \"gptj\", \"n_layer\": 28}'")
    what.add_argument("--paper", action="store_true", help="the paper's six models, float32 and bfloat16")
    what.add_argument("--measure", action="store_true", help="measure peaks on this CPU beside the estimates")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the base model's")
    s.add_argument("--mode", default="edit", choices=("edit", "train"))
    s.add_argument("--batch", type=int, default=None, help="requests (default: 1 to edit, 10 to train)")
    s.add_argument("--seq-len", type=int, default=32, help="tokens per request")
    s.add_argument("--target-len", type=int, default=6, help="answer tokens (an encoder-decoder's decoder input)")
    s.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="the estimate's device")
    s.add_argument("--models", default="tiny-gpt2,gpt2,gpt2-medium,t5-small,tiny-gpt2:bfloat16",
                   help="with --measure: NAME[:DTYPE],... (each measured in edit and train mode)")
    s.add_argument("--out", default=None, help="with --measure: write the rows as CSV with provenance "
                                               "(e.g. results/scaling_cpu.csv)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mendlab", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("ci", "full"), help="overrides $MENDLAB_PROFILE")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_world, _add_zoo, _add_train, _add_eval, _add_edit, *ADD_TABLE_COMMANDS, _add_demo,
                _add_scale, cli_course.add_parser):
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
    except TrainingInterrupted as e:  # SIGINT/SIGTERM after a checkpoint: a message, not a traceback
        print(f"mendlab: {e}", file=sys.stderr)
        return 130
    return 0
