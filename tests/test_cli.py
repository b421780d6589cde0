"""The command line: --json prints one JSON object as the last line; errors are clear."""

import json
import subprocess
import sys

import pytest

from mendlab.cli import main


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_world_json(tmp_path, capsys):
    assert main(["world", "--seed", "3", "--subjects", "30", "--out", str(tmp_path), "--json"]) == 0
    result = last_json(capsys)
    assert result["seed"] == 3 and result["n_subjects"] == 30 and result["n_facts"] == 30 * result["n_relations"]
    assert sum(result["subjects_per_split"].values()) == 30
    zsre = tmp_path / "zsre" / "structured_zeroshot-train-new_annotated_final.jsonl"
    assert result["files"]["zsre_train"] == str(zsre) and zsre.exists()


def test_zoo_list_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    assert main(["zoo", "list", "--json"]) == 0
    models = last_json(capsys)["models"]
    assert [m["name"] for m in models] == ["tiny-gpt2", "tiny-gptj", "tiny-gptneo", "tiny-bart", "tiny-t5",
                                           "tiny-bert"]
    assert not any(m["built"] for m in models)


def test_unknown_zoo_model_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    assert main(["zoo", "build", "tiny-llama"]) == 2
    assert "tiny-gpt2" in capsys.readouterr().err


def test_bad_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MENDLAB_PROFILE", "huge")
    from mendlab import config

    with pytest.raises(ValueError, match="ci"):
        config.profile()


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "mendlab", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "zoo" in out.stdout


def test_train_set_parses_train_config_fields():
    from mendlab.cli import _settings
    from mendlab.train import TrainConfig

    assert _settings(["lr=1e-4", "schedule=constant", "resample_target=false"], TrainConfig) == {
        "lr": 1e-4, "schedule": "constant", "resample_target": False}
    with pytest.raises(SystemExit, match="schedule"):
        _settings(["learning_rate=1"], TrainConfig)


def test_zoo_build_takes_one_name_or_all(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    assert main(["zoo", "build"]) == 2
    assert main(["zoo", "build", "tiny-gpt2", "--all"]) == 2
    assert "--all" in capsys.readouterr().err
    from mendlab import zoo

    built = []

    def fake_build(name, profile=None, seed=None, progress=True):
        built.append((name, seed))
        return {"name": name, "model_type": "x", "path": str(tmp_path / name), "params": 1, "seconds": 0.0,
                "cached": True, "acc_train": 1.0, "acc_heldout_template": 1.0, "build_seconds": 0.0}

    monkeypatch.setattr(zoo, "build", fake_build)
    assert main(["zoo", "build", "--all", "--seed", "1", "--json"]) == 0
    assert built == [(n, 1) for n in zoo.names()]
    assert [m["name"] for m in last_json(capsys)["models"]] == zoo.names()


def test_zoo_build_config_and_set_build_a_variant(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    from mendlab import zoo

    built = []

    def fake_build(name, profile=None, seed=None, progress=True):
        built.append(name)
        return {"name": "tiny-bert", "model_type": "bert", "path": str(tmp_path / "v"), "params": 1,
                "seconds": 0.0, "cached": False, "acc_train": 1.0, "acc_heldout_template": 1.0, "build_seconds": 0.0}

    monkeypatch.setattr(zoo, "build", fake_build)
    assert main(["zoo", "build", "tiny-bert", "--seed", "1", "--config", "num_hidden_layers=6",
                 "--set", "world_n_subjects=80", "--json"]) == 0
    (s,) = built
    assert s == zoo.variant("tiny-bert", seed=1, config={"num_hidden_layers": 6}, world_n_subjects=80)
    assert last_json(capsys)["path"] == str(tmp_path / "v")
    assert main(["zoo", "build", "--all", "--config", "num_hidden_layers=6"]) == 2
    assert "NAME" in capsys.readouterr().err
    assert main(["zoo", "build", "tiny-bert", "--config", "num_layerz=6"]) == 2
    assert "num_layerz" in capsys.readouterr().err


def test_train_weights_and_net_reach_the_saved_editor(capsys, tmp_path, monkeypatch):
    """``--weights`` picks the edited weights and ``--net`` overrides NetConfig; both land in the saved editor,
    and a weight the model lacks is a clear error before any training."""
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path / "cache"))
    from mendlab import zoo
    from mendlab.editors import load_editor
    from mendlab.world import WorldConfig

    micro = zoo.ZooSpec("micro-gpt2", "gpt2", dict(n_layer=2, n_embd=32, n_head=2, n_positions=128), steps=3,
                        batch_size=8, world=WorldConfig(n_subjects=20))
    path = zoo.build(micro, progress=False)["path"]
    weight = "transformer.h.1.mlp.c_fc.weight"
    out = tmp_path / "ed"
    args = ["train", "--model", path, "--weights", weight, "--net", "rank=8", "--steps", "2", "--set", "val_size=4",
            "--out", str(out), "--json"]
    assert main(args) == 0
    card = last_json(capsys)
    model, _ = zoo.load(path)
    editor = load_editor(out / "best", model)
    assert editor.names == [weight] and editor.config.rank == 8 and card["steps"] == 2
    assert main(["train", "--model", path, "--weights", "transformer.h.9.mlp.c_fc.weight", "--steps", "2",
                 "--out", str(tmp_path / "bad"), "--json"]) == 2
    assert "h.9" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit, match="--net"):
        main(["train", "--model", path, "--net", "width=3", "--json"])


def test_compare_out_writes_rows_as_they_finish_with_provenance(capsys, tmp_path, monkeypatch):
    import pandas as pd

    from mendlab import experiments
    from mendlab.experiments import report

    seen = []

    def fake_compare(setups, algs, seeds, on_row=None, **kw):
        rows = []
        for (m, t), s, a in ((st, s, a) for s in seeds for st in setups for a in algs):
            rows.append({"model": m, "task": t, "alg": a, "seed": s, "es_rephrase": 0.5, "drawdown": 0.01})
            on_row(rows[-1])
            seen.append(report.load(tmp_path / "r" / "c.csv")[1]["rows"])  # each row is on disk when it is done
        return pd.DataFrame(rows)

    monkeypatch.setattr(experiments, "compare", fake_compare)
    out = tmp_path / "r" / "c.csv"
    assert main(["compare", "--setup", "tiny-bart:qa", "--algs", "ft,mend", "--seeds", "0,1", "--out", str(out),
                 "--figure", str(tmp_path / "r" / "c.png"), "--json"]) == 0
    frame, prov = report.load(out)
    assert seen == [1, 2, 3, 4] and len(frame) == 4 and prov["complete"] and prov["seeds"] == [0, 1]
    assert prov["command"].startswith("mendlab compare") and prov["setups"] == ["tiny-bart:qa"]
    assert (tmp_path / "r" / "c.png").exists()
