"""The ``mendlab`` command (also ``python -m mendlab``). It only calls the library.

Every command that computes figures takes ``--json``: the last line printed is then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


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


def _card_line(card: dict) -> str:
    return (f"{card['name']:12s} params {card['params']:>9,d}  acc_train {card['acc_train']:.3f}  "
            f"acc_heldout_template {card['acc_heldout_template']:.3f}  {card['seconds']:.1f}s"
            f"{' (cached)' if card['cached'] else ''}\n  {card['path']}")


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
    card = zoo.build(args.name, seed=args.seed, progress=not args.json)
    keys = ("name", "model_type", "path", "params", "seconds", "cached", "acc_train", "acc_heldout_template",
            "build_seconds")
    _emit(args, {k: card[k] for k in keys}, _card_line(card))


def cmd_demo(args) -> None:
    from mendlab import probe, zoo

    t0 = time.perf_counter()
    card = zoo.build(args.model, seed=args.seed, progress=not args.json)
    model, tokenizer = zoo.load(card["path"])
    world = zoo.world_of(card["path"])
    subjects = world.subjects_in("test")[: args.subjects]
    df = probe.knowledge(model, tokenizer, world, subjects)
    table = probe.summary(df)
    wrong = df[~df["correct"]].head(8)
    lines = [_card_line(card), "", f"What {args.model} knows about {len(subjects)} test-split subjects "
             "(greedy answers; the held-out template was never trained):", table.to_string(), ""]
    lines.append("Where it is wrong:" if len(wrong) else "It answers every probe correctly.")
    lines += [f"  {r.prompt!r:55s} → {r.prediction!r:16s} (truth {r.truth!r})" for r in wrong.itertuples()]
    lines += ["", "Editing this model with MEND comes next in the course (notebooks 01-03)."]
    result = {"model": args.model, "path": card["path"], "params": card["params"],
              "acc_train": card["acc_train"], "acc_heldout_template": card["acc_heldout_template"],
              "probe_acc_trained": round(float(df[~df.heldout_template].correct.mean()), 4),
              "probe_acc_heldout": round(float(df[df.heldout_template].correct.mean()), 4),
              "n_wrong": int((~df.correct).sum()), "seconds": round(time.perf_counter() - t0, 1)}
    _emit(args, result, "\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mendlab", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("ci", "full"), help="overrides $MENDLAB_PROFILE")
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("world", help="write the synthetic world in MEND's file formats")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--subjects", type=int, default=200)
    w.add_argument("--out", required=True)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_world)

    z = sub.add_parser("zoo", help="build or list the small base models")
    zsub = z.add_subparsers(dest="zoo_cmd", required=True)
    zb = zsub.add_parser("build", help="build (or find cached) one zoo model")
    zb.add_argument("name")
    zl = zsub.add_parser("list", help="list zoo models and whether they are built")
    for q in (zb, zl):
        q.add_argument("--seed", type=int, default=None)
        q.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_zoo)

    d = sub.add_parser("demo", help="the main job: world, tiny model, what it knows")
    d.add_argument("--model", default="tiny-gpt2")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--subjects", type=int, default=10, help="test-split subjects to probe")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup(args)
    try:
        args.func(args)
    except (KeyError, ValueError) as e:
        print(f"mendlab: error: {e}", file=sys.stderr)
        return 2
    return 0
