"""Edit requests validated at the door, editors in eval mode, and edits that know the model they were made for.

One test per failure category: blank texts, zero requests, over-long inputs (against the model's own position
limit), unicode, padding sides, mixed batches, a base model left in training mode, and edits or editors used with
another model.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

from mendlab import data
from mendlab.data import Collator, EditExample
from mendlab.edit import Edit, Factors
from mendlab.edit_guard import MismatchedModelError
from mendlab.editors.base import as_batch
from mendlab.editors.ft import FT, FTConfig
from mendlab.editors.mend import MEND
from mendlab.nets import NetConfig

REQUEST = EditExample("Where was Zorbo born?", "Kelvane", rephrases=("Zorbo's birthplace is?",))


def _small_gpt2(tok, n_positions: int = 64, n_embd: int = 32, dropout: float = 0.0, name: str = "small-gpt2"):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=n_embd, n_head=2, n_positions=n_positions, vocab_size=len(tok),
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    model = GPT2LMHeadModel(config).eval()
    model.name_or_path = name
    return model


def _small_neo(tok):
    torch.manual_seed(0)
    config = GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=2, max_position_embeddings=64, vocab_size=len(tok),
                          window_size=8, attention_types=[[["global", "local"], 1]])
    model = GPTNeoForCausalLM(config).eval()
    model.name_or_path = "small-neo"
    return model


def _mend(model):
    return MEND.for_model(model, NetConfig(norm=False, rank=4))


# -- 1. validation at the door ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt,target", [("", "Kelvane"), ("   ", "Kelvane"), ("Where?", ""), ("Where?", " \n\t"),
                                           ("Where?", "\u3000")])
def test_blank_prompt_or_target_is_refused_when_the_request_is_made(prompt, target):
    with pytest.raises(ValueError, match="empty|only whitespace"):
        EditExample(prompt, target)


def test_an_empty_target_still_language_models_a_panel_text(micro):
    _, tok, _ = micro("gpt2")
    enc = Collator(tok, "decoder").encode([("Zorbo was born in Kelvane.", "")], gen=True)
    assert torch.equal(enc["labels"], enc["input_ids"])  # LM on every token: the panel's path is unchanged


def test_non_string_and_broken_unicode_texts_are_refused():
    with pytest.raises(TypeError, match="must be a string"):
        EditExample("Where was Zorbo born?", None)
    with pytest.raises(ValueError, match="not valid unicode"):
        EditExample("Where was Zorbo born?", "Kel\ud800vane")


def test_zero_requests_are_refused(micro):
    model, tok, _ = micro("gpt2")
    editor = _mend(model)
    with pytest.raises(ValueError, match="no edit requests"):
        Collator.for_model(model, tok)([])
    with pytest.raises(ValueError, match="no edit requests"):
        editor.edit(model, tok, [])
    empty = {k: v[:0] for k, v in Collator.for_model(model, tok).encode([("a b", "c")]).items()}
    with pytest.raises(ValueError, match="no edit requests"):
        editor.edit_many(model, empty)
    with pytest.raises(ValueError, match="nothing to encode"):
        Collator.for_model(model, tok).encode([])


def test_the_length_limit_is_the_models_own_positions(micro):
    _, tok, _ = micro("gpt2")
    short = _small_gpt2(tok, n_positions=64)
    assert Collator.for_model(short, tok).max_length == 64
    assert Collator.for_model(short, tok, max_length=128).max_length == 64  # never past the positions
    assert Collator.for_model(short, tok, max_length=32).max_length == 32
    data._warned.clear()
    long = EditExample("the answer to this " * 40 + "question is?", "Kelvane")
    with pytest.warns(UserWarning, match="prompt's start is cut off"):
        edit = _mend(short).edit(short, tok, long)  # was an IndexError: 128 tokens into 64 positions
    assert all(torch.isfinite(d).all() for d in edit.deltas().values())
    enc = as_batch(short, tok, long).edit_inner
    assert enc["input_ids"].shape[1] == 64
    target = tok(" Kelvane", add_special_tokens=False)["input_ids"]
    assert enc["labels"][0][enc["labels"][0] != -100].tolist() == target  # the target is whole
    with warnings.catch_warnings():  # once only
        warnings.simplefilter("error")
        as_batch(short, tok, long)


def test_a_target_that_does_not_fit_is_refused_not_cut(micro):
    _, tok, _ = micro("gpt2")
    short = _small_gpt2(tok, n_positions=64)
    with pytest.raises(ValueError, match="shorten the target"):
        _mend(short).edit(short, tok, EditExample("Where?", "Kelvane " * 80))
    bart, btok, _ = micro("bart")
    with pytest.raises(ValueError, match="shorten the target"):
        Collator.for_model(bart, btok, max_length=16).encode([("Where?", "Kelvane " * 40)])


def test_an_over_long_encoder_input_keeps_its_end_and_special_tokens(micro):
    bart, tok, _ = micro("bart")
    data._warned.clear()
    collator = Collator.for_model(bart, tok, max_length=12)
    with pytest.warns(UserWarning, match="its start is cut off"):
        ids = collator.encode([("one two three " * 10 + "Where was Zorbo born?", "Kelvane")])["input_ids"][0]
    full = tok("one two three " * 10 + "Where was Zorbo born?")["input_ids"]
    assert len(ids) == 12 and ids[0] == full[0] and ids[-1] == full[-1]
    assert ids[1:-1].tolist() == full[-11:-1]


def test_unicode_requests_edit_and_label_exactly_their_target(micro):
    model, tok, _ = micro("gpt2")
    request = EditExample("Où est né Zorbo? 🤔", "Kélvané 東京 🚀")
    batch = as_batch(model, tok, request)
    labels = batch.edit_inner["labels"][0]
    assert labels[labels != -100].tolist() == tok(" Kélvané 東京 🚀", add_special_tokens=False)["input_ids"]
    edit = _mend(model).edit(model, batch)
    assert all(torch.isfinite(d).all() for d in edit.deltas().values())


@pytest.mark.parametrize("model_type", ["gpt2", "bart", "bert"])
def test_padding_is_on_the_right_whatever_the_tokenizer_says(micro, model_type):
    model, tok, world = micro(model_type)
    examples = world.edits("claim" if model_type == "bert" else "qa", "val")[:3]
    right = Collator.for_model(model, tok)(examples)
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        left = Collator.for_model(model, tok)(examples)
    finally:
        tok.padding_side = old
    for a, b in ((right.edit_inner, left.edit_inner), (right.loc, left.loc)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (right.edit_inner["attention_mask"][:, 0] == 1).all()


def test_a_batch_mixing_generation_and_qa_requests_is_refused(micro):
    model, tok, _ = micro("gpt2")
    gen = EditExample("Zorbo was born in", " Kelvane", kind="gen")
    with pytest.raises(ValueError, match="mixes generation"):
        Collator.for_model(model, tok)([REQUEST, gen])


def test_a_blank_rephrase_is_refused(micro):
    model, tok, _ = micro("gpt2")
    with pytest.raises(ValueError, match="rephrase"):
        Collator.for_model(model, tok)([EditExample("Where was Zorbo born?", "Kelvane", rephrases=(" ",))])


# -- eval mode ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["mend", "ft"])
def test_a_model_in_training_mode_is_edited_in_eval_mode_and_gets_its_mode_back(micro, make):
    _, tok, _ = micro("gpt2")
    model = _small_gpt2(tok, dropout=0.5).train()
    model.transformer.h[0].eval()  # a mixed state comes back as it was
    modes = [m.training for m in model.modules()]
    editor = _mend(model) if make == "mend" else FT.for_model(model, FTConfig(lr=1e-3, max_steps=2))
    import mendlab.editors.base as base

    base._warned_training = False
    with pytest.warns(UserWarning, match="training mode"):
        first = editor.edit(model, tok, REQUEST).detach()
    second = editor.edit(model, tok, REQUEST).detach()
    assert [m.training for m in model.modules()] == modes
    for name in first.names:  # dropout off: the same request gives the same edit
        assert torch.equal(first.delta(name), second.delta(name))
    model.eval()
    third = editor.edit(model, tok, REQUEST).detach()
    assert all(torch.equal(first.delta(n), third.delta(n)) for n in first.names)


# -- 3. an edit knows what it edits ---------------------------------------------------------------------------------
def test_an_edit_records_its_base_model_and_keeps_it_through_save_sum_and_editsets(micro, tmp_path):
    _, tok, world = micro("gpt2")
    model = _small_gpt2(tok)
    editor = _mend(model)
    edit = editor.edit(model, tok, REQUEST)
    assert edit.base["model_type"] == "gpt2" and edit.base["name"] == editor.base["name"] == "small-gpt2"
    assert edit.base["shapes"] == {n: list(p.shape) for n, p in model.named_parameters() if n in edit.names}
    assert Edit.load(edit.save(tmp_path / "e.safetensors")).base == edit.base
    assert (edit + edit).base == edit.base
    edits = editor.edit_many(model, tok, world.edits("qa", "val")[:3])
    assert edits.base == edits[1].base == edits.merged().base == edits.aggregate("least_squares").base == edit.base


def test_applying_an_edit_to_another_model_names_both(micro):
    _, tok, _ = micro("gpt2")
    model = _small_gpt2(tok)
    edit = _mend(model).edit(model, tok, REQUEST).detach()
    wider = _small_gpt2(tok, n_embd=64, name="wider-gpt2")
    before = {n: p.clone() for n, p in wider.named_parameters()}
    for use in (lambda: edit.apply_(wider), lambda: edit.forward(wider, {"input_ids": torch.ones(1, 3, dtype=int)}),
                lambda: edit.applied(wider).__enter__(), lambda: edit.params(wider)):
        with pytest.raises(MismatchedModelError, match="small-gpt2.*wider-gpt2.*shapes differ"):
            use()
    assert all(torch.equal(p, before[n]) for n, p in wider.named_parameters())
    with pytest.raises(MismatchedModelError, match="model type 'gpt2' vs 'gpt_neo'"):
        edit.apply_(_small_neo(tok))


def test_adding_edits_of_different_models_names_both(micro):
    _, tok, _ = micro("gpt2")
    model, neo = _small_gpt2(tok), _small_neo(tok)
    a = _mend(model).edit(model, tok, REQUEST)
    b = _mend(neo).edit(neo, tok, REQUEST)
    with pytest.raises(MismatchedModelError, match="small-gpt2.*small-neo"):
        a + b
    name = a.names[0]
    other = Edit(dense={name: torch.zeros(3, 3)})  # hand-made, no fingerprint: its shape is still checked
    with pytest.raises(MismatchedModelError, match="shapes differ"):
        a + other


def test_a_hand_made_edit_without_fingerprint_keeps_working(micro):
    model, _, _ = micro("gpt2")
    name, w = next((n, p) for n, p in model.named_parameters() if p.dim() == 2)
    edit = Edit({name: Factors(torch.randn(1, w.shape[1]), torch.randn(1, w.shape[0]), True)})
    assert edit.base is None
    before = w.detach().clone()
    with edit.applied(model):
        assert not torch.equal(w, before)
    assert torch.equal(w, before)
    with pytest.raises(MismatchedModelError, match="an unrecorded model.*shapes differ"):
        Edit(dense={name: torch.zeros(2, 2)}).apply_(model)


def test_an_editor_used_with_another_model_names_both(micro):
    _, tok, _ = micro("gpt2")
    model = _small_gpt2(tok)
    editor = _mend(model)
    bigger = _small_gpt2(tok, n_embd=64, name="bigger-gpt2")
    with pytest.raises(MismatchedModelError, match="small-gpt2.*bigger-gpt2"):
        editor.edit(bigger, tok, REQUEST)


# -- models and weights -----------------------------------------------------------------------------------------
def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _tokens(vocab: int = 100) -> dict:
    ids = torch.randint(vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_an_unregistered_model_type_says_how_and_then_edits_on_named_weights():
    from mendlab.families import UnsupportedModelError

    model = _llama()
    with pytest.raises(UnsupportedModelError, match="MEND.for_model\\(model, config, names="):
        MEND.for_model(model, NetConfig(rank=4))
    editor = MEND.for_model(model, NetConfig(rank=4, norm=False), names=["model.layers.1.mlp.down_proj.weight"])
    assert editor.kind == "decoder"  # read from the head class, LlamaForCausalLM
    edit = editor.eval().edit(model, _tokens())
    assert edit.forward(model, _tokens()).shape == (2, 8, 100)


@pytest.mark.parametrize("name, owner", [("transformer.wte.weight", "Embedding"),
                                         ("transformer.wpe.weight", "Embedding")])
def test_weights_that_are_not_linear_maps_are_refused_by_name(micro, name, owner):
    model, _, _ = micro("gpt2")
    with pytest.raises(ValueError, match=f"{name}.*belongs to a {owner}"):
        MEND.for_model(model, NetConfig(rank=4), names=[name])


def test_a_meta_device_model_is_counted_but_never_edited(micro):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _, _ = micro("gpt2")
    with torch.device("meta"):
        meta = GPT2LMHeadModel(GPT2Config(**{k: getattr(model.config, k) for k in
                                             ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")}))
    counted = MEND.for_model(meta, NetConfig(rank=4))  # sizes are known without weights (chapter 07 does this)
    assert counted.num_parameters() == MEND.for_model(model, NetConfig(rank=4)).num_parameters()
    editor = MEND.for_model(model, NetConfig(rank=4, norm=False)).eval()
    with pytest.raises(ValueError, match="meta device"):
        editor.edit(meta, _tokens(model.config.vocab_size))


@pytest.mark.parametrize("model_dtype, editor_dtype", [(torch.bfloat16, torch.float32),
                                                       (torch.float32, torch.bfloat16)])
def test_a_model_and_an_editor_in_different_precisions_edit_together(micro, model_dtype, editor_dtype):
    _, tok, _ = micro("gpt2")
    model = _small_gpt2(tok).to(model_dtype)
    editor = MEND.for_model(model, NetConfig(rank=4, norm=False)).eval()
    reference = editor.edit(model, _tokens(model.config.vocab_size))
    editor.to(editor_dtype)
    edit = editor.edit(model, _tokens(model.config.vocab_size))
    logits = edit.forward(model, _tokens(model.config.vocab_size))
    assert torch.isfinite(logits.float()).all()
    for name, f in edit.factors.items():
        assert torch.allclose(f.delta.float(), reference.factors[name].delta.float(), rtol=0.05, atol=1e-3)


# -- very large batches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prepared", [False, True])
def test_a_large_edit_many_runs_in_chunks_and_equals_one_pass(micro, monkeypatch, prepared):
    from mendlab import tasks

    model, tok, world = micro("gpt2")
    examples = tasks.from_world(world, "decoder").train[:7]
    editor = MEND.for_model(model, NetConfig(rank=4, norm=False)).eval()
    batch = Collator.for_model(model, tok)(examples).edit_inner if prepared else None
    args = (batch,) if prepared else (tok, examples)
    whole = editor.edit_many(model, *args)
    sizes = []
    real = MEND.edit_many.__wrapped__

    def spy(self, model, tokenizer_or_batch, examples=None):
        sizes.append(len(examples) if examples is not None else int(tokenizer_or_batch["input_ids"].shape[0]))
        return real(self, model, tokenizer_or_batch, examples)

    monkeypatch.setattr(MEND, "chunk_requests", 3)
    chunked = guarded_edit_many(spy)(editor, model, *args)
    assert sizes == [3, 3, 1] and len(chunked) == len(whole) == 7
    assert chunked.meta["n_requests"] == 7 and chunked.base == whole.base
    ids = Collator.for_model(model, tok)(examples).edit_outer
    assert torch.allclose(chunked.forward(model, ids), whole.forward(model, ids), atol=1e-5)
    for b in range(7):
        for name in whole.factors:
            assert torch.allclose(chunked[b].delta(name), whole[b].delta(name), atol=1e-6)


def guarded_edit_many(fn):
    from mendlab.editors.base import guarded

    fn.__name__ = "edit_many"
    return guarded(fn)
