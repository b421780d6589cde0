"""MEND at the paper's largest scales on one GPU: GPT-J-6B and T5-XXL (v1.1) shapes, beside mendlab.scaling.

    python benchmarks/gpu_scaling.py --out results/gpu_scaling.csv   # H100 80 GB / H200, under 8 minutes
    python benchmarks/gpu_scaling.py --dry-run                       # the same code: tiny-gpt2, t5-small, CPU

Each model is built directly on the device in bfloat16 with random weights (``scaling.build_model``: no download;
timings and memory do not depend on the weights' values); MEND's default editor is float32. Per model, one JSON
line: an edit's latency against one forward+backward of the model on the same input (``ratio``, timed
interleaved, medians), the time of one editor-training step (10 requests, ``train.edit_step`` + backward + clip +
Adam, after a first step that makes Adam's state), and the peak memory of an edit and of a training step
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, everything allocated included) beside
``scaling.estimate`` for the same step, with the relative error. Inputs: ``scaling.SEQ_LEN`` random tokens per
request, answers of ``scaling.TARGET_LEN``. On the CPU (``--dry-run``) the peak is this process's resident memory
(``VmHWM``) above what it held before the model was built: the code path is the GPU's, the figures are rough.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from edit_latency import clock, median_ms  # noqa: E402

from mendlab import scaling  # noqa: E402
from mendlab.losses import forward, nll  # noqa: E402

MODELS, DRY_MODELS = ("gpt-j-6B", "t5-xxl"), ("tiny-gpt2", "t5-small")


def reset_peak(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or this process's resident-memory high-water mark."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        scaling.reset_peak()


def peak_bytes(device: str, baseline: int) -> int:
    """Bytes at the peak since :func:`reset_peak` above ``baseline`` (what was there before the model was built):
    CUDA's ``max_memory_allocated`` (every allocated tensor), or on the CPU the resident high-water mark."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    return scaling.proc_status("VmHWM") - baseline


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measured(step, device: str, baseline: int) -> int:
    reset_peak(device)
    step()
    return peak_bytes(device, baseline)


def beside(prefix: str, peak: int, config, dtype: str, mode: str, device: str) -> dict:
    """The measured peak, the estimate of the same step and the relative error (estimate / measured − 1)."""
    est = scaling.estimate(config, dtype=dtype, mode=mode, device="cuda" if device.startswith("cuda") else "cpu")
    return {f"{prefix}_peak_gib": round(peak / scaling.GIB, 3), f"{prefix}_est_gib": round(est.total / scaling.GIB, 3),
            f"{prefix}_rel_error": round(est.total / peak - 1, 4)}


def bench(name: str, device: str, dtype: str, repeats: int, warmup: int) -> dict:
    config = scaling.resolve_config(name)
    release(device)
    baseline = torch.cuda.memory_allocated() if device.startswith("cuda") else scaling.proc_status("VmRSS")
    t0 = time.perf_counter()
    model = scaling.build_model(config, dtype, device)
    row = {"model": name, "model_type": config.model_type, "device": device, "dtype": dtype,
           "base_params": sum(p.numel() for p in model.parameters()), "build_s": round(time.perf_counter() - t0, 1)}
    editor, enc, prime, edit = scaling.real_step(model, "edit")
    kind = editor.kind
    prime()
    row |= beside("edit", measured(edit, device, baseline), config, dtype, "edit", device)

    def fwd_bwd():  # what one fine-tuning step costs before its optimiser: every weight's gradient
        model.requires_grad_(True)
        nll(kind, forward(model, enc), enc["labels"]).backward()
        model.requires_grad_(False)

    ms = median_ms({"edit": edit, "fwd_bwd": fwd_bwd}, model, device, repeats, warmup)
    row |= {"editor_params": editor.num_parameters(), "edit_ms": round(ms["edit"], 2),
            "fwd_bwd_ms": round(ms["fwd_bwd"], 2), "ratio": round(ms["edit"] / ms["fwd_bwd"], 3)}
    model.zero_grad(set_to_none=True)
    del editor, prime, edit
    release(device)
    _, _, first, step = scaling.real_step(model, "train")
    first()  # Adam's state exists from the first step on: the second is a steady-state step
    row |= beside("train", measured(step, device, baseline), config, dtype, "train", device)
    times = []
    for _ in range(max(repeats // 2, 1)):
        start = clock(device)
        step()
        times.append((clock(device) - start) * 1e3)
    row["train_step_ms"] = round(sorted(times)[len(times) // 2], 2)
    return row | {"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
                  "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny-gpt2 and t5-small shapes on the CPU")
    p.add_argument("--models", default=None, help=f"comma-separated names (default {','.join(MODELS)}; dry run "
                                                  f"{','.join(DRY_MODELS)})")
    p.add_argument("--device", default=None, help="default cuda, or cpu with --dry-run")
    p.add_argument("--dtype", default=None, choices=tuple(scaling.DTYPES),
                   help="the base models' (default bfloat16; dry run float32, as bfloat16 is slow on most CPUs)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (median; default 5, dry run 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the rows as CSV with a provenance sidecar")
    args = p.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    models = args.models.split(",") if args.models else list(DRY_MODELS if args.dry_run else MODELS)
    repeats = args.repeats or (2 if args.dry_run else 5)
    dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    torch.manual_seed(0)
    table = None
    if args.out:
        from mendlab.config import profile
        from mendlab.experiments import report

        table = report.ResultsTable(args.out, report.provenance(report.command_line(), profile(), [0],
                                                                models=models, device=device, dtype=dtype))
    for name in models:
        row = bench(name, device, dtype, repeats, args.warmup)
        print(json.dumps(row), flush=True)
        if table is not None:
            table.add(row)
    if table is not None:
        table.close()


if __name__ == "__main__":
    main()
