"""mendlab.scaling: the memory estimate against a measured step, parameter counts, the paper's table, the CLI row
and the GPU benchmark's code path on the CPU (no wall time is asserted)."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

from mendlab import scaling
from mendlab.cli import main
from mendlab.experiments.ablations import reference_shapes
from mendlab.families import get_family
from mendlab.nets import NetConfig, parameter_count

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gpu_scaling  # noqa: E402


@pytest.mark.parametrize("mode", ["edit", "train"])
def test_estimate_is_within_15_percent_of_a_measured_step(mode):
    # a fresh interpreter builds the zoo's tiny-gpt2 shape with random weights and runs one step (seconds)
    row = scaling.measure("tiny-gpt2", mode=mode)
    assert row["measured_mib"] > 10 and row["estimated_mib"] > 10
    assert abs(row["rel_error"]) < 0.15, row


@pytest.mark.parametrize("name, weights", [("gpt-j-6B", 6), ("t5-xl", 8)])
def test_parameter_counts_match_a_meta_model(name, weights):
    model_type, fields = scaling.KNOWN[name]
    config = transformers.AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = getattr(transformers, get_family(config).auto_class).from_config(config)
    e = scaling.estimate(name)
    assert e.base_params == sum(p.numel() for p in model.parameters())
    shapes = reference_shapes(model_type, **fields)
    assert len(shapes) == weights and e.editor_params == parameter_count(shapes, NetConfig())
    if name == "gpt-j-6B":  # by hand: 2 shapes (4096↔16384, D = 20480), 2 blocks of U, V (r 1920), b, 3 scales/offsets
        d = 4096 + 16384
        assert e.editor_params == 2 * 2 * (2 * d * 1920 + d + 2 * 3 * d) == 315_146_240


def test_paper_table_has_all_six_models():
    rows = scaling.paper_table(dtypes=("bfloat16",), modes=("edit",))
    assert [r["model"] for r in rows] == list(scaling.PAPER_MODELS) == [
        "distilgpt2", "gpt2-xl", "gpt-neo-2.7B", "gpt-j-6B", "t5-xl", "t5-xxl"]
    assert {r["model_type"] for r in rows} == {"gpt2", "gpt_neo", "gptj", "t5"}
    assert all(get_family(r["model_type"]) for r in rows)  # every family is registered
    sizes = [r["base_params"] for r in rows]
    assert sizes[:4] == sorted(sizes[:4]) and sizes[4] < sizes[5] and 6.0e9 < sizes[3] < 6.1e9 < 1.0e10 < sizes[5]
    assert all(r["edit_bfloat16_gib"] > 0 and r["editor_params"] > 0 for r in rows)
    assert rows[0]["edit_bfloat16_fits"] == "24/40/80" and "v1.1" in rows[-1]["note"]


def test_bfloat16_halves_the_base_weights_and_not_the_editor():
    full, half = (scaling.estimate("gpt2", dtype=d, mode="train") for d in ("float32", "bfloat16"))
    assert full.base_weights == 2 * half.base_weights == 4 * full.base_params
    assert full.editor_weights == half.editor_weights and full.adam_state == half.adam_state > 0


def test_training_adds_the_optimiser_and_the_post_edit_passes():
    edit, train = (scaling.estimate("tiny-gpt2", mode=m, device="cpu") for m in ("edit", "train"))
    assert edit.adam_state == edit.post_edit == edit.backward == 0 and (edit.batch, train.batch) == (1, 10)
    assert train.adam_state == 2 * 4 * (train.editor_params + 6)  # two float32 moments; the 6 step sizes too
    assert train.post_edit > 0 and train.total > edit.total + train.adam_state
    with pytest.raises(ValueError, match="mode"):
        scaling.estimate("tiny-gpt2", mode="infer")


def test_cli_prints_one_row(capsys):
    assert main(["scale", "--model-config", "tiny-gpt2", "--mode", "train", "--seq-len", "16", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["model"] == "tiny-gpt2" and row["mode"] == "train" and row["seq_len"] == 16 and row["batch"] == 10
    assert row["total"] == sum(row[p] for p in scaling.PARTS)
    assert row == scaling.estimate("tiny-gpt2", mode="train", seq_len=16).row()
    spec = json.dumps({"model_type": "gpt2", "n_layer": 3, "n_embd": 64, "n_head": 2})
    assert main(["scale", "--model-config", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == "gpt2"
    assert main(["scale", "--model-config", "gpt-17"]) == 2 and "gpt-j-6B" in capsys.readouterr().err


def test_cli_measures_the_default_set():
    from mendlab.cli import build_parser

    args = build_parser().parse_args(["scale", "--measure", "--out", "x.csv"])
    assert args.models == ",".join(scaling.MEASURED) and args.out == "x.csv" and args.model_config is None


def test_gpu_benchmark_runs_its_code_path_on_the_cpu():
    row = gpu_scaling.bench("tiny-gpt2", "cpu", "float32", repeats=1, warmup=0)
    assert row["edit_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["ratio"] > 0 and row["train_step_ms"] > 0
    assert row["edit_est_gib"] > 0 and row["train_est_gib"] > row["edit_est_gib"] and row["gpu"] is None
    assert row["base_params"] == scaling.estimate("tiny-gpt2").base_params
