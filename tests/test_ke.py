"""KE (KnowledgeEditor): the update rule of reference §6.3, every model kind, training, save/load."""

import copy

import pytest
import torch

from mendlab import losses, rank1, tasks
from mendlab.data import Collator
from mendlab.edit import Edit, EditSet
from mendlab.editors import MismatchedModelError
from mendlab.editors.ke import KE, KEConfig
from mendlab.families import get_family
from mendlab.train import TrainConfig, train

SMALL = KEConfig(hidden=16, cond_dim=24, weight_hidden=16)


def _setup(micro, model_type):
    model, tok, world = micro(model_type)
    t = tasks.from_world(world, get_family(model).kind)
    torch.manual_seed(0)
    return KE.for_model(model, SMALL).eval(), model, tok, t


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_scale"):
        KEConfig(max_scale=0)
    with pytest.raises(ValueError, match="hidden"):
        KEConfig(hidden=0)


@pytest.mark.parametrize("model_type", ["gpt2", "bart"])  # Conv1D (stored [in, out]) and nn.Linear layouts
def test_update_is_scaled_masked_gradient_plus_offset(micro, model_type):
    """ΔW = max_scale·sigmoid(c)·(∇W ⊙ m + offset), ∇W from plain autograd on the weights (float64)."""
    editor, model, tok, t = _setup(micro, model_type)
    model, editor = copy.deepcopy(model).double(), copy.deepcopy(editor).double()
    enc = Collator.for_model(model, tok)(t.test[:1]).edit_inner
    edit = editor.edit(model, enc).detach()
    grads = rank1.autograd_gradients(model, enc, editor.names)
    with torch.no_grad():
        z = editor.condition(enc, losses.forward(model, enc))[0]
    for name in editor.names:
        with torch.no_grad():
            mask, offset, scale = editor._update_parts(name, z)
        assert mask.shape == grads[name].shape == edit.delta(name).shape
        want = scale * (grads[name] * mask + offset)
        got = edit.delta(name)
        assert float((got - want).norm() / want.norm()) <= 1e-5, name
        # the gradient part alone (the offset can dominate the total)
        masked = scale * grads[name] * mask
        assert float((got - scale * offset - masked).norm() / masked.norm()) <= 1e-5, name


def test_condition_is_prediction_label_input(micro):
    editor, model, tok, t = _setup(micro, "gpt2")
    enc = Collator.for_model(model, tok)(t.test[:2]).edit_inner
    logits = losses.forward(model, enc)
    ids, lengths = editor.cond_ids(enc, logits)
    v = editor.vocab
    row = ids[0, : lengths[0]]
    target = enc["labels"][0][enc["labels"][0] != -100]
    pred = logits[0, :-1][enc["labels"][0, 1:] != -100].argmax(-1)
    prompt = enc["input_ids"][0][(enc["labels"][0] == -100) & enc["attention_mask"][0].bool()]
    expect = torch.cat([pred, torch.tensor([v]), target, torch.tensor([v + 1]), prompt])
    assert torch.equal(row, expect)
    # a generation edit (10 label tokens > passage_tokens) is conditioned on its whole passage
    gen = Collator.for_model(model, tok)(tasks.from_world(micro("gpt2")[2], "decoder", task="gen").test[:2]).edit_inner
    assert bool(((gen["labels"] != -100).sum(1) > editor.config.passage_tokens).all())
    ids, lengths = editor.cond_ids(gen, losses.forward(model, gen))
    for b in range(2):
        assert torch.equal(ids[b, : lengths[b]], gen["input_ids"][b][gen["attention_mask"][b].bool()])


@pytest.mark.parametrize("model_type", ["gpt2", "bart", "bert"])
def test_edit_every_kind(micro, model_type):
    editor, model, tok, t = _setup(micro, model_type)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    collate = Collator.for_model(model, tok)
    with torch.no_grad():
        edit = editor.edit(model, tok, t.test[0])
    assert isinstance(edit, Edit) and sorted(edit.names) == sorted(editor.names)
    assert edit.meta == {"editor": "ke", "n_requests": 1}
    params = dict(model.named_parameters())
    for name in edit.names:
        assert edit.delta(name).shape == params[name].shape
        assert float(edit.delta(name).norm()) > 0
    # separate edits: one per request, each equal to editing that request alone (in a padded batch)
    s = editor.edit_many(model, collate(t.test[:3]).edit_inner)
    assert isinstance(s, EditSet) and len(s) == 3
    for b in range(3):
        alone = editor.edit(model, tok, t.test[b])
        for name in alone.names:
            torch.testing.assert_close(s[b].delta(name), alone.delta(name), rtol=1e-4, atol=1e-6)
    # several requests without separate: one edit, the sum of the per-request edits
    merged = editor.edit(model, tok, t.test[:3])
    for name in merged.names:
        torch.testing.assert_close(merged.delta(name), sum(s[b].delta(name) for b in range(3)),
                                   rtol=1e-4, atol=1e-6)
    # the batched EditSet forward equals applying each edit on its own
    enc = collate(t.test[:3]).edit_outer
    with torch.no_grad():
        together = s.forward(model, enc)
        one = s[1].forward(model, {k: v[1:2] for k, v in enc.items()})
    torch.testing.assert_close(together[1:2], one, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # the caller's model is never modified


def test_training_makes_edits_work(micro):
    """30 Adam steps of Algorithm 1 on micro-gpt2: the edits now make the targets likelier and argmax on x_e.

    lr 1e-2: at 1e-3 the post-edit NLL moves by only ~0.002 nats in 30 steps (m = softmax ⊗ col starts ~1/P0)."""
    editor, model, tok, t = _setup(micro, "gpt2")
    cfg = TrainConfig(steps=30, val_every=30, val_size=4, edits_per_step=4, lr=1e-2)
    enc = Collator.for_model(model, tok)(t.train[:16]).edit_inner

    def scores(logits):
        nll = float(losses.nll_per_example("decoder", logits, enc["labels"]).mean())
        return nll, float(losses.correct("decoder", logits, enc["labels"]).float().mean())

    def post():
        with torch.no_grad():
            return scores(editor.edit_many(model, enc).forward(model, enc))

    with torch.no_grad():
        pre_nll, pre_es = scores(losses.forward(model, enc))
    untrained_nll, _ = post()
    result = train(editor, model, tok, t.train, t.val, cfg, progress=False)
    assert result.steps == 30 and result.skipped == 0
    assert not any(p.requires_grad for p in model.parameters())
    nll, es = post()
    assert nll < pre_nll - 0.1 and nll < untrained_nll - 0.1
    assert es >= pre_es + 0.5


def test_save_load_roundtrip_and_mismatch(micro, tmp_path):
    editor, model, tok, t = _setup(micro, "gpt2")
    editor.save_pretrained(tmp_path / "ke")
    assert any("parametrizations" in k for k in editor.state_dict())  # weight_norm's g and v survive the trip
    loaded = KE.from_pretrained(tmp_path / "ke", model)
    assert not loaded.training
    for (n, p), (m, q) in zip(editor.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(p, q), n
    x, y = editor.edit(model, tok, t.test[0]), loaded.edit(model, tok, t.test[0])
    for name in x.names:
        assert torch.equal(x.delta(name), y.delta(name))
    other, _, _ = micro("gpt_neo")
    with pytest.raises(MismatchedModelError) as err:
        KE.from_pretrained(tmp_path / "ke", other)
    assert "gpt2" in str(err.value) and "gpt_neo" in str(err.value)
    with pytest.raises(MismatchedModelError, match="different weights"):
        KE.from_pretrained(tmp_path / "ke", type(model)(model.config))
