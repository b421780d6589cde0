"""The playground's logic (Workbench) and every widget callback, on a micro GPT-2 without a browser."""

import pytest
import torch

from mendlab.editors import MEND
from mendlab.editors.ft import FT, FTConfig
from mendlab.nets import NetConfig
from mendlab.playground import PlaygroundError, Workbench
from mendlab.widgets import Playground


@pytest.fixture
def setup(micro):
    model, tok, world = micro("gpt2")
    mend = MEND.for_model(model, NetConfig(rank=8))
    from mendlab.data import EditExample

    mend.edit(model, tok, [EditExample(*_request(world, i, "train")) for i in range(4)])  # primes the normaliser
    editors = {"FT": FT.for_model(model, FTConfig(lr=1e-2, max_steps=20)), "MEND": mend.eval()}
    return model, tok, world, editors


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, saved) -> bool:
    return all(torch.equal(p, saved[n]) for n, p in model.named_parameters())


def _request(world, i: int = 0, split: str = "test"):
    """A world question about subject i of ``split`` and a wrong object of its relation as the new answer."""
    s, r = world.subjects_in(split)[i], world.relations[i % len(world.relations)]
    return r.questions[0].format(s=s), next(o for o in r.objects if o != world.facts[s, r.name])


def test_edit_tabulates_prompt_rephrasings_and_unrelated_facts(setup):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    prompt, target = _request(world)
    result = s.edit(prompt, target, "FT")
    roles = [c.role for c in result.rows]
    assert roles[0] == "edit" and roles.count("rephrase") == 4 and roles.count("unrelated") == 4
    subject = world.subjects_in("test")[0]
    assert all(subject in c.prompt for c in result.rows if c.role == "rephrase")
    assert not any(subject in c.prompt for c in result.rows if c.role == "unrelated")
    assert result.success and result.rows[0].after == target and result.rows[0].p_after > result.rows[0].p_before
    assert result.seconds > 0 and s.n_applied == 1
    frame = result.frame()
    assert list(frame.columns)[:5] == ["role", "prompt", "expected", "before", "after"] and len(frame) == len(roles)


def test_typed_rephrasings_replace_the_suggestions(setup):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    assert s.suggest_rephrasings("What is the meaning of life?") == []
    result = s.preview("Who painted the sky?", "Nobody", "FT", rephrasings=["Who painted it?", " ", "Who did?"])
    assert [c.prompt for c in result.rows if c.role == "rephrase"] == ["Who painted it?", "Who did?"]
    assert s.n_applied == 0


def test_stacked_edits_undo_one_by_one_and_all_bit_for_bit(setup):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    original = _weights(model)
    s.edit(*_request(world, 0), "FT")
    after_one = _weights(model)
    second = s.edit(*_request(world, 1), "MEND")
    assert second.rows[0].before == s.history[-1].result.rows[0].before  # computed on the edited model
    assert not _same(model, after_one)
    undone = s.undo()
    assert undone.editor == "undo MEND" and _same(model, after_one)
    s.edit(*_request(world, 2), "FT")
    assert s.undo_all() == 2 and _same(model, original) and s.n_applied == 0
    assert s.undo() is None


def test_batch_is_one_edit_and_undoes_exactly(setup):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    original = _weights(model)
    with pytest.raises(PlaygroundError, match="no requests are queued"):
        s.apply_batch("MEND")
    for i in range(3):
        assert s.queue(*_request(world, i)) == i + 1
    result = s.apply_batch("MEND")
    assert len(result.requests) == 3 and [c.role for c in result.rows].count("edit") == 3
    assert s.pending == [] and s.n_applied == 1
    s.undo()
    assert _same(model, original)


def test_compare_runs_both_editors_and_keeps_neither(setup):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    original = _weights(model)
    a, b = s.compare(*_request(world), "MEND", "FT")
    assert (a.editor, b.editor) == ("MEND", "FT") and a.requests == b.requests
    assert [c.prompt for c in a.rows] == [c.prompt for c in b.rows]
    assert _same(model, original) and s.n_applied == 0


@pytest.mark.parametrize("prompt, target, message", [
    ("", "Paris", "type a prompt"),
    ("Where was Ann born?", "  ", "type the new answer"),
    ("Where was Ann born?", "<mask>", "cannot represent"),
    ("word " * 200, "Paris", "at most"),
])
def test_bad_requests_get_clear_messages(setup, prompt, target, message):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    with pytest.raises(PlaygroundError, match=message):
        s.edit(prompt, target, "FT")
    with pytest.raises(PlaygroundError, match="no editor 'ROME'"):
        s.edit("Where was Ann born?", "Paris", "ROME")


def test_an_editor_for_another_model_is_refused_when_used(setup, micro):
    model, tok, world, editors = setup
    other, _, _ = micro("gpt_neo")
    s = Workbench(model, tok, {**editors, "MEND (other model)": MEND.for_model(other, NetConfig(rank=8))},
                          world=world)
    assert list(s.unusable) == ["MEND (other model)"]
    with pytest.raises(PlaygroundError, match="was trained for model"):
        s.edit(*_request(world), "MEND (other model)")
    assert s.n_applied == 0


def test_a_failing_edit_leaves_the_model_untouched(setup, monkeypatch):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    original = _weights(model)
    monkeypatch.setattr(editors["FT"], "edit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        s.edit(*_request(world), "FT")
    assert _same(model, original) and s.n_applied == 0


def test_workbench_as_context_manager_restores_the_model(setup):
    model, tok, world, editors = setup
    original = _weights(model)
    with Workbench(model, tok, editors, world=world) as s:
        s.edit(*_request(world), "FT")
        s.queue(*_request(world, 1))
    assert _same(model, original) and s.pending == []


# -- the widget: every callback through the buttons, as a click in the browser fires it ------------------------
@pytest.fixture
def panel(setup):
    model, tok, world, editors = setup
    pg = Playground(model, tok, editors, world=world)
    yield pg, world, _weights(model)
    pg.workbench.close()


def test_widget_edit_undo_and_undo_all(panel):
    pg, world, original = panel
    prompt, target = _request(world)
    pg.prompt.value = prompt  # suggestions fill the rephrasings box
    assert len(pg.rephrasings.value.splitlines()) == 4
    pg.target.value, pg.editor.value = target, "FT"
    pg.buttons["edit"].click()
    assert "edited in" in pg.status.value and "mendlab-error" not in pg.status.value
    assert f'<td class="after">{target}</td>' in pg.table.value and "Applied edits (1)" in pg.history.value
    assert bytes(pg.chart.value).startswith(b"\x89PNG")
    pg.buttons["undo"].click()
    assert "undone" in pg.status.value and _same(pg.workbench.model, original)
    pg.buttons["undo"].click()
    assert "nothing to undo" in pg.status.value
    pg.buttons["edit"].click()
    pg.buttons["edit"].click()
    pg.buttons["undo-all"].click()
    assert "undone all 2 edits" in pg.status.value and _same(pg.workbench.model, original)


def test_widget_batch_mode_queues_then_applies(panel):
    pg, world, original = panel
    pg.mode.value, pg.editor.value = "batch", "MEND"
    for i in range(2):
        pg.prompt.value, pg.target.value = _request(world, i)
        pg.buttons["edit"].click()
    assert "queued: 2 requests" in pg.status.value and pg.workbench.n_applied == 0
    pg.buttons["apply-batch"].click()
    assert "2 requests as one edit" in pg.status.value and pg.workbench.n_applied == 1
    pg.buttons["undo-all"].click()
    assert _same(pg.workbench.model, original)


def test_widget_compare_and_errors_in_the_status_line(panel):
    pg, world, original = panel
    pg.prompt.value, pg.target.value = _request(world)
    pg.editor.value, pg.editor_b.value = "MEND", "FT"
    pg.buttons["compare"].click()
    assert "compared" in pg.status.value and pg.table.value.count("<table>") == 2
    assert _same(pg.workbench.model, original)
    pg.target.value = ""
    pg.buttons["edit"].click()
    assert 'class="mendlab-error"' in pg.status.value and "type the new answer" in pg.status.value
    pg.mode.value = "batch"
    pg.buttons["apply-batch"].click()
    assert "no requests are queued" in pg.status.value


def test_an_interrupted_edit_is_taken_back(setup, monkeypatch):
    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    original, looks = _weights(model), []

    def look(checks, edit=None):  # the table after the edit is interrupted (a kernel interrupt in class)
        looks.append(1)
        if len(looks) == 2:
            raise KeyboardInterrupt
        return ["x"] * len(checks), [0.0] * len(checks)

    monkeypatch.setattr(s, "_look", look)
    with pytest.raises(KeyboardInterrupt):
        s.edit(*_request(world), "FT")
    assert _same(model, original) and s.n_applied == 0


def test_a_batch_of_mend_edits_is_their_sum_and_watches_no_requested_subject(setup):
    from mendlab.data import EditExample

    model, tok, world, editors = setup
    s = Workbench(model, tok, editors, world=world)
    requests = [_request(world, i, "train") for i in range(2)]
    for r in requests:
        s.queue(*r)
    s.apply_batch("MEND")
    applied = {n: p.detach().clone() for n, p in model.named_parameters()}
    s.undo()
    expected = editors["MEND"].edit_many(model, tok, [EditExample(p, t) for p, t in requests]).detach()
    with expected.aggregate("sum").applied(model):
        assert all(torch.allclose(p, applied[n], atol=1e-6) for n, p in model.named_parameters())
    subjects = [world.subjects_in("train")[i] for i in range(2)]
    rows = s.preview(*requests[0], "FT").rows
    assert not any(subj in c.prompt for c in rows if c.role == "unrelated" for subj in subjects[:1])
    checks = s._checks(requests, None)
    assert not any(subj in p for role, p, _ in checks if role == "unrelated" for subj in subjects)


def test_widget_clears_suggestions_for_a_prompt_outside_the_world(panel):
    pg, world, _ = panel
    pg.prompt.value = _request(world)[0]
    assert pg.rephrasings.value
    pg.prompt.value = "Who painted the sky?"
    assert pg.rephrasings.value == ""
    pg.rephrasings.value = "Who did paint it?"  # typed by the user: kept
    pg.prompt.value = "Who painted the sea?"
    assert pg.rephrasings.value == "Who did paint it?"
