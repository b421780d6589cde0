"""The benchmark scripts run, on a micro model, and report what their READMEs say (no wall time is asserted)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import edit_latency  # noqa: E402
import train_step  # noqa: E402

SHARED = {"model_params", "editor_params", "edited_weights", "device", "threads", "repeats", "warmup"}


def test_median_ms_interleaves_ops_and_skips_warmup():
    calls = []
    model = SimpleNamespace(zero_grad=lambda set_to_none: calls.append("zero"))
    ops = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ms = edit_latency.median_ms(ops, model, "cpu", repeats=3, warmup=2)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls == ["zero", "a", "zero", "b"] * 5  # 2 warm-up rounds + 3 timed, a and b alternating


@pytest.mark.parametrize("script, keys", [
    (edit_latency, {"edit_ms", "fwd_bwd_ms", "ratio", "capture_ms", "capture_ratio", "edit_apply_ms",
                    "edit_apply_ratio"}),
    (train_step, {"step_ms", "fwd_bwd_10_ms", "ratio"}),
])
def test_bench_rows_on_a_micro_model(micro, monkeypatch, script, keys):
    model, _, _ = micro("gpt2")
    monkeypatch.setattr(script, "build", lambda name, device: ("micro-gpt2", model))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        row = script.bench("micro", "cpu", repeats=1, warmup=0)
    finally:  # the micro model is shared by the session: leave it as it was
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    assert set(row) == {"model"} | keys | SHARED
    assert row["model"] == "micro-gpt2" and row["edited_weights"] > 0 and row["ratio"] > 0
    assert script is not edit_latency or row["capture_ms"] > 0
    assert row["editor_params"] > 0 and row["model_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("as_json", [True, False])
def test_report_prints_json_lines_or_a_table(capsys, as_json):
    args = SimpleNamespace(json=as_json, models="tiny,gpt2-small", device="cpu", repeats=1, warmup=0,
                           ranks=[None, 64])
    seen = []

    def fake(name, device, repeats, warmup):
        seen.append(edit_latency.net_config().rank)
        return {"model": name, "step_ms": 12.34, "ratio": 1.5, "editor_params": 2e6, "edited_weights": 3}

    train_step.report(args, fake, [("step_ms", "step ms", 9), ("ratio", "ratio", 6)])
    lines = capsys.readouterr().out.splitlines()
    assert seen == [1920, 64, 1920, 64]  # every model at every rank, in one run
    if as_json:
        rows = [json.loads(line) for line in lines]
        assert [(r["model"], r["rank"]) for r in rows] == [("tiny", 1920), ("tiny", 64), ("gpt2-small", 1920),
                                                           ("gpt2-small", 64)]
    else:
        assert lines[0].split() == ["model", "step", "ms", "ratio", "editor"]
        assert lines[1].split()[:3] == ["tiny", "12.3", "1.50"] and "rank 1920, 2.00M params, 3 weights" in lines[1]


def test_crash_resume_survives_sigkill_at_random_moments():
    """Two SIGKILLs at random moments of a training run (the benchmark runs twenty): no corrupted file is left
    and each resumed run reaches the uninterrupted run's best validation loss."""
    import crash_resume

    rows = crash_resume.main(["--kills", "2", "--json", "--seed", "1"])
    assert len(rows) == 2 and all(r["intact"] for r in rows), rows
    assert all(r["passed"] for r in rows), rows
