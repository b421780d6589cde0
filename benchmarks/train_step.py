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

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from edit_latency import build, median_ms, net_config, parse_args, report, run_info  # noqa: E402

from mendlab.data import EditBatch  # noqa: E402
from mendlab.editors.mend import MEND  # noqa: E402
from mendlab.families import get_family  # noqa: E402
from mendlab.losses import forward, nll  # noqa: E402
from mendlab.train import TrainConfig, edit_step, optimizer  # noqa: E402

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
    editor = MEND.for_model(model, net_config()).to(device).train()
    opt = optimizer(editor, cfg)
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

    ms = median_ms({"step": step, "fwd_bwd_10": fwd_bwd_10}, model, device, repeats, warmup)
    return {"model": label, "step_ms": round(ms["step"], 2), "fwd_bwd_10_ms": round(ms["fwd_bwd_10"], 2),
            "ratio": round(ms["step"] / ms["fwd_bwd_10"], 3), **run_info(model, editor, device, repeats, warmup)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__.split("\n\n")[0])
    report(args, bench, [("step_ms", "step ms", 9), ("fwd_bwd_10_ms", "fwd_bwd_10 ms", 14), ("ratio", "ratio", 6)])


if __name__ == "__main__":
    main()
