"""Tests for mendlab.rank1: Σ δ uᵀ equals autograd's ∇W for every family, rows, hooks, and per-example edits.

Models are random-init and tiny (3–4 layers, d 32, vocab 100), built here from configs. Batches are tensor dicts
built by hand with the collator's conventions: right padding, labels −100 off-target, decoder labels aligned
with ``input_ids`` (the loss shifts), seq2seq ``decoder_input_ids`` = labels shifted right behind the start
token, classifier labels float [B].
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from mendlab import rank1
from mendlab.families import _owner, default_edited_weights, get_family, is_conv1d, shape_key
from mendlab.losses import forward, nll

VOCAB, D, FF, PAD, BOS, EOS = 100, 32, 64, 1, 0, 2
LENGTHS = (7, 5, 4)  # three right-padded sequences of different lengths
TARGET = 2  # decoder/seq2seq: tokens labelled per sequence


def _ids(n: int, gen: torch.Generator) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=gen).tolist()


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return _pad([[1] * len(r) for r in rows], 0)


def decoder_batch(lengths=LENGTHS, seed: int = 0) -> dict:
    """Prompt + TARGET target tokens per row; labels on the target, which ends at the last real token."""
    gen = torch.Generator().manual_seed(seed)
    rows = [_ids(n, gen) for n in lengths]
    labels = [[-100] * (len(r) - TARGET) + r[-TARGET:] for r in rows]
    return {"input_ids": _pad(rows, PAD), "attention_mask": _mask(rows), "labels": _pad(labels, -100)}


def seq2seq_batch(start: int, lengths=LENGTHS, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    src = [_ids(n, gen) + [EOS] for n in lengths]
    tgt = [_ids(k, gen) + [EOS] for k in (TARGET, TARGET + 1, TARGET - 1)[: len(lengths)]]
    labels = _pad(tgt, -100)
    dec_in = torch.cat([torch.full((len(tgt), 1), start), labels[:, :-1].clamp(min=0)], dim=1)
    dec_in[:, 1:][labels[:, :-1] == -100] = PAD
    return {"input_ids": _pad(src, PAD), "attention_mask": _mask(src), "labels": labels,
            "decoder_input_ids": dec_in, "decoder_attention_mask": (labels != -100).long()}


def classifier_batch(lengths=LENGTHS, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rows = [[BOS, *_ids(n - 2, gen), EOS] for n in lengths]
    labels = torch.tensor([float(i % 2) for i in range(len(rows))])
    return {"input_ids": _pad(rows, PAD), "attention_mask": _mask(rows), "labels": labels}


def _ids_kw() -> dict:
    return dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def _t5(ffp: str):
    return T5ForConditionalGeneration(T5Config(
        num_layers=3, num_decoder_layers=3, d_model=D, d_ff=FF, num_heads=4, d_kv=8, feed_forward_proj=ffp,
        dropout_rate=0.0, decoder_start_token_id=PAD, **_ids_kw()))


BUILDERS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
        n_layer=4, n_embd=D, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **_ids_kw())),
    "gpt_neo": lambda: GPTNeoForCausalLM(GPTNeoConfig(
        num_layers=4, hidden_size=D, num_heads=4, window_size=4, max_position_embeddings=64,
        attention_types=[[["global", "local"], 2]], resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
        **_ids_kw())),
    "gptj": lambda: GPTJForCausalLM(GPTJConfig(
        n_layer=4, n_embd=D, n_head=4, rotary_dim=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, **_ids_kw())),
    "t5_v1_0": lambda: _t5("relu"),
    "t5_v1_1": lambda: _t5("gated-gelu"),
    "bart": lambda: BartForConditionalGeneration(BartConfig(
        encoder_layers=3, decoder_layers=3, d_model=D, encoder_ffn_dim=FF, decoder_ffn_dim=FF,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, decoder_start_token_id=EOS, **_ids_kw())),
    "bert": lambda: BertForSequenceClassification(BertConfig(
        num_hidden_layers=4, hidden_size=D, num_attention_heads=4, intermediate_size=FF, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1, **_ids_kw())),
}


def make(name: str, dtype=torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().to(dtype).eval()


def batch_for(model, seed: int = 0) -> dict:
    kind = get_family(model).kind
    if kind == "decoder":
        return decoder_batch(seed=seed)
    if kind == "seq2seq":
        return seq2seq_batch(model.config.decoder_start_token_id, seed=seed)
    return classifier_batch(seed=seed)


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ======================================================================================================================
# Σ δ uᵀ against autograd
# ======================================================================================================================
@pytest.mark.parametrize("name", list(BUILDERS))
def test_check_matches_autograd_in_float64(name):
    model = make(name)
    enc = batch_for(model)
    assert len(set(enc["attention_mask"].sum(-1).tolist())) > 1, "the batch must mix sequence lengths"
    errors = rank1.check(model, enc)
    assert list(errors) == default_edited_weights(model)
    assert all(g.norm() > 0 for g in rank1.autograd_gradients(model, enc).values())  # not 0 vs 0
    assert all(e <= 1e-6 for e in errors.values()), errors


def test_t5_versions_edit_wi_or_wi_0():
    assert all(".wi." in n or ".wo." in n for n in default_edited_weights(make("t5_v1_0")))
    names = default_edited_weights(make("t5_v1_1"))
    assert any(".wi_0." in n for n in names) and not any(".wi_1." in n or ".wi." in n for n in names)


def test_check_accepts_an_edit_batch_and_uses_edit_inner():
    from mendlab.data import EditBatch

    model = make("gpt2")
    enc = decoder_batch()
    other = decoder_batch(lengths=(3, 6), seed=1)
    batch = EditBatch(edit_inner=enc, edit_outer=other)
    assert rank1.check(model, batch) == rank1.check(model, enc)


@pytest.mark.parametrize("name", ["gpt2", "t5_v1_1", "bert"])
def test_check_with_a_frozen_model(name):
    """Nothing requires grad: the earliest edited output becomes a leaf, and the flags stay off."""
    model = make(name).requires_grad_(False)
    errors = rank1.check(model, batch_for(model))
    assert all(e <= 1e-6 for e in errors.values()), errors
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["gpt2", "gptj"])
def test_gradient_layout_conv1d_in_out_linear_out_in(name):
    model = make(name)
    enc = decoder_batch()
    ours = rank1.gradients(model, enc)
    ref = rank1.autograd_gradients(model, enc)
    params = dict(model.named_parameters())
    conv1d = name == "gpt2"
    for n, g in ours.items():
        assert is_conv1d(model, n) == conv1d
        i, o = shape_key(model, n)
        assert i != o  # the two layouts can be told apart
        assert g.shape == params[n].shape == ((i, o) if conv1d else (o, i))
        torch.testing.assert_close(g, ref[n], rtol=1e-9, atol=1e-12)


def test_rank1_gradient_orientation():
    u, delta = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    r = rank1.Rank1(u, delta)
    outer = sum(torch.outer(delta[t], u[t]) for t in range(5))
    torch.testing.assert_close(r.gradient(conv1d=False), outer)  # [out, in]
    torch.testing.assert_close(r.gradient(conv1d=True), outer.T)  # [in, out]


# ======================================================================================================================
# Token rows
# ======================================================================================================================
def _rows(model, enc, **kw) -> dict[str, rank1.Rank1]:
    with rank1.capture(model) as cap:
        return cap.rows(nll(get_family(model).kind, forward(model, enc), enc["labels"]), **kw)


@pytest.mark.parametrize("name", ["gpt2", "gptj"])
def test_rows_drop_padding_and_the_unscored_last_token(name):
    """Labels end at each row's last real token, whose logit is never scored: below the last block, δ is exactly 0
    there and on padding, and every other real token (prompt tokens included) keeps a row. In the last block a
    token's MLP output reaches only its own logit, so only the scored positions keep a row."""
    model = make(name)
    enc = decoder_batch()
    b, t = enc["input_ids"].shape
    last_block = f".h.{model.config.n_layer - 1}."
    real = enc["attention_mask"].clone()
    real[torch.arange(b), enc["attention_mask"].sum(-1) - 1] = 0  # the last real token: its logit is unscored
    scored = torch.zeros_like(real)
    scored[:, :-1] = enc["labels"][:, 1:] != -100  # logits at t are scored against the label at t + 1
    rows, full = _rows(model, enc), _rows(model, enc, keep_zero_rows=True)
    for n, r in rows.items():
        expect = scored if last_block in n else real
        i, o = shape_key(model, n)
        assert r.u.shape == (int(expect.sum()), i) and r.delta.shape == (int(expect.sum()), o)
        assert r.owner.shape == (r.u.shape[0],)
        assert r.owner.tolist() == sorted(r.owner.tolist())
        assert torch.bincount(r.owner, minlength=b).tolist() == expect.sum(-1).tolist()
        f = full[n]
        assert f.u.shape[0] == b * t
        assert f.owner.tolist() == torch.arange(b).repeat_interleave(t).tolist()
        assert torch.equal((f.delta != 0).any(-1).reshape(b, t), expect.bool())
        torch.testing.assert_close(f.gradient(is_conv1d(model, n)), r.gradient(is_conv1d(model, n)))
    assert sum(last_block not in n for n in rows) == 4  # both cases are exercised


def test_rows_owner_maps_to_batch_rows():
    """Row b's tokens alone give row b's gradient: Σ over owner == b equals the gradient of sequence b's loss
    term (the batch loss is a token-weighted mean, so scale by the token counts). ``nll`` works in float32, so
    the two losses agree to float32 precision only."""
    model = make("gpt2")
    enc = decoder_batch()
    rows = _rows(model, enc)
    n_tok = (enc["labels"][:, 1:] != -100).sum(-1)
    for b in range(len(LENGTHS)):
        alone = {k: v[b:b + 1] for k, v in enc.items()}
        ref = rank1.gradients(model, alone)
        for n, r in rows.items():
            keep = r.owner == b
            ours = rank1.Rank1(r.u[keep], r.delta[keep]).gradient(conv1d=True)
            scale = n_tok.sum() / n_tok[b]
            torch.testing.assert_close(ours * scale, ref[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["t5_v1_1", "bart"])
def test_seq2seq_rows_per_stack(name):
    """Encoder weights see every real source token; decoder weights every labelled decoder position."""
    model = make(name)
    enc = batch_for(model)
    for n, r in _rows(model, enc).items():
        mask = enc["attention_mask"] if "encoder." in n else enc["decoder_attention_mask"]
        assert r.u.shape[0] == int(mask.sum())
        assert torch.bincount(r.owner, minlength=mask.shape[0]).tolist() == mask.sum(-1).tolist()


def test_rows_needs_a_forward_inside_the_capture():
    model = make("gpt2")
    with rank1.capture(model) as cap, pytest.raises(RuntimeError, match="no forward pass"):
        cap.rows(torch.tensor(0.0, requires_grad=True))


def test_create_graph_keeps_the_graph():
    model = make("gpt2")
    enc = decoder_batch()
    with rank1.capture(model) as cap:
        rows = cap.rows(nll("decoder", forward(model, enc), enc["labels"]), create_graph=True)
    assert all(r.delta.requires_grad for r in rows.values())
    assert not any(r.delta.requires_grad for r in _rows(model, enc).values())


# ======================================================================================================================
# Hooks and what the capture backward touches
# ======================================================================================================================
def test_hooks_removed_after_the_block():
    model = make("gpt2")
    names = default_edited_weights(model)
    with rank1.capture(model) as cap:
        assert all(len(_owner(model, n)._forward_hooks) == 1 for n in names)
        cap.rows(nll("decoder", forward(model, decoder_batch()), decoder_batch()["labels"]))
    assert all(len(_owner(model, n)._forward_hooks) == 0 for n in names)
    assert _hooks_left(model) == 0
    assert not cap.inputs and not cap.outputs  # no activations kept alive


def test_hooks_removed_when_the_block_raises():
    model = make("bart")
    with pytest.raises(ValueError, match="boom"), rank1.capture(model):
        forward(model, batch_for(model))
        raise ValueError("boom")
    assert _hooks_left(model) == 0
    with pytest.raises(KeyError), rank1.capture(model, ["model.encoder.layers.0.fc1.weight", "nope"]):
        pass
    assert _hooks_left(model) == 0


def test_per_example_hooks_removed_when_the_block_raises():
    model = make("gpt2")
    name = default_edited_weights(model)[0]
    i, o = shape_key(model, name)
    updates = {name: (torch.zeros(2, 1, o, dtype=torch.float64), torch.zeros(2, 1, i, dtype=torch.float64))}
    with pytest.raises(ValueError, match="per-example edits"), rank1.per_example(model, updates):
        forward(model, decoder_batch())  # 3 rows for 2 edits
    assert _hooks_left(model) == 0


def test_capture_forms_no_weight_gradient_and_keeps_flags():
    model = make("gpt2")
    frozen = {n for i, (n, _) in enumerate(model.named_parameters()) if i % 3 == 0}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    enc = decoder_batch()
    rows = _rows(model, enc)
    assert rows and all(r.u.shape[0] > 0 for r in rows.values())
    assert all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    rank1.check(model, enc)  # autograd_gradients flips the edited weights on and back
    assert all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def _spy(model, module_names: list[str]) -> tuple[dict[str, int], list]:
    """Forward hooks that put a tensor hook on each module's output, counting gradients that reach it."""
    reached = dict.fromkeys(module_names, 0)
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.requires_grad:
                out.register_hook(lambda g: reached.__setitem__(name, reached[name] + 1))
        return hook

    for name in module_names:
        handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
    return reached, handles


def test_capture_backward_stops_at_the_earliest_edited_layer():
    """The earliest edited weight is ``transformer.h.1.mlp.c_fc``: no gradient may reach its input (``ln_2``'s
    output) nor block 0. The control run shows the spies do fire when autograd goes deeper."""
    model = make("gpt2")
    assert default_edited_weights(model)[0] == "transformer.h.1.mlp.c_fc.weight"
    below = ["transformer.h.0.mlp", "transformer.h.1.ln_2", "transformer.h.1.attn", "transformer.wte"]
    enc = decoder_batch()
    reached, handles = _spy(model, below)
    try:
        rows = _rows(model, enc)
        assert rows and reached == dict.fromkeys(below, 0)
        with rank1.capture(model) as cap:  # control: a full backward does reach them
            loss = nll("decoder", forward(model, enc), enc["labels"])
            torch.autograd.grad(loss, [*cap.outputs.values(), model.transformer.wte.weight])
        assert all(v == 1 for v in reached.values()), reached
    finally:
        for h in handles:
            h.remove()
    assert all(p.grad is None for p in model.parameters())


# ======================================================================================================================
# per_example: row b sees W + ΔW_b
# ======================================================================================================================
@pytest.mark.parametrize("name", ["gpt2", "gptj", "bart"])
def test_per_example_equals_dense_update_per_row(name):
    model = make(name)
    enc = batch_for(model)
    b_size, r_size = enc["input_ids"].shape[0], 3
    names = default_edited_weights(model)
    gen = torch.Generator().manual_seed(1)
    updates = {}
    for n in names:
        i, o = shape_key(model, n)
        updates[n] = (torch.randn(b_size, r_size, o, generator=gen, dtype=torch.float64) * 0.3,
                      torch.randn(b_size, r_size, i, generator=gen, dtype=torch.float64) * 0.3)
    with torch.no_grad():
        plain = forward(model, enc)
        with rank1.per_example(model, updates):
            batched = forward(model, enc)
        assert _hooks_left(model) == 0
        assert (batched - plain).abs().max() > 1e-3  # the updates matter
        params = dict(model.named_parameters())
        for b in range(b_size):
            dense = {}
            for n, (delta, u) in updates.items():
                dw = delta[b].T @ u[b]  # [out, in]
                dense[n] = params[n] + (dw.T if is_conv1d(model, n) else dw)
            row = {k: v[b:b + 1] for k, v in enc.items() if k != "labels"}
            alone = functional_call(model, dense, args=(), kwargs=row, strict=False).logits
            torch.testing.assert_close(batched[b:b + 1], alone, rtol=1e-9, atol=1e-10)
    assert torch.equal(forward(model, enc).detach(), plain)  # the model itself is unchanged
