"""Sequential editing: every edit made so far is scored after each step, each edit is computed on the model that
already holds the earlier ones, and the model comes back bit for bit, also when an edit fails."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from mendlab import tasks
from mendlab.cli import main
from mendlab.edit import Edit
from mendlab.editors import MEND
from mendlab.editors.ft import FT, FTConfig
from mendlab.experiments import report
from mendlab.experiments import sequential as seq
from mendlab.families import get_family

matplotlib.use("Agg")
T = 4


def _setup(micro, model_type: str = "bart"):
    model, tok, world = micro(model_type)
    task = tasks.from_world(world, get_family(model).kind)
    return model, tok, task.test[:T], task.panel[:8]


def _clone(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


class _Constant:
    """A stub editor: adds ``step`` to one weight per edit, records that weight's sum at each call, and raises on
    call number ``fail_at``."""

    def __init__(self, name: str, step: float = 0.01, fail_at: int | None = None):
        self.name, self.step, self.fail_at, self.sums = name, step, fail_at, []

    def edit(self, model, enc):
        weight = dict(model.named_parameters())[self.name]
        self.sums.append(float(weight.double().sum()))
        if len(self.sums) == self.fail_at:
            raise RuntimeError("edit failed")
        return Edit(dense={self.name: torch.full_like(weight, self.step)})


def _ft(model):
    return FT.for_model(model, FTConfig(lr=1e-3, max_steps=5))


@pytest.mark.parametrize(("model_type", "make"), [("bart", MEND.for_model), ("bart", _ft), ("gpt2", MEND.for_model)],
                         ids=["bart-mend", "bart-ft", "gpt2-mend"])
def test_a_sequence_scores_every_edit_so_far_and_reverts_exactly(micro, model_type, make):
    model, tok, examples, panel = _setup(micro, model_type)
    before = _clone(model)
    frame, info = seq.sequential(make(model), model, tok, examples, panel, progress=False)
    assert list(frame.columns) == ["edit", "step", "es_rephrase", "es_edit"] and len(frame) == T * (T + 1) // 2
    assert sorted(zip(frame["edit"], frame["step"], strict=True)) == sorted((i, t) for t in range(T)
                                                                           for i in range(t + 1))
    assert frame[["es_rephrase", "es_edit"]].stack().between(0, 1).all()
    R = seq.retention_matrix(frame)
    assert R.shape == (T, T)
    below = np.tril(np.ones((T, T), dtype=bool), -1)  # i > t: edit i not made yet
    assert np.isnan(R[below]).all() and not np.isnan(R[~below]).any()
    assert np.array_equal(np.diag(seq.retention_matrix(frame, "es_edit")),
                          frame[frame["edit"] == frame["step"]].sort_values("edit")["es_edit"].to_numpy())
    assert len(info["acc_post"]) == len(info["drawdown"]) == T and info["edit_ms"] > 0
    np.testing.assert_allclose(info["drawdown"], info["acc_pre"] - np.array(info["acc_post"]))
    assert info["reverted_exactly"] is True and _same(model, before)


def test_the_model_is_restored_when_an_edit_raises_mid_sequence(micro):
    model, tok, examples, panel = _setup(micro)
    name = MEND.for_model(model).names[0]
    before = _clone(model)
    editor = _Constant(name, fail_at=3)
    with pytest.raises(RuntimeError, match="edit failed"):
        seq.sequential(editor, model, tok, examples, panel, progress=False)
    assert len(editor.sums) == 3 and editor.sums[2] != editor.sums[0]  # two edits were in place when it failed
    assert _same(model, before)


def test_each_edit_is_computed_on_the_model_holding_the_earlier_ones(micro):
    model, tok, examples, panel = _setup(micro)
    name = MEND.for_model(model).names[0]
    weight = dict(model.named_parameters())[name]
    editor = _Constant(name)
    frame, info = seq.sequential(editor, model, tok, examples, panel, progress=False)
    added = 0.01 * weight.numel()
    np.testing.assert_allclose(np.diff(editor.sums), added, rtol=1e-3)  # one more edit in place at each call
    assert info["reverted_exactly"] and float(weight.detach().double().sum()) == editor.sums[0]

    # a real editor: at call k the weights are the original plus the k edits returned so far
    ft = _ft(model)
    seen, edits = [], []
    inner_edit = ft.edit

    def recording(model_, enc):
        seen.append({n: p.detach().clone() for n, p in model_.named_parameters() if n in ft.names})
        edits.append(inner_edit(model_, enc).detach())
        return edits[-1]

    ft.edit = recording
    seq.sequential(ft, model, tok, examples, panel, progress=False)
    for k in range(1, T):
        for n in ft.names:
            expected = seen[0][n] + sum(e.delta(n).to(seen[0][n].dtype) for e in edits[:k] if n in e.names)
            torch.testing.assert_close(seen[k][n], expected, rtol=0, atol=1e-5)
    assert any(not torch.equal(seen[-1][n], seen[0][n]) for n in ft.names)


def test_run_tabulates_every_step_seed_by_seed(micro, monkeypatch):
    model, tok, world = micro("bart")
    task = tasks.from_world(world, get_family(model).kind)
    calls = []

    def editor_for(model_name, alg, seed, task_name, *, steps=None, world_seed=None):
        calls.append((seed, alg, steps))
        return (MEND.for_model(model) if alg == "mend" else _ft(model)), model, tok, {}

    monkeypatch.setattr(seq, "editor_for", editor_for)
    monkeypatch.setattr(seq, "task_for", lambda *a, **k: task)
    seen = []
    items = ["mend", "mend:least_squares", "ft"]
    frame = seq.run([("micro-bart", "qa")], items, [0, 1], T=3, steps=2, progress=False, on_row=seen.append)
    assert [c[:2] for c in calls] == [(s, a) for s in (0, 1) for a in ("mend", "mend", "ft")] and calls[0][2] == 2
    assert len(frame) == len(seen) == 6 * 6 and frame["reverted_exactly"].all()
    assert list(frame.columns) == ["model", "task", "editor", "alg", "aggregate", "seed", "edit", "step",
                                   "es_rephrase", "es_edit", "drawdown", "reverted_exactly"]
    assert list(frame["aggregate"].unique()) == ["sum", "least_squares", "sum"][:2]
    assert (frame.groupby(["editor", "seed", "step"])["drawdown"].nunique() == 1).all()
    table = seq.summarize(frame)
    assert list(table["editor"]) == items and (table["T"] == 3).all() and (table["seeds"] == 2).all()
    from mendlab import plots

    assert len(plots.retention(frame).axes) >= 4  # the curves (and their twin axis), one heatmap per item
    assert plots.item_label("mend:least_squares") == "MEND (least squares)" and plots.item_label("ft") == "FT"
    with pytest.raises(ValueError, match="unknown aggregation"):
        seq.run([("micro-bart", "qa")], ["mend:mean"], [0], T=3, progress=False)


def _fake_run(calls):
    def run(setups, algs, seeds, *, T, split, steps, world_seed, progress, on_row):
        calls.append({"setups": setups, "algs": algs, "T": T, "split": split, "steps": steps})
        rows = [{"model": m, "task": t, "alg": a, "seed": s, "edit": i, "step": j, "es_rephrase": 1.0 if i == j
                 else 0.5, "es_edit": 1.0, "drawdown": 0.01 * (j + 1), "reverted_exactly": True}
                for s in seeds for m, t in setups for a in algs for j in range(T) for i in range(j + 1)]
        for r in rows:
            on_row(r)
        return pd.DataFrame(rows)
    return run


def test_sequential_command_writes_table_provenance_and_figure(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(seq, "run", _fake_run(calls))
    out = tmp_path / "sequential.csv"
    assert main(["sequential", "--seeds", "0", "--T", "3", "--out", str(out), "--figure", str(tmp_path / "s.png"),
                 "--json"]) == 0
    items = ["mend", "mend:least_squares", "ft"]  # the default
    assert calls == [{"setups": [("tiny-bart", "qa")], "algs": items, "T": 3, "split": "test", "steps": None}]
    frame, prov = report.load(out)
    assert len(frame) == 3 * 6 and list(frame["alg"].unique()) == items
    assert prov["complete"] and prov["command"].startswith("mendlab sequential") and prov["T"] == 3
    assert prov["setups"] == ["tiny-bart:qa"] and prov["algs"] == ",".join(items)
    assert (tmp_path / "s.png").exists()
    table = seq.summarize(frame)  # a table without an ``editor`` column (written before items) reads as its algs
    assert table.loc[table["editor"] == "mend", "es_rephrase"].item() == f"{(1 + 0.5 + 0.5) / 3:.3f}"
    assert table.loc[table["editor"] == "mend", "drawdown"].item() == "0.030"
    with pytest.raises(SystemExit):  # the length of the sequence is --T; --n is not an option here
        main(["sequential", "--n", "3"])
