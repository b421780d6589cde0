"""Batch editing (paper Table 5): k requests as one edit, pooled (``editor.edit``) or each edited alone and
aggregated (``edit_many(...).aggregate``), in evaluation (``metrics.evaluate``), in training (``edit_step`` with
``TrainConfig.batch_edits``), and the ``batch`` runner, its table, figure and command."""

from __future__ import annotations

import dataclasses
import types

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from mendlab import losses, metrics, plots, tasks
from mendlab.cli import build_parser, main
from mendlab.data import Collator
from mendlab.editors import MEND
from mendlab.editors.enn import ENN
from mendlab.editors.ft import FT, FTConfig
from mendlab.experiments import batch, report
from mendlab.experiments import editors as editors_module
from mendlab.families import get_family
from mendlab.nets import NetConfig
from mendlab.train import TrainConfig, edit_step, train

matplotlib.use("Agg")


def _task(micro, model_type: str = "bart"):
    model, tok, world = micro(model_type)
    return model, tok, tasks.from_world(world, get_family(model).kind)


def _mend(model, tok, t):
    """A MEND editor with a primed normaliser, in eval mode (so editing twice gives the same edit)."""
    torch.manual_seed(0)
    editor = MEND.for_model(model, NetConfig(rank=16)).train()
    editor.edit(model, Collator.for_model(model, tok)(t.train[:4]))
    return editor.eval()


def _enc(model, tok, pairs):
    return Collator.for_model(model, tok).encode(pairs)


# -- (a) metrics.evaluate: a group's one edit ---------------------------------------------------------------
def _by_hand(model, tok, edit, examples, panel) -> tuple[torch.Tensor, float, float]:
    """es_edit per request, panel accuracy and KL of one group's ``edit``."""
    kind = get_family(model).kind
    inner, pan = _enc(model, tok, [(e.prompt, e.target) for e in examples]), _enc(model, tok, panel)
    with torch.no_grad():
        es = losses.correct(kind, edit.forward(model, inner), inner["labels"]).float()
        pre, post = losses.forward(model, pan), edit.forward(model, pan)
    acc = float(losses.correct(kind, post, pan["labels"]).float().mean())
    return es, acc, float(losses.kl_loc(kind, pre, post, pan))


def test_evaluate_scores_each_group_under_its_aggregated_or_pooled_edit(micro):
    model, tok, t = _task(micro)
    editor, examples, panel = _mend(model, tok, t), t.test[:2], t.panel[:8]
    inner = _enc(model, tok, [(e.prompt, e.target) for e in examples])
    results = {}
    for aggregate, make in (("sum", lambda: editor.edit_many(model, inner).merged()),
                            (None, lambda: editor.edit(model, inner))):
        r, df = metrics.evaluate(editor, model, tok, examples, panel, n_edits=2, aggregate=aggregate,
                                 progress=False, return_rows=True)
        with torch.no_grad():
            edit = make().detach()
        es, acc, kl = _by_hand(model, tok, edit, examples, panel)
        assert r["aggregate"] == aggregate and r["n_edits"] == 2 and r["n"] == 2
        assert df["es_edit"].tolist() == es.tolist()
        np.testing.assert_allclose(df["acc_post"], acc)
        np.testing.assert_allclose(df["kl"], kl, rtol=1e-5, atol=1e-8)  # both members: the group's one edit
        results[aggregate] = r
    assert results["sum"]["kl"] != pytest.approx(results[None]["kl"], rel=1e-3)  # sum ≠ pooled

    ls = metrics.evaluate(editor, model, tok, examples, panel, n_edits=2, aggregate="least_squares", progress=False)
    assert ls["aggregate"] == "least_squares" and np.isfinite(ls["kl"]) and 0 <= ls["es_edit"] <= 1
    one = metrics.evaluate(editor, model, tok, examples, panel, aggregate="least_squares", progress=False)
    assert one["aggregate"] is None  # one edit at a time: nothing to aggregate
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        metrics.evaluate(editor, model, tok, examples, panel, n_edits=2, aggregate="mean", progress=False)


def test_ft_pools_the_group_whatever_the_aggregation(micro):
    model, tok, t = _task(micro)
    ft = FT.for_model(model, FTConfig(lr=1e-3, max_steps=5))
    examples, panel = t.test[:4], t.panel[:8]
    pooled = metrics.evaluate(ft, model, tok, examples, panel, n_edits=2, progress=False)
    asked = metrics.evaluate(ft, model, tok, examples, panel, n_edits=2, aggregate="sum", progress=False)
    assert pooled["aggregate"] is asked["aggregate"] is None and asked["n"] == 4
    assert asked["kl"] == pytest.approx(pooled["kl"], rel=1e-5) and asked["es_edit"] == pooled["es_edit"]


# -- (b) edit_step: training with k simultaneous edits -------------------------------------------------------
def _step_by_hand(editor, model, batch, cfg, grouped: bool) -> dict[str, torch.Tensor]:
    kind = editor.kind
    with torch.no_grad():
        pre = losses.forward(model, batch.loc)
        if grouped:  # each group of k edited on its own rows, its EditSet aggregated into one edit
            outer, loc = [], []
            for lo in range(0, len(batch.examples), cfg.batch_edits):
                rows = slice(lo, lo + cfg.batch_edits)
                group = editor.edit_many(model, {k: v[rows] for k, v in batch.edit_inner.items()})
                edit = group.aggregate(cfg.aggregate)
                outer.append(edit.forward(model, {k: v[rows] for k, v in batch.edit_outer.items()}))
                loc.append(edit.forward(model, {k: v[rows] for k, v in batch.loc.items()}))
            outer, loc = torch.cat(outer), torch.cat(loc)
        else:  # what edit_step computed before batch_edits existed
            outer, loc = editor.edit_many(model, batch.edit_inner).forward_many(model, [batch.edit_outer, batch.loc])
        labels = batch.edit_outer["labels"]
        l_edit = losses.nll_per_example(kind, outer, labels).mean()
        l_loc = losses.kl_loc(kind, pre, loc, batch.loc)
        es = losses.correct(kind, outer, labels).float().mean()
        loss = cfg.c_edit * l_edit + cfg.c_loc * l_loc + editor.aux_loss(model, batch, pre)
    return {"loss": loss, "l_edit": l_edit, "l_loc": l_loc, "es": es}


@pytest.mark.parametrize("model_type", ["bart", "gpt2"])
def test_edit_step_scores_each_member_under_its_groups_edit(micro, model_type):
    model, tok, t = _task(micro, model_type)
    editor = _mend(model, tok, t)
    batch = Collator.for_model(model, tok)(t.train[:4])
    one, two = TrainConfig(edits_per_step=4), TrainConfig(edits_per_step=4, batch_edits=2)
    with torch.no_grad():
        got_one, got_two = edit_step(editor, model, batch, one), edit_step(editor, model, batch, two)
        got_ls = edit_step(editor, model, batch, dataclasses.replace(two, aggregate="least_squares"))
    want_one = _step_by_hand(editor, model, batch, one, grouped=False)
    for k in want_one:  # batch_edits=1: exactly today's numbers
        assert torch.equal(got_one[k], want_one[k]), k
    want_two = _step_by_hand(editor, model, batch, two, grouped=True)
    for k in want_two:
        torch.testing.assert_close(got_two[k], want_two[k], rtol=1e-4, atol=1e-6)
    assert float(got_two["l_loc"]) != pytest.approx(float(got_one["l_loc"]), rel=1e-3)
    want_ls = _step_by_hand(editor, model, batch, dataclasses.replace(two, aggregate="least_squares"), True)
    torch.testing.assert_close(got_ls["loss"], want_ls["loss"], rtol=1e-4, atol=1e-6)


def test_grouped_training_reaches_the_editor_and_bad_groups_are_refused(micro):
    model, tok, t = _task(micro, "gpt2")
    editor = _mend(model, tok, t).train()
    batch = Collator.for_model(model, tok)(t.train[:4])
    for aggregate in ("sum", "least_squares"):
        editor.zero_grad()
        cfg = TrainConfig(edits_per_step=4, batch_edits=2, aggregate=aggregate)
        edit_step(editor, model, batch, cfg)["loss"].backward()
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in editor.parameters()), aggregate
    with pytest.raises(ValueError, match=r"batch_edits \(3\) must be a positive integer that divides edits_per_step"):
        edit_step(editor, model, batch, TrainConfig(edits_per_step=4, batch_edits=3))
    bad = TrainConfig(steps=1, edits_per_step=4, batch_edits=2, aggregate="mean")
    with pytest.raises(ValueError, match="unknown aggregate 'mean'"):
        train(editor, model, tok, t.train, t.val, bad, progress=False)
    with pytest.raises(ValueError, match="batch_edits"):
        train(editor, model, tok, t.train, t.val, TrainConfig(steps=1, edits_per_step=10, batch_edits=4),
              progress=False)


def test_train_with_batch_edits_runs_and_validates_a_partial_group(micro):
    model, tok, t = _task(micro, "gpt2")
    editor = _mend(model, tok, t)
    cfg = TrainConfig(steps=2, edits_per_step=4, batch_edits=2, val_every=2, val_size=6, lr=1e-3)
    result = train(editor, model, tok, t.train, t.val, cfg, progress=False)  # validation: batches of 4 and 2
    assert result.steps == 2 and np.isfinite(result.best_val)


# -- (c) the editor cache and editor_for -----------------------------------------------------------------------
def test_editor_for_merges_train_overrides(monkeypatch):
    seen = []
    monkeypatch.setattr(editors_module, "train_editor", lambda *a, train_config=None, **k: seen.append(train_config))
    editors_module.editor_for("some/model", "mend", 3, steps=7)
    editors_module.editor_for("some/model", "mend", 3, steps=7, train_overrides={"batch_edits": 5,
                                                                                 "edits_per_step": 10})
    assert seen[0] == TrainConfig.for_profile(seed=3, steps=7)
    assert seen[1] == dataclasses.replace(seen[0], batch_edits=5, edits_per_step=10)


def test_a_batch_trained_editor_has_its_own_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    cfg = TrainConfig.for_profile("ci")
    path = editors_module.editor_path("some/local-model", train_config=cfg, prof="ci")
    overrides = batch.train_overrides(5, "sum", "same")
    assert overrides == {"batch_edits": 5, "aggregate": "sum", "edits_per_step": 10}
    assert batch.train_overrides(25, "least_squares", "same")["edits_per_step"] == 25
    assert batch.train_overrides(3, None, "same") == {"batch_edits": 3, "aggregate": "sum", "edits_per_step": 12}
    assert batch.train_overrides(1, "least_squares", "same") is None  # k = 1: the editor trained on single edits
    assert batch.train_overrides(25, "sum", "1") is None
    other = editors_module.editor_path("some/local-model", train_config=dataclasses.replace(cfg, **overrides),
                                       prof="ci")
    assert other != path


# -- (d) the runner ---------------------------------------------------------------------------------------------
COLUMNS = ["model", "task", "editor", "alg", "aggregate", "train_k", "k", "seed", "world_seed", "es_edit",
           "es_rephrase", "drawdown", "edit_ms", "n", "coherence", "edit_size"]


def _fakes(micro, monkeypatch, test_size: int = 5):
    model, tok, t = _task(micro)
    calls = []
    makers = {"mend": lambda: _mend(model, tok, t), "enn": lambda: ENN.for_model(model).eval(),
              "ft": lambda: FT.for_model(model, FTConfig(lr=1e-3, max_steps=3))}

    def editor_for(model_name, alg, seed, task, *, steps=None, world_seed=None, train_overrides=None):
        calls.append((seed, alg, train_overrides))
        return makers[alg](), model, tok, {}

    data = types.SimpleNamespace(split=lambda name: t.split(name)[:test_size], panel=t.panel[:6])
    monkeypatch.setattr(batch, "editor_for", editor_for)
    monkeypatch.setattr(batch, "task_for", lambda *a, **k: data)
    return calls


def test_run_tabulates_every_k_seed_by_seed(micro, monkeypatch):
    calls = _fakes(micro, monkeypatch)
    seen = []
    items = ["mend:sum", "mend:least_squares", "enn:sum", "ft"]
    frame = batch.run([("micro-bart", "qa")], items, [0, 1], ks=(1, 2), n=4, progress=False, on_row=seen.append)
    assert list(frame.columns) == COLUMNS and len(frame) == len(seen) == 2 * 4 * 2
    assert frame["seed"].tolist() == [0] * 8 + [1] * 8
    assert frame["editor"].tolist()[:8] == [i for i in items for _ in (1, 2)] and frame["k"].tolist()[:4] == [1, 2] * 2
    assert frame["n"].tolist() == [4] * 16 and frame["world_seed"].tolist() == frame["seed"].tolist()
    assert frame.loc[frame["alg"] == "ft", "aggregate"].isna().all()
    ft = frame["alg"] == "ft"
    assert frame.loc[ft, "train_k"].isna().all() and (frame.loc[~ft, "train_k"] == 1).all()
    assert frame[["es_edit", "es_rephrase"]].stack().between(0, 1).all()
    # how alike each editor's edits are: once per editor (the same for every k), none for FT
    assert frame.loc[ft, ["coherence", "edit_size"]].isna().all().all()
    assert frame.loc[~ft, "coherence"].between(-1, 1).all() and (frame.loc[~ft, "edit_size"] > 0).all()
    assert frame[~ft].groupby(["seed", "editor"])["coherence"].nunique().eq(1).all()
    # one editor for every k
    assert [c[:2] for c in calls] == [(s, a) for s in (0, 1) for a in ("mend", "mend", "enn", "ft")]
    assert all(c[2] is None for c in calls)

    table = batch.summarize(frame)
    assert table["k"].tolist() == [1, 2] and (table["seeds"] == 2).all()
    assert {"mend:sum es", "mend:sum drawdown", "ft es", "ft drawdown", "paper mend es", "paper enn es"} <= set(table)
    assert table.loc[0, "paper mend es"] == 0.98 and np.isnan(table.loc[1, "paper mend es"])
    assert " ± " in table.loc[0, "mend:sum es"]
    fig = plots.batch(frame)
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"


def test_run_trains_one_editor_per_k_with_train_k_same(micro, monkeypatch):
    calls = _fakes(micro, monkeypatch)
    frame = batch.run([("micro-bart", "qa")], ["mend:least_squares", "ft"], [0], ks=(2, 1), train_k="same",
                      progress=False)
    assert calls == [(0, "mend", {"batch_edits": 2, "aggregate": "least_squares", "edits_per_step": 10}),
                     (0, "mend", None), (0, "ft", None)]
    assert frame["train_k"].tolist()[:2] == [2, 1] and frame["n"].tolist() == [4, 5, 4, 5]  # whole groups


def test_run_skips_a_k_larger_than_the_split_and_refuses_bad_input(micro, monkeypatch):
    _fakes(micro, monkeypatch, test_size=3)
    with pytest.warns(UserWarning, match="k = 4 is more than the 3 test requests"):
        frame = batch.run([("micro-bart", "qa")], ["mend:sum"], [0], ks=(1, 4), progress=False)
    assert frame["k"].tolist() == [1]
    with pytest.raises(ValueError, match="n \\(3\\) must be at least the largest k \\(4\\)"):
        batch.run([("micro-bart", "qa")], ["mend:sum"], [0], ks=(1, 4), n=3, progress=False)
    for item, match in (("ft:sum", "takes no aggregation"), ("mend:mean", "unknown aggregation"),
                        ("nope", "unknown alg")):
        with pytest.raises(ValueError, match=match):
            batch.run([("micro-bart", "qa")], [item], [0], ks=(1,), progress=False)
    with pytest.raises(ValueError, match="train_k"):
        batch.run([("micro-bart", "qa")], ["mend"], [0], ks=(1,), train_k="2", progress=False)
    assert batch.parse_item("mend") == ("mend", None)  # no aggregation: the pooled edit


# -- (e) the command -------------------------------------------------------------------------------------------
def test_batch_command_writes_table_provenance_and_figure(tmp_path, monkeypatch):
    calls = []

    def run(setups, items, seeds, *, ks, train_k, n, split, steps, world_seed, progress, on_row):
        calls.append({"setups": setups, "items": items, "ks": ks, "train_k": train_k, "n": n})
        rows = [{"model": m, "task": t, "editor": i, "alg": i.partition(":")[0],
                 "aggregate": i.partition(":")[2] or None, "train_k": 1, "k": k, "seed": s, "world_seed": s,
                 "es_edit": 1.0, "es_rephrase": 1.0 / k, "drawdown": 0.01 * k, "edit_ms": 1.0, "n": 10,
                 "coherence": 0.1, "edit_size": 1.0}
                for s in seeds for m, t in setups for i in items for k in ks]
        for r in rows:
            on_row(r)
        return pd.DataFrame(rows)

    monkeypatch.setattr(batch, "run", run)
    out = tmp_path / "batch.csv"
    assert main(["batch", "--seeds", "0,1", "--ks", "1,5", "--items", "mend:sum,ft", "--train-k", "same", "--n", "10",
                 "--out", str(out), "--figure", str(tmp_path / "b.png"), "--json"]) == 0
    assert calls == [{"setups": [("tiny-bart", "qa")], "items": ["mend:sum", "ft"], "ks": [1, 5], "train_k": "same",
                      "n": 10}]
    frame, prov = report.load(out)
    assert list(frame.columns) == COLUMNS and len(frame) == 2 * 2 * 2
    assert prov["complete"] and prov["command"].startswith("mendlab batch") and prov["setups"] == ["tiny-bart:qa"]
    assert prov["ks"] == "1,5" and prov["items"] == "mend:sum,ft" and prov["train_k"] == "same" and prov["n"] == 10
    assert (tmp_path / "b.png").exists()
    args = build_parser().parse_args(["batch"])
    assert args.items == ",".join(batch.EDITOR_SPECS) and args.ks == ",".join(map(str, batch.KS))
    assert args.train_k == "1" and args.seeds == "0,1,2"
    with pytest.raises(SystemExit):
        main(["batch", "--train-k", "5"])
