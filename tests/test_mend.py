"""The MEND editor: every model kind, batch editing, save/load and the mismatched-model error."""

import pytest
import torch

from mendlab import tasks
from mendlab.data import Collator, EditExample
from mendlab.edit import Edit, EditSet
from mendlab.editors import MEND, MismatchedModelError
from mendlab.families import get_family
from mendlab.nets import NetConfig


def _primed(model, examples, **kw):
    torch.manual_seed(0)
    editor = MEND.for_model(model, NetConfig(rank=16, **kw))
    batch = Collator.for_model(model, _primed.tok)(examples)
    editor.train()
    editor.edit(model, batch)  # fold token rows into the normaliser
    return editor.eval(), batch


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neo", "bart", "t5", "bert"])
def test_edit_every_kind(micro, model_type):
    model, tok, world = micro(model_type)
    kind = get_family(model).kind
    t = tasks.from_world(world, kind)
    _primed.tok = tok
    editor, batch = _primed(model, t.train[:4])
    with torch.no_grad():
        edit = editor.edit(model, tok, t.test[0])
    assert isinstance(edit, Edit) and sorted(edit.names) == sorted(editor.names)
    for name in edit.names:
        assert edit.delta(name).shape == dict(model.named_parameters())[name].shape
    # several requests through the tokenizer path equal the same requests as a prepared batch
    a = editor.edit(model, tok, t.test[:3])
    b = editor.edit(model, Collator.for_model(model, tok)(t.test[:3]))
    for name in a.names:
        torch.testing.assert_close(a.delta(name), b.delta(name))
    # separate edits: one per request, each equal to editing that request alone
    s = editor.edit_many(model, Collator.for_model(model, tok)(t.test[:3]).edit_inner)
    assert isinstance(s, EditSet) and len(s) == 3
    alone = editor.edit(model, tok, t.test[1])
    for name in alone.names:
        torch.testing.assert_close(s[1].delta(name), alone.delta(name), rtol=1e-4, atol=1e-7)



@pytest.mark.parametrize("model_type", ["gpt2", "bart", "t5", "bert"])
def test_editset_forward_many_equals_one_forward_per_input(micro, model_type):
    """Training's stacked pass over x'_e and x_loc (different widths) gives each input's own logits."""
    model, tok, world = micro(model_type)
    t = tasks.from_world(world, get_family(model).kind)
    _primed.tok = tok
    editor, _ = _primed(model, t.train[:4])
    batch = Collator.for_model(model, tok)(t.train[4:7])
    s = editor.edit_many(model, batch.edit_inner)
    with torch.no_grad():
        many = s.forward_many(model, [batch.edit_outer, batch.loc])
        for got, enc in zip(many, [batch.edit_outer, batch.loc], strict=True):
            torch.testing.assert_close(got, s.forward(model, enc), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one per edit"):
        s.forward_many(model, [batch.edit_outer, {k: v[:2] for k, v in batch.loc.items()}])


def test_edit_changes_the_prediction_direction(micro):
    """Identity-initialised editor with descent and norm off = a gradient step: the target gets likelier."""
    from mendlab import losses

    model, tok, world = micro("gpt2")
    editor = MEND.for_model(model, NetConfig(norm=False, edit_lr=1.0), descent=True)
    ex = tasks.from_world(world, "decoder").test[0]
    enc = Collator.for_model(model, tok).encode([(ex.prompt, ex.target)])
    with torch.no_grad():
        before = float(losses.nll("decoder", losses.forward(model, enc), enc["labels"]))
    edit = editor.edit(model, tok, ex)
    with torch.no_grad():
        after = float(losses.nll("decoder", edit.forward(model, enc), enc["labels"]))
    assert after < before


def test_save_load_roundtrip_and_mismatch(micro, tmp_path):
    model, tok, world = micro("gpt2")
    _primed.tok = tok
    t = tasks.from_world(world, "decoder")
    editor, _ = _primed(model, t.train[:4])
    with torch.no_grad():
        editor.net.edit_lrs.fill_(-3e-3)
    editor.save_pretrained(tmp_path / "ed")
    loaded = MEND.from_pretrained(tmp_path / "ed", model)
    for (n, p), (_, q) in zip(editor.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    loaded.eval()
    x, y = editor.edit(model, tok, t.test[0]), loaded.edit(model, tok, t.test[0])
    for name in x.names:
        assert torch.equal(x.delta(name), y.delta(name))
    other, _, _ = micro("gpt_neo")
    with pytest.raises(MismatchedModelError) as err:
        MEND.from_pretrained(tmp_path / "ed", other)
    assert "gpt2" in str(err.value) and "gpt_neo" in str(err.value)
    # same architecture, different weights: still refused, naming both
    twin = type(model)(model.config)
    with pytest.raises(MismatchedModelError, match="different weights"):
        MEND.from_pretrained(tmp_path / "ed", twin)


def test_untrained_normaliser_in_eval_mode_is_a_clear_error(micro):
    model, tok, world = micro("gpt2")
    editor = MEND.for_model(model).eval()
    with pytest.raises(RuntimeError, match="normaliser"):
        editor.edit(model, tok, EditExample("Where was Ama born?", "Kelvane"))
