from __future__ import annotations

import pandas as pd
import pytest

from mendlab.cli import main
from mendlab.experiments import ablations, report
from mendlab.nets import VARIANTS


def _hand_count(shapes, sides="both", shared=True, rank=1920):
    """Editor parameters by the formula: per editor and block 2·D·r + D (+ 2·N·D scale and offset when shared)."""
    groups = {}
    for shape in shapes.values():
        groups.setdefault(shape, []).append(shape)
    dims = {"both": lambda m, n: m + n, "u": lambda m, n: m, "delta": lambda m, n: n,
            "smaller": lambda m, n: min(m, n)}[sides]
    total = 0
    for (m, n), members in groups.items():
        d = dims(m, n)
        per_block = 2 * d * min(rank, d) + d
        if shared:
            total += 2 * (per_block + 2 * len(members) * d)
        else:
            total += len(members) * 2 * per_block
    return total


def test_distilgpt2_parameter_counts_match_the_formula():
    shapes = ablations.reference_shapes()
    assert sorted(set(shapes.values())) == [(768, 3072), (3072, 768)] and len(shapes) == 6
    got = ablations.variant_parameters(shapes)
    assert got["mend"] == got["no_norm"] == got["no_id_init"] == _hand_count(shapes) == 59_089_920
    assert got["no_share"] == _hand_count(shapes, shared=False) == 176_993_280
    assert got["only_u"] == got["only_delta"] == _hand_count(shapes, "u") == 26_006_016
    assert got["only_smaller"] == _hand_count(shapes, "smaller") == 4_740_096


def _fake_editor_for(calls):
    def editor_for(model_name, alg, seed, task, *, steps=None, world_seed=None, variant="mend", **kw):
        calls.append((model_name, alg, seed, task, variant, steps))
        return None, None, None, {"editor_params": 10 + len(variant), "train_seconds": 1.5, "steps": 7,
                                  "best_step": 5}
    return editor_for


def test_ablate_trains_every_variant_as_mend_and_tabulates(monkeypatch):
    calls = []
    monkeypatch.setattr(ablations, "editor_for", _fake_editor_for(calls))
    monkeypatch.setattr(ablations, "evaluate_editor", lambda *a, **k: {
        "es_edit": 1.0, "es_rephrase": 0.5 if k["task"] == "qa" else 0.25, "acc_dd": 0.01 if k["task"] == "qa"
        else None, "ppl_dd": 0.2, "n": 3})
    seen = []
    frame = ablations.ablate(variants=("mend", "no_norm"), seeds=(0, 1), progress=False, on_row=seen.append)
    assert len(frame) == len(seen) == 8 and {c[1] for c in calls} == {"mend"}
    assert [c[4] for c in calls[:4]] == ["mend", "no_norm", "mend", "no_norm"]  # seed by seed
    gen = frame[frame["task"] == "gen"]
    assert (gen["drawdown"] == 0.2).all() and (frame[frame["task"] == "qa"]["drawdown"] == 0.01).all()
    assert (frame["params_distilgpt2"] == frame["variant"].map(ablations.variant_parameters())).all()
    table = ablations.summarize(frame)
    assert list(table["variant"][:2]) == ["MEND", "No norm."] and table["paper_es"].iloc[0] == 0.86
    with pytest.raises(ValueError, match="unknown variants"):
        ablations.ablate(variants=("no_such",), progress=False)


def test_every_variant_has_a_label_and_paper_figures():
    assert set(ablations.LABELS) == set(VARIANTS)
    assert all(set(ablations.PAPER_TABLE6[t]) == set(VARIANTS) for t in ("gen", "qa"))


@pytest.fixture
def fake_scores(monkeypatch):
    """Training and scoring replaced by fakes; the list of ``editor_for`` calls."""
    calls = []
    monkeypatch.setattr(ablations, "editor_for", _fake_editor_for(calls))
    monkeypatch.setattr(ablations, "evaluate_editor", lambda *a, **k: {
        "es_edit": 1.0, "es_rephrase": 0.9, "acc_dd": 0.01, "ppl_dd": None, "n": 3})
    return calls


def test_ablate_command_writes_table_provenance_and_figure(tmp_path, fake_scores):
    calls = fake_scores
    out = tmp_path / "ablations.csv"
    assert main(["ablate", "--setup", "tiny-bart:qa", "--variants", "mend,only_u", "--seeds", "0", "--steps", "3",
                 "--out", str(out), "--figure", str(tmp_path / "a.png"), "--json"]) == 0
    frame, prov = report.load(out)
    assert isinstance(frame, pd.DataFrame) and list(frame["variant"]) == ["mend", "only_u"]
    assert prov["complete"] and prov["command"].startswith("mendlab ablate") and prov["steps"] == 3
    assert prov["setups"] == ["tiny-bart:qa"] and prov["variants"] == "mend,only_u"
    assert (tmp_path / "a.png").exists() and all(c[5] == 3 for c in calls)


def test_load_results_joins_tables_and_keeps_only_seeds_with_every_variant(tmp_path):
    from mendlab.experiments import report
    from mendlab.experiments.ablations import load_results

    def table(name, rows):
        t = report.ResultsTable(tmp_path / f"{name}.csv", {"command": name, "profile": "ci", "seeds": []})
        for task, variant, seed in rows:
            t.add({"task": task, "variant": variant, "seed": seed, "es_rephrase": 0.5})
        t.close()

    table("ablations_a", [("gen", "mend", 0), ("gen", "no_norm", 0), ("gen", "mend", 1)])
    table("ablations_b", [("gen", "no_norm", 1), ("gen", "mend", 2), ("qa", "mend", 0)])
    frame, sources = load_results(folder=tmp_path)
    kept = sorted(set(zip(frame["task"], frame["seed"], strict=True)))
    assert kept == [("gen", 0), ("gen", 1), ("qa", 0)]  # gen seed 2 lacks no_norm
    assert list(sources["table"]) == ["ablations_a", "ablations_b"] and (frame["profile"] == "ci").all()
    with pytest.raises(FileNotFoundError, match="mendlab ablate"):
        load_results("nothing*.csv", folder=tmp_path)


def test_ablate_ranks_train_each_variant_at_each_rank(monkeypatch):
    nets = []

    def editor_for(model_name, alg, seed, task, *, variant="mend", net=None, **kw):
        nets.append(net)
        return None, None, None, {"editor_params": (net or {}).get("rank", 1920), "train_seconds": 1.0, "steps": 7,
                                  "best_step": 5}

    monkeypatch.setattr(ablations, "editor_for", editor_for)
    monkeypatch.setattr(ablations, "evaluate_editor", lambda *a, **k: {
        "es_edit": 1.0, "es_rephrase": 0.5, "acc_dd": 0.01, "ppl_dd": None, "n": 3})
    frame = ablations.ablate(setups=[("tiny-bart", "qa")], variants=("mend",), seeds=(0, 1), ranks=(1920, 64),
                             progress=False)
    assert nets == [{"rank": 1920}, {"rank": 64}] * 2 and list(frame["rank"]) == [1920, 64, 1920, 64]
    # distilGPT-2's shapes at rank 64: per shape 2 blocks of 2·D·64 + D, plus 2·3·D scale and offset
    shapes = ablations.reference_shapes()
    assert frame["params_distilgpt2"].iloc[1] == _hand_count(shapes, rank=64) < frame["params_distilgpt2"].iloc[0]
    table = ablations.summarize(frame)
    assert list(table["rank"]) == [1920, 64] and list(table["seeds"]) == [2, 2]
    # the Table-6 loader keeps only the default rank, and reads tables that predate the rank column as default
    assert list(ablations.with_rank(frame.drop(columns="rank"))["rank"]) == [1920] * 4


def test_ablate_command_takes_ranks(tmp_path, fake_scores):
    out = tmp_path / "rank.csv"
    assert main(["ablate", "--setup", "tiny-bart:qa", "--variants", "mend", "--ranks", "1920,128", "--seeds", "0",
                 "--out", str(out), "--json"]) == 0
    frame, prov = report.load(out)
    assert list(frame["rank"]) == [1920, 128] and prov["ranks"] == "1920,128"


def test_ranks_figure_has_a_panel_per_metric():
    from mendlab import plots

    frame = pd.DataFrame([{"task": t, "rank": r, "seed": s, "editor_params": 10 * r, "es_rephrase": 0.1 * s,
                           "drawdown": 0.01} for t in ("gen", "qa") for r in (1920, 64) for s in (0, 1)])
    fig = plots.ranks(frame)
    assert len(fig.axes) == 2 and all(len(ax.get_lines()) >= 2 for ax in fig.axes)
