import pytest

from mendlab import metrics, tasks
from mendlab.editors.ft import FT, FTConfig
from mendlab.families import get_family


def test_panel_changes_says_which_unrelated_facts_an_edit_breaks(micro):
    model, tok, world = micro("gpt2")
    task = tasks.from_world(world, get_family(model).kind, panel_size=12)
    requests = task.test[:3]

    still = metrics.panel_changes(FT.for_model(model, FTConfig(max_steps=0)), model, tok, requests, task.panel,
                                  progress=False)
    assert len(still) == 3 * 12 and set(still["request"]) == {0, 1, 2}
    assert (still["correct_pre"] == still["correct_post"]).all()  # no step taken: nothing changes
    assert list(still["panel_prompt"][:12]) == [p for p, _ in task.panel]
    assert set(still["relation"]) <= {e.relation for e in requests}

    hard = FT.for_model(model, FTConfig(lr=1e-1, max_steps=20))  # a big step: some panel answers change
    rows = metrics.panel_changes(hard, model, tok, requests, task.panel, progress=False)
    result = metrics.evaluate(hard, model, tok, requests, task.panel, progress=False)
    lost = (rows["correct_pre"].astype(float) - rows["correct_post"].astype(float)).mean()
    assert lost == pytest.approx(result["acc_dd"], abs=1e-6)  # the rows are what acc_dd averages
    assert (rows["correct_pre"] != rows["correct_post"]).any()


def test_panel_changes_rejects_a_generation_panel(micro):
    model, tok, world = micro("gpt2")
    task = tasks.from_world(world, "decoder", "gen", panel_size=4)
    with pytest.raises(ValueError, match="generation"):
        metrics.panel_changes(FT.for_model(model), model, tok, task.test[:1], task.panel, progress=False)


def test_margin_moves_signs_the_logit_towards_the_target(micro):
    model, tok, world = micro("bert")
    task = tasks.from_world(world, "classifier")
    frame = metrics.margin_moves(FT.for_model(model, FTConfig(lr=1e-2, max_steps=5)), model, tok, task.test[:4])
    assert len(frame) == 4 and (frame["moved"] == frame["margin_post"] - frame["margin_pre"]).all()
    # fine-tuning on the target label moves margins towards it (FT stops at once where x_e is already right)
    assert (frame["moved"] >= 0).all() and (frame["moved"] > 0).any()
    still = metrics.margin_moves(FT.for_model(model, FTConfig(max_steps=0)), model, tok, task.test[:4])
    assert (still["moved"] == 0).all()
    with pytest.raises(ValueError, match="classifier"):
        metrics.margin_moves(FT.for_model(model), *micro("gpt2")[:2], task.test[:1])
