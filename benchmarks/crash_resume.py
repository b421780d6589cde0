"""Training survives ``kill -9``: kill an editor's training at random moments, resume it, and compare.

    python benchmarks/crash_resume.py --kills 20           # table: one row per trial
    python benchmarks/crash_resume.py --kills 3 --json     # one JSON object per trial, one per line

A micro GPT-2 (2 blocks of width 32, trained for a few steps on a 20-subject world) is saved as a plain Hugging
Face folder; a child process loads it and trains MEND (rank 16) for ``STEPS`` steps with a validation and a
checkpoint every 2 steps, so that kills land in checkpoint writes too. First one uninterrupted run gives the
reference best validation loss. Then each trial starts a fresh run, sends ``SIGKILL`` at a uniformly random
moment of the run (after the child has imported its libraries), checks that no corrupted file was left (the
checkpoint and ``best/`` either absent or loadable, no stray ``.tmp`` after recovery) and runs the same command
again to the end. A trial passes when the resumed run's best validation loss equals the reference within
``--tol`` (relative). Training resumes from the exact RNG and optimiser state, so the expected difference is 0
up to float summation order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS, VAL_EVERY = 24, 2


def prepare(folder: Path) -> Path:
    """Train the micro GPT-2 once and save it (model and tokenizer) under ``folder/model``."""
    from mendlab import zoo
    from mendlab.world import WorldConfig

    spec = zoo.ZooSpec("micro-gpt2", "gpt2", dict(n_layer=2, n_embd=32, n_head=2, n_positions=128), steps=3,
                       batch_size=8, world=WorldConfig(n_subjects=20))
    model, tok, _ = zoo.train_model(spec, progress=False)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return folder / "model"


def child(model_dir: str, out: str) -> None:
    """Train to the end (resuming from ``out`` when it holds a checkpoint) and print the result as JSON."""
    import torch

    from mendlab import tasks, zoo
    from mendlab.editors import MEND
    from mendlab.nets import NetConfig
    from mendlab.train import TrainConfig, train
    from mendlab.world import World, WorldConfig

    torch.set_num_threads(1)
    model, tok = zoo.load(model_dir)
    task = tasks.from_world(World(WorldConfig(n_subjects=20)), "decoder")
    torch.manual_seed(0)
    editor = MEND.for_model(model, NetConfig(rank=16))
    cfg = TrainConfig(steps=STEPS, edits_per_step=4, val_every=VAL_EVERY, val_size=8, patience=1000, lr=1e-3)
    print("READY", flush=True)
    result = train(editor, model, tok, task.train, task.val, cfg, out=out, progress=False)
    print(json.dumps({"best_val": result.best_val, "steps": result.steps}), flush=True)


def _start(model_dir: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--child", str(model_dir), str(out)], env=env,
                            stdout=subprocess.PIPE, text=True)


def run_to_end(model_dir: Path, out: Path) -> tuple[dict, float]:
    """(the child's JSON result, seconds after its READY line)."""
    proc = _start(model_dir, out)
    assert proc.stdout.readline().strip() == "READY"
    t0 = time.perf_counter()
    last = proc.stdout.read().strip().splitlines()[-1]
    if proc.wait() != 0:
        raise RuntimeError(f"training in {out} failed with exit code {proc.returncode}")
    return json.loads(last), time.perf_counter() - t0


def files_intact(out: Path) -> list[str]:
    """Problems with what a killed run left in ``out`` after the recovery a restart does; [] when intact."""
    from safetensors.torch import load_file

    from mendlab import checkpoint
    from mendlab.editors import MEND

    problems = []
    for name in ("checkpoint", "best"):
        folder = checkpoint.recover(out / name)
        if not folder.exists():
            continue
        try:
            if name == "best":
                MEND.from_pretrained(folder)
            else:
                load_file(str(folder / checkpoint.TENSORS))
                json.loads((folder / checkpoint.STATE).read_text())
        except Exception as e:  # noqa: BLE001 - any failure to read is what this check reports
            problems.append(f"{folder}: {type(e).__name__}: {e}")
    problems += [str(p) for p in out.glob("*.tmp")]
    return problems


def trial(model_dir: Path, out: Path, duration: float, rng: random.Random, reference: float, tol: float) -> dict:
    proc = _start(model_dir, out)
    assert proc.stdout.readline().strip() == "READY"
    delay = rng.uniform(0.0, duration)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems = files_intact(out)
    result, _ = run_to_end(model_dir, out)
    error = abs(result["best_val"] - reference) / abs(reference)
    return {"kill_after_s": round(delay, 2), "finished_before_kill": finished_first, "intact": not problems,
            "problems": problems, "best_val": round(result["best_val"], 6), "reference": round(reference, 6),
            "rel_error": error, "passed": not problems and error <= tol and result["steps"] == STEPS}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4, help="relative tolerance on the best validation loss")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return []
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = prepare(tmp)
        reference, duration = run_to_end(model_dir, tmp / "reference")
        for i in range(args.kills):
            row = {"trial": i, **trial(model_dir, tmp / f"trial{i}", duration, rng, reference["best_val"], args.tol)}
            rows.append(row)
            print(json.dumps(row) if args.json else
                  f"{i:3d}  kill after {row['kill_after_s']:6.2f} s  intact {row['intact']}  best_val "
                  f"{row['best_val']:.6f} (reference {row['reference']:.6f})  passed {row['passed']}", flush=True)
    if not args.json:
        print(f"{sum(r['passed'] for r in rows)}/{len(rows)} trials passed")
    return rows


if __name__ == "__main__":
    main()
