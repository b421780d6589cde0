"""What one MEND edit costs, relative to one forward+backward of the base model on the same input.

    python benchmarks/edit_latency.py                        # table, tiny-gpt2 and a GPT-2-small-shaped model
    python benchmarks/edit_latency.py --json --models tiny   # one JSON object per model, one per line
    python benchmarks/edit_latency.py --device cuda

Inputs as in ``reference/performance.md``: 1 sequence × 24 random tokens, labels on the last 6, no padding.
The editor is the default ``NetConfig()`` (rank 1920, shared, norm, identity init), untrained, its normaliser
primed by one training-mode edit, then in eval mode. Timed, interleaved in one process, medians after warm-ups:

- ``edit``: ``editor.edit(model, enc)`` (forward, capture backward, editor networks; returns the Edit);
- ``fwd_bwd``: the model's forward, the same loss and ``loss.backward()`` with every parameter requiring grad;
- ``capture``: the rank-1 capture alone (forward, loss, backward to the edited layers' outputs), the part of an
  edit that no editor network can remove;
- ``edit_apply``: ``edit`` plus one post-edit forward through ``edit.forward(model, enc)`` (informative).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from mendlab import rank1, zoo
from mendlab.editors.mend import MEND
from mendlab.families import get_family
from mendlab.losses import forward, labelled_logits, nll
from mendlab.nets import NetConfig

SEQ_LEN, N_LABELS = 24, 6
MODELS = ("tiny", "gpt2-small")
NET_OVERRIDES: dict = {}  # NetConfig fields set from the command line (``--rank``); empty: the default editor


def net_config() -> NetConfig:
    return NetConfig(**NET_OVERRIDES)


def build(name: str, device: str) -> tuple[str, torch.nn.Module]:
    """(label, model in eval mode): tiny-gpt2 from the zoo cache, or GPT-2-small's shape (124M) random-init."""
    if name == "tiny":
        model, _ = zoo.load("tiny-gpt2", device=device)
        return "tiny-gpt2", model
    if name == "gpt2-small":
        return "gpt2-small (random init)", GPT2LMHeadModel(GPT2Config()).to(device).eval()
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def report(args: argparse.Namespace, bench, columns: list[tuple[str, str, int]]) -> None:
    """Runs ``bench`` on each of ``--models``; prints one JSON line per model, or a table of ``columns``
    given as ``(key, title, width)`` (ratios to two decimals, milliseconds to one)."""
    if not args.json:
        print(f"{'model':<26} " + " ".join(f"{title:>{width}}" for _, title, width in columns) + "  editor")
    for name, rank in [(m, r) for m in args.models.split(",") for r in args.ranks]:
        NET_OVERRIDES.clear()
        NET_OVERRIDES.update({} if rank is None else {"rank": rank})
        row = {**bench(name.strip(), args.device, args.repeats, args.warmup), "rank": net_config().rank}
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        cells = " ".join(f"{row[key]:>{width}.{2 if 'ratio' in key else 1}f}" for key, _, width in columns)
        print(f"{row['model']:<26} {cells}  rank {row['rank']}, {row['editor_params'] / 1e6:.2f}M params, "
              f"{row['edited_weights']} weights", flush=True)


def edit_input(vocab_size: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """One edit request: input_ids, attention_mask, labels [1, 24], labels on the last 6 tokens."""
    ids = torch.randint(vocab_size, (1, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    labels = torch.full_like(ids, -100)
    labels[:, -N_LABELS:] = ids[:, -N_LABELS:]
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in enc.items()}


def clock(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def median_ms(ops: dict, model: torch.nn.Module, device: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each op, run interleaved (op 1, op 2, ..., op 1, ...) so that a slow moment of the
    machine hits all alike; ``warmup`` untimed rounds first; the model's gradients zeroed outside the clock."""
    times: dict[str, list[float]] = {k: [] for k in ops}
    for i in range(warmup + repeats):
        for key, op in ops.items():
            model.zero_grad(set_to_none=True)
            start = clock(device)
            op()
            elapsed = clock(device) - start
            if i >= warmup:
                times[key].append(elapsed * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def run_info(model, editor, device: str, repeats: int, warmup: int) -> dict:
    """The keys every benchmark row ends with: sizes and the settings it was timed under."""
    return {"model_params": sum(p.numel() for p in model.parameters()),
            "editor_params": editor.net.count_parameters(), "edited_weights": len(editor.names),
            "device": device, "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup}


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The options both benchmarks take; sets the thread count, the seed and quiet loading."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per operation (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    parser.add_argument("--rank", default=None,
                        help="the editor's NetConfig rank, or several (1920,128,64) timed one after another in this "
                             "run (default: NetConfig's)")
    args = parser.parse_args(argv)
    args.ranks = [int(r) for r in args.rank.split(",")] if args.rank else [None]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    if not args.json:
        print(f"device {args.device}, {args.threads} threads, median of {args.repeats} after {args.warmup} warm-ups")
    return args


def bench(name: str, device: str, repeats: int, warmup: int) -> dict:
    label, model = build(name, device)
    model.requires_grad_(True)
    kind = get_family(model).kind
    enc = edit_input(model.config.vocab_size, device)
    editor = MEND.for_model(model, net_config()).to(device)
    editor.train()
    editor.edit(model, enc)  # primes the normaliser (an untrained editor has no statistics yet)
    editor.eval()

    @torch.no_grad()  # an edit for use, not for training the editor: no graph to the editor's parameters
    def edit():
        editor.edit(model, enc)

    def fwd_bwd():
        nll(kind, forward(model, enc), enc["labels"]).backward()

    @torch.no_grad()
    def capture():  # the floor of any rank-1 editor: the forward and the backward to the edited layers' outputs
        with torch.enable_grad(), rank1.capture(model, editor.names) as cap:
            logits, labels, task_kind = labelled_logits(model, editor.kind, enc)
            cap.rows(nll(task_kind, logits, labels))

    @torch.no_grad()
    def edit_apply():
        editor.edit(model, enc).forward(model, enc)

    ops = {"edit": edit, "fwd_bwd": fwd_bwd, "capture": capture, "edit_apply": edit_apply}
    ms = median_ms(ops, model, device, repeats, warmup)
    return {"model": label, "edit_ms": round(ms["edit"], 2), "fwd_bwd_ms": round(ms["fwd_bwd"], 2),
            "ratio": round(ms["edit"] / ms["fwd_bwd"], 3), "capture_ms": round(ms["capture"], 2),
            "capture_ratio": round(ms["capture"] / ms["fwd_bwd"], 3), "edit_apply_ms": round(ms["edit_apply"], 2),
            "edit_apply_ratio": round(ms["edit_apply"] / ms["fwd_bwd"], 3),
            **run_info(model, editor, device, repeats, warmup)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__.split("\n\n")[0])
    report(args, bench, [("edit_ms", "edit ms", 9), ("fwd_bwd_ms", "fwd+bwd ms", 11), ("ratio", "ratio", 6),
                         ("capture_ms", "capture ms", 11), ("capture_ratio", "ratio", 6),
                         ("edit_apply_ms", "edit+fwd ms", 12), ("edit_apply_ratio", "ratio", 6)])


if __name__ == "__main__":
    main()
