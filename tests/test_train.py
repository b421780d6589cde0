"""Algorithm 1: training runs and saves the best editor, resumes after an interruption, stops on NaN."""

import json

import pytest
import torch

from mendlab import tasks
from mendlab.editors import MEND
from mendlab.nets import NetConfig
from mendlab.train import NonFiniteTrainingError, TrainConfig, train

CFG = TrainConfig(steps=12, edits_per_step=4, val_every=4, val_size=8, patience=100, lr=1e-3)


def _setup(micro):
    model, tok, world = micro("gpt2")
    t = tasks.from_world(world, "decoder")
    torch.manual_seed(0)
    return MEND.for_model(model, NetConfig(rank=16)), model, tok, t


def test_train_saves_best_and_history(micro, tmp_path):
    editor, model, tok, t = _setup(micro)
    result = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path, progress=False)
    assert result.steps == 12 and result.stopped == "max steps"
    assert (tmp_path / "best" / "editor.safetensors").exists()
    hist = json.loads((tmp_path / "history.json").read_text())
    vals = [r["val_loss"] for r in hist["history"] if "val_loss" in r]
    assert len(vals) == 3 and result.best_val == pytest.approx(min(vals), abs=1e-5)
    assert not any(p.requires_grad for p in model.parameters())
    assert result.frame().shape[0] == 12


class Interrupted(Exception):
    pass


def test_resume_after_interruption_reaches_the_same_best(micro, tmp_path):
    editor, model, tok, t = _setup(micro)
    full = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "a", progress=False)

    def crash(step, record):
        if step == 6:
            raise Interrupted

    editor, *_ = _setup(micro)
    with pytest.raises(Interrupted):
        train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "b", progress=False, callback=crash)
    editor, *_ = _setup(micro)  # a fresh process would start from a fresh editor
    resumed = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "b", progress=False)
    assert resumed.steps == 12
    assert resumed.best_val == pytest.approx(full.best_val, rel=1e-4)
    assert len(resumed.history) == len(full.history)



def test_resume_false_starts_afresh_over_a_finished_run(micro, tmp_path):
    """``train_editor(force=True)`` passes ``resume=False``: a finished run's checkpoint must not be resumed."""
    editor, model, tok, t = _setup(micro)
    first = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path, progress=False)
    editor, *_ = _setup(micro)
    again = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path, progress=False)
    assert again.history == first.history  # resumed at step 12: nothing new was trained
    editor, *_ = _setup(micro)
    calls = []
    fresh = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path, progress=False, resume=False,
                  callback=lambda step, record: calls.append(step))
    assert calls == list(range(1, 13)) and [r["step"] for r in fresh.history] == calls
    assert fresh.best_val == pytest.approx(first.best_val, rel=1e-4)


def test_persistent_non_finite_steps_stop_training(micro):
    editor, model, tok, t = _setup(micro)
    with torch.no_grad():
        editor.net.edit_lrs.fill_(float("nan"))
    cfg = TrainConfig(steps=10, edits_per_step=2, val_every=100, val_size=2, max_nonfinite=3)
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive"):
        train(editor, model, tok, t.train, t.val, cfg, progress=False)


def test_resample_target_draws_wrong_answers_of_the_same_relation():
    import random

    from mendlab.data import EditExample
    from mendlab.sampling import target_pool, vary

    def qa(s, r, true, target):
        return EditExample(f"{r} of {s}?", target, original=true, subject=s, relation=r,
                           locality=("q?", "a"))

    pool = [qa("A", "colour", "red", "blue"), qa("B", "colour", "green", "red"), qa("C", "pet", "cat", "dog")]
    targets = target_pool(pool)
    assert targets == {"colour": ["blue", "green", "red"], "pet": ["cat", "dog"]}
    cfg = TrainConfig(resample_target=True, resample_locality=False, mix_phrasings=False)
    rng = random.Random(0)
    drawn = {vary(pool[0], pool, rng, cfg, targets).target for _ in range(50)}
    assert drawn == {"blue", "green"}  # never the true answer "red", never another relation's object
    assert vary(pool[0], pool, rng, TrainConfig(resample_locality=False), targets).target == "blue"


def test_same_relation_locality_draws_other_subjects_of_the_edit_relation():
    import random

    from mendlab.data import EditExample
    from mendlab.sampling import vary

    def qa(s, r, true):
        return EditExample(f"{r} of {s}?", "x", original=true, subject=s, relation=r, locality=("q?", "a"))

    pool = [qa(s, r, f"{r}-{s}") for s in "ABCDEF" for r in ("colour", "pet", "town")]
    by_relation = {}
    for e in pool:
        by_relation.setdefault(e.relation, []).append(e)
    rng = random.Random(0)

    def relations(p):
        cfg = TrainConfig(locality_same_relation=p, mix_phrasings=False)
        locs = [vary(pool[0], pool, rng, cfg, None, by_relation).locality for _ in range(300)]
        assert all(not q.endswith("of A?") for q, _ in locs)  # never the edited subject
        assert all(a == f"{q.split(' of ')[0]}-{q[-2]}" for q, a in locs)  # the other request's true answer
        return [q.split(" of ")[0] for q, _ in locs]

    assert set(relations(1.0)) == {"colour"}  # pool[0] is a colour request
    assert 0.2 < relations(0.0).count("colour") / 300 < 0.5  # uniform: about a third
    assert 0.6 < relations(0.5).count("colour") / 300 < 0.8  # half forced, then a third of the rest
    with pytest.raises(ValueError, match="probability"):
        train(None, torch.nn.Linear(1, 1), None, pool, pool, TrainConfig(locality_same_relation=1.5))


def test_cosine_schedule_decays_both_learning_rates(micro):
    import math
    from dataclasses import replace

    editor, model, tok, t = _setup(micro)
    result = train(editor, model, tok, t.train, t.val, replace(CFG, schedule="cosine"), progress=False)
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(CFG.lr)
    assert lrs[-1] == pytest.approx(CFG.lr * 0.5 * (1 + math.cos(math.pi * 11 / 12)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    with pytest.raises(ValueError, match="schedule"):
        train(editor, model, tok, t.train, t.val, replace(CFG, schedule="linear"), progress=False)


def test_later_options_enter_the_cache_key_only_when_set(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    from mendlab import experiments
    from mendlab.config import config_hash

    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    cfg = TrainConfig.for_profile("ci")
    path = experiments.editor_path("some/local-model", train_config=cfg, prof="ci")
    later = ("locality_same_relation", "batch_edits", "aggregate")
    old = {k: v for k, v in asdict(cfg).items() if k not in later}  # the key before these options
    key = {"model": "some/local-model", "alg": "mend", "variant": "mend", "task": None, "train": old,
           **experiments._task_key(None), "net": asdict(experiments.NetConfig())}
    assert path.name == f"local-model-mend-mend-{config_hash(key)}"
    others = [experiments.editor_path("some/local-model", train_config=replace(cfg, **change), prof="ci")
              for change in ({"locality_same_relation": 0.5}, {"batch_edits": 5}, {"aggregate": "least_squares"})]
    assert len({path, *others}) == 4


def test_only_generation_editors_key_on_the_target_sampler():
    from mendlab import experiments

    # None is a model's default task (QA or claims), never generation: its editors keep their cache folders
    assert experiments._task_key(None) == experiments._task_key("qa") == experiments._task_key("claim")
    assert experiments._task_key("gen")["gen_targets"] != experiments._task_key("qa")["gen_targets"]


def test_a_skipped_step_leaves_the_normaliser_and_weights_untouched(micro, monkeypatch):
    """The forward pass folds the batch into the normaliser before the loss is known to be NaN: undone."""
    import mendlab.train as train_module

    editor, model, tok, t = _setup(micro)
    real, calls = train_module.edit_step, []

    def poisoned(editor, *args, **kwargs):  # training steps after the first come out NaN; validation is real
        out = real(editor, *args, **kwargs)
        calls.append(editor.training)
        if editor.training and sum(calls) > 1:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(train_module, "edit_step", poisoned)
    states = {}
    keep = lambda step, record: states.update({step: {k: v.clone() for k, v in editor.state_dict().items()}})  # noqa: E731
    cfg = TrainConfig(steps=3, edits_per_step=2, val_every=100, val_size=2, max_nonfinite=10)
    result = train(editor, model, tok, t.train, t.val, cfg, progress=False, callback=keep)
    assert result.skipped == 2
    assert any(k.endswith("count") for k in states[1])  # the normaliser's buffers are among what is compared
    assert all(torch.equal(states[1][k], states[3][k]) for k in states[1]), "a skipped step changed the editor"


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_resumes(micro, tmp_path):
    import os
    import signal
    import threading

    from mendlab.interrupts import TrainingInterrupted

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    editor, model, tok, t = _setup(micro)
    full = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "a", progress=False)
    editor, *_ = _setup(micro)
    kill = lambda step, record: os.kill(os.getpid(), signal.SIGTERM) if step == 5 else None  # noqa: E731
    with pytest.raises(TrainingInterrupted, match="SIGTERM.*step 5"):
        train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "b", progress=False, callback=kill)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back
    editor, *_ = _setup(micro)
    calls = []
    resumed = train(editor, model, tok, t.train, t.val, CFG, out=tmp_path / "b", progress=False,
                    callback=lambda step, record: calls.append(step))
    assert calls == list(range(6, 13))  # nothing lost: step 5 was finished and saved
    assert resumed.best_val == pytest.approx(full.best_val, rel=1e-4)
    assert [r["step"] for r in resumed.history] == list(range(1, 13))


def test_a_diverging_run_stops_and_leaves_its_last_good_checkpoint_and_best(micro, monkeypatch, tmp_path):
    import mendlab.train as train_module
    from mendlab import checkpoint

    editor, model, tok, t = _setup(micro)
    real, steps = train_module.edit_step, []

    def diverging(editor, *args, **kwargs):  # training steps after the third come out NaN
        out = real(editor, *args, **kwargs)
        steps.append(editor.training)
        return {**out, "loss": out["loss"] * float("nan")} if editor.training and sum(steps) > 3 else out

    monkeypatch.setattr(train_module, "edit_step", diverging)
    cfg = TrainConfig(steps=12, edits_per_step=2, val_every=2, val_size=2, max_nonfinite=3, patience=100)
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive"):
        train(editor, model, tok, t.train, t.val, cfg, out=tmp_path, progress=False)
    best = MEND.from_pretrained(tmp_path / "best")  # refuses non-finite weights, so this proves them finite
    fresh, *_ = _setup(micro)
    _, meta = checkpoint.load(tmp_path / "checkpoint", fresh, train_module.optimizer(fresh, cfg))
    assert meta["state"]["step"] == 4 and meta["skipped"] == 1  # the last validation before the divergence
    assert all(torch.isfinite(v).all() for v in fresh.state_dict().values() if v.is_floating_point())
    assert best.config == editor.config
