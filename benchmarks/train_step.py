"""What one editor-training step costs, relative to one forward+backward of the base model on the same batch.

    python benchmarks/train_step.py                        # table, tiny-gpt2 and a GPT-2-small-shaped model
    python benchmarks/train_step.py --json --models tiny   # one JSON object per model, one per line

Inputs as in ``reference/performance.md``: 10 edit sequences and 10 locality sequences of 24 random tokens,
labels on the last 6, no padding (x'_e is a third batch of 10 of the same shape). The editor is the default
``NetConfig()`` (rank 1920, shared, norm, identity init) in training mode; the training settings are the ``ci``
profile's. Timed, interleaved in one process, medians after warm-ups:

- ``step``: what ``mendlab.train.train`` does per optimiser step: zero the gradients, ``train.edit_step``
  (pre-edit logits on x_loc, the 10 separate edits, post-edit logits on x'_e and x_loc, the loss), the
  backward to the editor, clipping and the Adam step;
- ``fwd_bwd_10``: the base model's forward on the 10 edit sequences, the NLL and ``loss.backward()`` with every
  parameter requiring grad (``fwd_bwd_10`` in ``reference/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from edit_latency import MODELS, build, clock  # noqa: E402

from mendlab.data import EditBatch  # noqa: E402
from mendlab.editors.mend import MEND  # noqa: E402
from mendlab.families import get_family  # noqa: E402
from mendlab.losses import forward, nll  # noqa: E402
from mendlab.nets import NetConfig  # noqa: E402
from mendlab.train import TrainConfig, edit_step  # noqa: E402

BATCH, SEQ_LEN, N_LABELS = 10, 24, 6


def batch_input(vocab_size: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels [10, 24], labels on the last 6 tokens of each row."""
    ids = torch.randint(vocab_size, (BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    labels = torch.full_like(ids, -100)
    labels[:, -N_LABELS:] = ids[:, -N_LABELS:]
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in enc.items()}


def bench(name: str, device: str, repeats: int, warmup: int) -> dict:
    label, model = build(name, device)
    kind = get_family(model).kind
    vocab = model.config.vocab_size
    batch = EditBatch(batch_input(vocab, device, 0), batch_input(vocab, device, 1), batch_input(vocab, device, 2))
    cfg = TrainConfig.for_profile("ci", device=device)
    editor = MEND.for_model(model, NetConfig()).to(device).train()
    opt = torch.optim.Adam(editor.param_groups(cfg.lr, cfg.lr_lr))
    params = [p for g in opt.param_groups for p in g["params"]]

    def step():
        model.requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        edit_step(editor, model, batch, cfg)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()

    def fwd_bwd_10():
        model.requires_grad_(True)
        nll(kind, forward(model, batch.edit_inner), batch.edit_inner["labels"]).backward()

    ops = {"step": step, "fwd_bwd_10": fwd_bwd_10}
    times: dict[str, list[float]] = {k: [] for k in ops}
    for i in range(warmup + repeats):
        for key, op in ops.items():
            model.zero_grad(set_to_none=True)
            start = clock(device)
            op()
            elapsed = clock(device) - start
            if i >= warmup:
                times[key].append(elapsed * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"model": label, "step_ms": round(ms["step"], 2), "fwd_bwd_10_ms": round(ms["fwd_bwd_10"], 2),
            "ratio": round(ms["step"] / ms["fwd_bwd_10"], 3),
            "model_params": sum(p.numel() for p in model.parameters()),
            "editor_params": editor.net.count_parameters(), "edited_weights": len(editor.names),
            "device": device, "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per operation (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    if not args.json:
        print(f"device {args.device}, {args.threads} threads, median of {args.repeats} after {args.warmup} warm-ups")
        print(f"{'model':<26} {'step ms':>9} {'fwd_bwd_10 ms':>14} {'ratio':>6}  editor")
    for name in args.models.split(","):
        row = bench(name.strip(), args.device, args.repeats, args.warmup)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['model']:<26} {row['step_ms']:>9.1f} {row['fwd_bwd_10_ms']:>14.1f} {row['ratio']:>6.2f}  "
                  f"{row['editor_params'] / 1e6:.1f}M params, {row['edited_weights']} weights", flush=True)


if __name__ == "__main__":
    main()
