"""The ENN baseline: the inner SGD step at θ, second-order meta-gradients, the distillation term, batching,
save/load, and the caller's model left untouched."""

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mendlab import losses, rank1, tasks
from mendlab.data import Collator
from mendlab.edit import Edit, EditSet
from mendlab.editors import MismatchedModelError
from mendlab.editors.enn import ENN, ENNConfig
from mendlab.families import get_family
from mendlab.train import TrainConfig, train


def _setup(micro, model_type="gpt2", n=3):
    model, tok, world = micro(model_type)
    kind = get_family(model).kind
    t = tasks.from_world(world, kind)
    return model, tok, t, Collator.for_model(model, tok)(t.test[:n])


def _perturb(editor, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in editor.theta.values():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, saved):
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp(min=1e-30))


def _grads_at(model, theta: dict, enc, names):
    """∇W of the mean NLL at weights θ, by plain autograd on a deep copy of the model (the test's reference)."""
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for n, t in theta.items():
            params[n].copy_(t)
    return rank1.autograd_gradients(twin, enc, names)


@pytest.mark.parametrize("model_type", ["gpt2", "bart", "bert"])
def test_core_step_is_sgd_at_theta(micro, model_type):
    model, tok, t, batch = _setup(micro, model_type)
    enc = batch.edit_inner
    editor = ENN.for_model(model).eval()
    lrs = dict(zip(editor.names, editor.edit_lrs.tolist(), strict=True))
    # θ = W: the edit is one SGD step on the model's own weights
    edit = editor.edit(model, batch)
    grads = rank1.autograd_gradients(model, enc, editor.names)
    for n in editor.names:
        assert _rel(edit.delta(n), -lrs[n] * grads[n]) <= 1e-5, n
    # perturbed θ: ΔW (for the caller's W) = (θ − W) − lr·∇W|θ, the gradient taken at θ through functional_call
    _perturb(editor)
    weights = dict(model.named_parameters())
    theta = {n: editor.theta[n.replace(".", "__")].detach() for n in editor.base_names}
    at = _grads_at(model, theta, enc, editor.names)
    edit = editor.edit(model, batch)
    for n in editor.names:
        expected = (theta[n] - weights[n]) - lrs[n] * at[n]
        assert _rel(edit.delta(n), expected) <= 1e-5, n
        assert _rel(at[n], grads[n]) > 1e-3  # the perturbation matters: a gradient at W would fail above


def test_meta_gradient_is_second_order(micro):
    """In training mode the outer gradient w.r.t. θ flows through ∇W; it equals a direct double-backward
    implementation, and first_order=True equals the same with ∇W detached."""
    model, tok, t, batch = _setup(micro, "gpt2", n=1)
    kind = "decoder"

    def ours(first_order):
        torch.manual_seed(0)
        editor = ENN.for_model(model, ENNConfig(first_order=first_order)).train()
        _perturb(editor)
        edit = editor.edit(model, batch)
        loss = losses.nll(kind, edit.forward(model, batch.edit_outer), batch.edit_outer["labels"])
        thetas = [editor.theta[n.replace(".", "__")] for n in editor.names]
        return torch.autograd.grad(loss, thetas), editor

    def direct(editor, first_order):
        theta = {n: editor.theta[n.replace(".", "__")].detach().clone().requires_grad_(True) for n in editor.names}
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no double backward
            inner = losses.nll(kind, losses.forward(model, batch.edit_inner, theta), batch.edit_inner["labels"])
            g = torch.autograd.grad(inner, list(theta.values()), create_graph=not first_order)
        lrs = editor.edit_lrs.detach()
        new = {n: w - lrs[i] * (g[i].detach() if first_order else g[i]) for i, (n, w) in enumerate(theta.items())}
        outer = losses.nll(kind, losses.forward(model, batch.edit_outer, new), batch.edit_outer["labels"])
        return torch.autograd.grad(outer, list(theta.values()))

    second, ed2 = ours(False)
    first, ed1 = ours(True)
    for a, b in zip(second, direct(ed2, False), strict=True):
        assert _rel(a, b) <= 1e-4
    for a, b in zip(first, direct(ed1, True), strict=True):
        assert _rel(a, b) <= 1e-4
    assert max(_rel(a, b) for a, b in zip(second, first, strict=True)) > 1e-3


def test_edit_lowers_the_target_nll(micro):
    model, tok, t, _ = _setup(micro, "gpt2")
    editor = ENN.for_model(model, ENNConfig(edit_lr=1.0)).eval()
    for ex in t.test[:3]:
        enc = Collator.for_model(model, tok).encode([(ex.prompt, ex.target)])
        with torch.no_grad():
            before = float(losses.nll("decoder", losses.forward(model, enc), enc["labels"]))
            after = float(losses.nll("decoder", editor.edit(model, tok, ex).forward(model, enc), enc["labels"]))
        assert after < before - 0.1


def test_caller_model_untouched_by_edit_and_training(micro):
    model, tok, t, batch = _setup(micro, "gpt2")
    saved = _snapshot(model)
    editor = ENN.for_model(model).train()
    start = {k: v.detach().clone() for k, v in editor.state_dict().items()}
    edits = editor.edit_many(model, batch.edit_inner)
    edits.forward(model, batch.edit_outer).sum().backward()
    _assert_unchanged(model, saved)
    cfg = TrainConfig(steps=3, val_every=3, val_size=4, edits_per_step=2, lr=1e-3, lr_lr=1e-3)
    result = train(editor, model, tok, t.train, t.val, cfg, progress=False)
    _assert_unchanged(model, saved)
    assert result.steps == 3 and not editor.training
    changed = [k for k, v in editor.state_dict().items() if not torch.equal(v, start[k])]
    assert "edit_lrs" in changed and any(k.startswith("theta.") for k in changed)


def test_aux_loss_is_the_distillation_kl(micro):
    model, tok, t, batch = _setup(micro, "gpt2")
    editor = ENN.for_model(model, ENNConfig(c_base=10.0))
    with torch.no_grad():
        pre = losses.forward(model, batch.loc)
    assert float(editor.aux_loss(model, batch, pre).detach()) == pytest.approx(0.0, abs=1e-7)
    _perturb(editor)
    aux = editor.aux_loss(model, batch, pre)
    assert float(aux.detach()) > 0
    kl = losses.kl_loc("decoder", pre, losses.forward(model, batch.loc, editor.weights(model)), batch.loc)
    assert float(aux.detach()) == pytest.approx(10.0 * float(kl.detach()), rel=1e-5)
    aux.backward()
    assert all(p.grad is not None for p in editor.theta.values())
    frozen = ENN.for_model(model, ENNConfig(train_base=False))
    assert float(frozen.aux_loss(model, batch, pre)) == 0.0
    assert len(frozen.theta) == 0 and len(frozen.param_groups(1e-5, 1e-3)) == 1


def test_config_validation_and_base_weights(micro):
    with pytest.raises(ValueError, match="edit_lr"):
        ENNConfig(edit_lr=0)
    with pytest.raises(ValueError, match="c_base"):
        ENNConfig(c_base=-1)
    with pytest.raises(ValueError, match="duplicates"):
        ENNConfig(base_weights=["a", "a"])
    with pytest.raises(ValueError, match="train_base"):
        ENNConfig(base_weights=["a"], train_base=False)
    model, tok, t, batch = _setup(micro, "gpt2")
    with pytest.raises(KeyError, match="not parameters"):
        ENN.for_model(model, ENNConfig(base_weights=["nope.weight"]))
    editor = ENN.for_model(model)
    extra = "transformer.ln_f.weight"
    wide = ENN.for_model(model, ENNConfig(base_weights=(*editor.names, extra)))
    assert wide.base_names == [*editor.names, extra]
    assert wide.memory_bytes() == editor.memory_bytes() + 4 * model.transformer.ln_f.weight.numel()
    assert "memory_bytes()" in repr(wide)
    with torch.no_grad():
        wide.theta[extra.replace(".", "__")].add_(0.1)
    edit = wide.eval().edit(model, batch)
    torch.testing.assert_close(edit.delta(extra), torch.full_like(model.transformer.ln_f.weight, 0.1))


def test_save_load_roundtrip_and_mismatch(micro, tmp_path):
    model, tok, t, batch = _setup(micro, "gpt2")
    editor = ENN.for_model(model)
    _perturb(editor)
    with torch.no_grad():
        editor.edit_lrs.mul_(torch.linspace(0.5, 2.0, len(editor.names)))
    editor.save_pretrained(tmp_path / "ed")
    loaded = ENN.from_pretrained(tmp_path / "ed", model)
    assert not loaded.training and loaded.config == editor.config
    for (n, p), (m, q) in zip(editor.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(p, q), n
    x, y = editor.eval().edit(model, batch), loaded.edit(model, batch)
    for name in x.names:
        assert torch.equal(x.delta(name), y.delta(name))
    twin = type(model)(model.config)
    with pytest.raises(MismatchedModelError, match="different weights"):
        ENN.from_pretrained(tmp_path / "ed", twin)
    with pytest.raises(FileNotFoundError):
        ENN.from_pretrained(tmp_path / "nothing", model)


@pytest.mark.parametrize("model_type", ["gpt2", "bart", "bert"])
def test_separate_edits_equal_editing_alone(micro, model_type):
    model, tok, t, batch = _setup(micro, model_type)
    saved = _snapshot(model)
    editor = ENN.for_model(model).eval()
    _perturb(editor)
    s = editor.edit_many(model, batch.edit_inner)
    assert isinstance(s, EditSet) and len(s) == 3 and sorted(s.shared) == sorted(editor.names)
    assert s.meta == {"editor": "enn", "n_requests": 3}
    for b in range(3):
        alone = editor.edit(model, tok, t.test[b])
        assert isinstance(alone, Edit) and sorted(alone.names) == sorted(editor.names)
        for name in editor.names:
            torch.testing.assert_close(s[b].delta(name), alone.delta(name), rtol=1e-4, atol=1e-7)
    # the batched forward (shared shift + per-row factors) equals each request's own edit
    with torch.no_grad():
        rows = s.forward(model, batch.edit_outer)
        for b in range(3):
            one = s[b].forward(model, {k: v[b:b + 1] for k, v in batch.edit_outer.items()})
            torch.testing.assert_close(rows[b:b + 1], one, rtol=1e-4, atol=1e-5)
    # several requests without separate: one edit for their pooled loss, same through tokenizer or batch
    a, c = editor.edit(model, tok, t.test[:3]), editor.edit(model, batch)
    assert a.meta["n_requests"] == 3
    for name in a.names:
        torch.testing.assert_close(a.delta(name), c.delta(name))
    _assert_unchanged(model, saved)
