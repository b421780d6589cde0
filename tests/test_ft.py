"""FT and FT+KL: the RMSprop step on the residual, edits that work, an untouched model, early stopping, the
locality term, the lr sweep and config validation."""

import pandas as pd
import pytest
import torch

from mendlab import losses, rank1, tasks
from mendlab.data import Collator
from mendlab.edit import Edit, Factors
from mendlab.editors.ft import FT, FTKL, FTConfig
from mendlab.experiments.editors import best_lr, sweep_lr
from mendlab.families import get_family


def _enc(model, tok, ex):
    return Collator.for_model(model, tok).encode([(ex.prompt, ex.target)])


def _wrong(model, tok, examples):
    """The first example whose target the model does not already predict, with its encoding."""
    kind = get_family(model).kind
    for ex in examples:
        enc = _enc(model, tok, ex)
        with torch.no_grad():
            if not losses.correct(kind, losses.forward(model, enc), enc["labels"]).all():
                return ex, enc
    raise AssertionError("every example is already predicted")


@pytest.mark.parametrize("grad_clip", [100.0, 1e-4])
def test_one_step_is_rmsprop_on_the_weight_gradient(micro, grad_clip):
    """One step from R = 0 is RMSprop's first step on ∇W L_e (autograd), after global-norm clipping:
    R = −lr·ĝ / (sqrt((1 − 0.99)·ĝ²) + 1e-8), ĝ = g·min(1, clip / (‖g‖ + 1e-6))."""
    model, tok, world = micro("gpt2")
    ex, enc = _wrong(model, tok, tasks.from_world(world, "decoder").test)
    lr = 1e-3
    editor = FT.for_model(model, FTConfig(lr=lr, max_steps=1, grad_clip=grad_clip))
    edit = editor.edit(model, tok, ex)
    assert {k: edit.meta[k] for k in ("editor", "n_requests", "steps")} == {"editor": "ft", "n_requests": 1, "steps": 1}
    g = rank1.autograd_gradients(model, enc, editor.names)
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g.values()))
    scale = min(1.0, grad_clip / (float(norm) + 1e-6))
    for name in editor.names:
        gc = g[name] * scale
        expected = -lr * gc / (torch.sqrt((1 - 0.99) * gc * gc) + 1e-8)
        torch.testing.assert_close(edit.dense[name], expected, rtol=1e-4, atol=lr * 1e-3)
        assert edit.dense[name].shape == dict(model.named_parameters())[name].shape


# a low-rank residual U·V starts with |U| ~ init_std, so V needs a larger lr to move W as far
@pytest.mark.parametrize(("model_type", "rank", "lr"),
                         [("gpt2", None, 1e-3), ("bart", None, 1e-3), ("bert", None, 1e-3), ("bart", 4, 1e-2)])
def test_edit_moves_the_prediction_to_the_target(micro, model_type, rank, lr):
    model, tok, world = micro(model_type)
    kind = get_family(model).kind
    ex, enc = _wrong(model, tok, tasks.from_world(world, kind).test)
    with torch.no_grad():
        before = float(losses.nll(kind, losses.forward(model, enc), enc["labels"]))
    edit = FT.for_model(model, FTConfig(lr=lr, max_steps=20, rank=rank)).edit(model, tok, ex)
    assert isinstance(edit, Edit) and edit.meta["steps"] >= 1
    with torch.no_grad(), edit.applied(model):
        logits = losses.forward(model, enc)
        after = float(losses.nll(kind, logits, enc["labels"]))
        ok = bool(losses.correct(kind, logits, enc["labels"]).all())
    assert ok or after < 0.5 * before, (before, after)
    assert ok == edit.meta["converged"]


@pytest.mark.parametrize("rank", [None, 4])
def test_model_weights_are_bit_identical_after_edit(micro, rank):
    model, tok, world = micro("gpt2")
    ex, _ = _wrong(model, tok, tasks.from_world(world, "decoder").test)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.train()
    try:
        edit = FT.for_model(model, FTConfig(lr=1e-3, max_steps=3, rank=rank)).edit(model, tok, ex)
        assert model.training and all(m.training for m in model.modules())  # modes restored
    finally:
        model.eval()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.requires_grad == flags[n], n
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n  # .grad never written
    if rank is not None:  # low-rank: exact rank-r factors in the weight's layout
        for name in edit.names:
            f = edit.factors[name]
            assert isinstance(f, Factors) and f.u.shape[0] == rank
            assert edit.delta(name).shape == before[name].shape and float(edit.delta(name).norm()) > 0


def test_already_correct_request_takes_no_step(micro):
    # decoder: relabel the answer positions with the model's own argmax, passed as a prepared tensor dict
    model, tok, world = micro("gpt2")
    ex = tasks.from_world(world, "decoder").test[0]
    enc = _enc(model, tok, ex)
    with torch.no_grad():
        pred = losses.forward(model, enc).argmax(-1)
    labels = enc["labels"].clone()
    mask = labels[:, 1:] != -100
    labels[:, 1:][mask] = pred[:, :-1][mask]
    enc["labels"] = labels
    edit = FT.for_model(model).edit(model, enc)
    assert edit.meta["steps"] == 0 and edit.meta["converged"]
    assert all(torch.count_nonzero(d) == 0 for d in edit.dense.values())
    # classifier: the label the model already gives
    model, tok, world = micro("bert")
    ex = tasks.from_world(world, "classifier").test[0]
    enc = _enc(model, tok, ex)
    with torch.no_grad():
        enc["labels"] = (losses.forward(model, enc).reshape(-1) > 0).float()
    edit = FT.for_model(model).edit(model, enc)
    assert edit.meta["steps"] == 0 and all(torch.count_nonzero(d) == 0 for d in edit.dense.values())


def test_ftkl_draws_locality_and_its_kl_holds_the_edit_back(micro, monkeypatch):
    """Every step draws one pool pair and adds its KL; with c_edit tiny the KL dominates after the first step
    (at R = 0 its gradient is zero, and RMSprop's first step ignores the loss scale), so the residual stays far
    smaller than FT's after the same number of steps and the pool's predictions move less."""
    model, tok, world = micro("gpt2")
    ex, _ = _wrong(model, tok, tasks.from_world(world, "decoder").test)
    pool = world.qa_pairs(split="train")[:5]
    steps, lr = 6, 1e-4  # small enough that neither editor converges early
    kl_calls, drawn = [], []
    kl = losses.kl_loc
    monkeypatch.setattr(losses, "kl_loc", lambda *a: kl_calls.append(1) or kl(*a))
    editor = FTKL.for_model(model, FTConfig(lr=lr, max_steps=steps, c_edit=1e-6), tokenizer=tok, locality=pool)
    encode = editor.collator.encode
    editor.collator.encode = lambda pairs, **kw: drawn.extend(pairs) or encode(pairs, **kw)
    kl_edit = editor.edit(model, tok, ex)
    assert editor.alg == kl_edit.meta["editor"] == "ft_kl"
    assert len(kl_calls) == len(drawn) == kl_edit.meta["steps"] == steps
    assert all(p in pool for p in drawn) and len(set(drawn)) > 1
    monkeypatch.undo()
    ft_edit = FT.for_model(model, FTConfig(lr=lr, max_steps=steps)).edit(model, tok, ex)
    assert ft_edit.meta["steps"] == steps
    kl_norm = sum(float(d.norm() ** 2) for d in kl_edit.dense.values())
    ft_norm = sum(float(d.norm() ** 2) for d in ft_edit.dense.values())
    assert kl_norm < 0.5 * ft_norm
    enc = Collator.for_model(model, tok).encode(pool)
    with torch.no_grad():
        pre = losses.forward(model, enc)
        drift = [float(losses.kl_loc("decoder", pre, e.forward(model, enc), enc)) for e in (kl_edit, ft_edit)]
    assert drift[0] < drift[1]
    # FT+KL is its own class: FT.for_model refuses a locality=True config; without a pool or tokenizer FTKL refuses
    assert isinstance(FTKL.for_model(model, FTConfig(), tokenizer=tok, locality=pool), FTKL)
    with pytest.raises(ValueError, match="FTKL.for_model"):
        FT.for_model(model, FTConfig(locality=True), tokenizer=tok, locality=pool)
    with pytest.raises(ValueError, match="locality"):
        FTKL.for_model(model, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        FTKL.for_model(model, locality=pool)
    with pytest.raises(ValueError, match="plain FT"):
        FT.for_model(model, tokenizer=tok, locality=pool)


def test_config_validation_and_separate(micro):
    for bad in (dict(lr=0), dict(lr=-1e-4), dict(max_steps=-1), dict(max_steps=1.5), dict(grad_clip=0),
                dict(c_edit=0), dict(rank=0), dict(rank=True), dict(init_std=0), dict(time_limit=0)):
        with pytest.raises(ValueError, match="invalid FTConfig"):
            FTConfig(**bad)
    model, tok, world = micro("gpt2")
    ex = tasks.from_world(world, "decoder").test[0]
    with pytest.raises(NotImplementedError, match="one request per call"):
        FT.for_model(model).edit_many(model, tok, [ex, ex])
    # the time limit is checked before each step
    edit = FT.for_model(model, FTConfig(time_limit=1e-9)).edit(model, tok, [ex, ex])
    assert edit.meta["steps"] == 0 and edit.meta["n_requests"] == 2


def test_sweep_lr_and_best_lr(micro):
    model, tok, world = micro("gpt2")
    t = tasks.from_world(world, "decoder", panel_size=8)
    frame = sweep_lr(model, tok, t.val[:2], t.panel, lrs=(1e-4, 1e-3), config=FTConfig(max_steps=3))
    assert list(frame["lr"]) == [1e-4, 1e-3] and set(frame["editor"]) == {"ft"}
    assert {"es_edit", "acc_dd", "ppl_dd", "kl", "n"} <= set(frame.columns)
    assert best_lr(frame) in (1e-4, 1e-3)
    # the rule: es_rephrase − acc_dd, or − ppl_dd when accuracy is not measured; ties to the smaller lr
    f = pd.DataFrame({"lr": [1e-2, 1e-3, 1e-4], "es_rephrase": [1.0, 0.9, 0.9], "acc_dd": [0.5, 0.1, 0.1],
                      "ppl_dd": [0.0, 0.0, 0.0]})
    assert best_lr(f) == 1e-4
    g = pd.DataFrame({"lr": [1e-3, 1e-2], "es_rephrase": [0.5, 1.0], "acc_dd": [None, None], "ppl_dd": [0.1, 0.2]})
    assert best_lr(g) == 1e-2
    # es_edit is ~1 for FT at every lr: ranking by it would only reward the smallest drawdown
    h = pd.DataFrame({"lr": [1e-5, 1e-4], "es_edit": [1.0, 1.0], "es_rephrase": [0.2, 0.6], "acc_dd": [0.0, 0.1],
                      "ppl_dd": [0.0, 0.0]})
    assert best_lr(h) == 1e-4 and best_lr(h, key="es_edit") == 1e-5
