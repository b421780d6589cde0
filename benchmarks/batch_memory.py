"""Peak memory of one batch of k edits on tiny-bart: the k requests edited in one pass (``edit_many``), combined
by ``sum`` or ``least_squares`` into one edit, and every request scored under it (``metrics.evaluate``).

    python benchmarks/batch_memory.py                          # k = 1000, both aggregations, one JSON line each
    python benchmarks/batch_memory.py --k 125 --aggregates least_squares

Memory is the process's peak resident set (``VmHWM`` in ``/proc/self/status``, Linux), reset before each
aggregation by writing 5 to ``/proc/self/clear_refs``; ``peak_gib`` is that peak, ``over_loaded_gib`` the peak
minus the resident set once the model and editor are loaded. The editor is the cached MEND QA editor of the
comparison (trained on single edits). The requests come from ``--split`` (default ``train``: the QA test split
holds only 320 requests, fewer than k = 1000). Edit success on the training split is not a held-out figure, so
the scores printed beside the memory are informative only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mendlab import metrics
from mendlab.experiments.editors import editor_for, task_for
from mendlab.scaling import proc_status, reset_peak

GIB = 2**30


def run(k: int, aggregates: list[str], split: str, seed: int) -> list[dict]:
    editor, model, tok, _ = editor_for("tiny-bart", "mend", seed, "qa")
    task = task_for("tiny-bart", model, tok, "qa", seed)
    examples = task.split(split)[:k]
    if len(examples) < k:
        raise SystemExit(f"the {split} split has {len(examples)} requests, fewer than k = {k}")
    rows = []
    for aggregate in aggregates:
        reset_peak()
        loaded = proc_status("VmRSS") / GIB
        t0 = time.perf_counter()
        with torch.no_grad():
            r = metrics.evaluate(editor, model, tok, examples, task.panel, n_edits=k, aggregate=aggregate,
                                 progress=False)
        rows.append({"model": "tiny-bart", "k": k, "aggregate": aggregate, "split": split,
                     "peak_gib": round(proc_status("VmHWM") / GIB, 3), "loaded_gib": round(loaded, 3),
                     "over_loaded_gib": round(proc_status("VmHWM") / GIB - loaded, 3),
                     "seconds": round(time.perf_counter() - t0, 1), "es_rephrase": round(r["es_rephrase"], 4),
                     "drawdown": round(r["acc_dd"], 4), "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--aggregates", default="sum,least_squares")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for row in run(args.k, args.aggregates.split(","), args.split, args.seed):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
