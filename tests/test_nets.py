"""Tests for mendlab.nets (normaliser, identity-initialised blocks, sharing, ablations, parameter counts) and the
identity property of mendlab.editors.mend: an untrained editor with normalisation off is a plain gradient step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BertConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoConfig,
    T5Config,
)

from mendlab import nets, rank1
from mendlab.editors.mend import MEND
from mendlab.families import default_edited_weights, is_conv1d, shape_key
from mendlab.losses import forward, nll
from mendlab.nets import IDMLP, VARIANTS, EditorNet, GradientTransform, LRLinear, NetConfig, Normalizer


def _rows(n: int, dim: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * torch.linspace(0.5, 3.0, dim) + 2.0).to(dtype)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every U, bias and per-layer offset of a module random values, so its blocks stop being the identity
    and each mode differs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, LRLinear):
                block.u.copy_(torch.randn(block.u.shape, generator=g))
                block.bias.copy_(torch.randn(block.bias.shape, generator=g))
                if block.shift is not None:
                    block.shift.weight.copy_(torch.randn(block.shift.weight.shape, generator=g))


# -- Normalizer -------------------------------------------------------------------------------------------------
def test_normalizer_equals_mean_and_unbiased_std_of_all_rows():
    norm = Normalizer(6).train()
    batches = [_rows(n, 6, seed=i, dtype=torch.float64) for i, n in enumerate((1, 5, 2, 17, 3))]
    for b in batches:
        norm.update(b)
    every = torch.cat(batches)
    torch.testing.assert_close(norm.mean, every.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.std, every.std(0), rtol=1e-12, atol=1e-12)
    assert norm.count.item() == every.shape[0]
    norm.update(every[:0])  # an empty batch changes nothing
    assert norm.count.item() == every.shape[0]


def test_normalizer_forward_folds_first_then_normalises():
    norm = Normalizer(4).train()
    first = _rows(7, 4, seed=0)
    out = norm(first)
    ref = (first.double() - first.double().mean(0)) / (first.double().std(0) + 1e-7)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert out.dtype == first.dtype
    second = _rows(3, 4, seed=1)
    norm(second)
    torch.testing.assert_close(norm.mean, torch.cat([first, second]).double().mean(0), rtol=1e-6, atol=1e-6)


def test_normalizer_eval_mode_does_not_update():
    norm = Normalizer(5).train()
    norm(_rows(4, 5, seed=0))
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.eval()
    x = _rows(9, 5, seed=1)
    out = norm(x)
    for k, v in norm.state_dict().items():
        assert torch.equal(v, state[k]), k
    torch.testing.assert_close(out, ((x.double() - state["mean"]) / (norm.std + 1e-7)).float())


def test_normalizer_needs_two_rows():
    with pytest.raises(RuntimeError, match="fewer than 2"):
        Normalizer(3).train()(torch.randn(1, 3))
    with pytest.raises(RuntimeError, match="fewer than 2"):
        Normalizer(3).eval()(torch.randn(8, 3))  # never trained: eval mode does not initialise it
    norm = Normalizer(3).train()
    norm.update(torch.randn(1, 3))
    norm(torch.randn(1, 3))  # the second row ever seen makes it usable
    assert norm.count.item() == 2


def test_normalizer_state_round_trip():
    norm = Normalizer(4).train()
    for i in range(3):
        norm(_rows(5, 4, seed=i))
    state = norm.state_dict()
    assert set(state) == {"mean", "m2", "count"}
    fresh = Normalizer(4)
    fresh.load_state_dict(state)
    assert fresh.count.item() == norm.count.item() == 15
    x = _rows(6, 4, seed=9)
    assert torch.equal(fresh.eval()(x), norm.eval()(x))
    # resumed training continues the same statistics (the official code's norm_init flag would restart them)
    more = _rows(4, 4, seed=10)
    fresh.train()(more)
    norm.train()(more)
    assert torch.equal(fresh.mean, norm.mean) and fresh.count.item() == 19


# -- identity init ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_modes,mode", [(None, None), (3, 2)])
def test_lrlinear_and_idmlp_are_identity_at_init(n_modes, mode):
    z = _rows(11, 12, seed=0)
    block = LRLinear(12, rank=5, n_modes=n_modes, init="id")
    assert block.u.shape == (12, 5) and block.v.shape == (5, 12)
    assert torch.equal(block.u, torch.zeros(12, 5)) and block.v.abs().sum() > 0
    assert torch.equal(block(z, mode), z)
    mlp = IDMLP(12, NetConfig(rank=50), n_modes)
    assert len(mlp.blocks) == 2 and mlp.blocks[0].u.shape == (12, 12)  # r = min(rank, D)
    assert torch.equal(mlp(z, mode), z)


@pytest.mark.parametrize("sides", ["both", "u", "delta", "smaller"])
def test_gradient_transform_identity_on_normalised_input(sides):
    m, n = 6, 10
    gt = GradientTransform(m, n, NetConfig(rank=4, sides=sides), n_modes=2).train()
    u, d = _rows(9, m, seed=1), _rows(9, n, seed=2)
    u_t, d_t = gt(u, d, 1)
    gt.eval()
    assert torch.equal(u_t, gt.u_norm(u)) and torch.equal(d_t, gt.d_norm(d))
    torch.testing.assert_close(u_t, (u - u.mean(0)) / (u.std(0) + 1e-7), rtol=1e-5, atol=1e-5)
    raw = GradientTransform(m, n, NetConfig(rank=4, sides=sides, norm=False), n_modes=2)
    u_r, d_r = raw(u, d, 0)
    assert torch.equal(u_r, u) and torch.equal(d_r, d)


# -- the ReLU trap (reference §1.4) ---------------------------------------------------------------------------------
def _relu_block(block: LRLinear, z: torch.Tensor, mode: int) -> torch.Tensor:
    """The same block with torch.relu instead of clamp (what the library must NOT do)."""
    a = (z @ block.v.T) @ block.u.T + block.bias
    a = a * block.scale.weight[mode] + block.shift.weight[mode]
    return z + torch.relu(a)


def test_clamp_passes_gradient_at_zero_where_relu_does_not():
    torch.manual_seed(0)
    mlp = IDMLP(8, NetConfig(rank=4), n_modes=2)
    z, w = torch.randn(5, 8), torch.randn(5, 8)
    (mlp(z, 1) * w).sum().backward()
    for block in mlp.blocks:
        assert block.u.grad.abs().sum() > 0
    # inline relu version of the same two blocks: every pre-activation is exactly 0 at init, relu'(0) = 0
    for p in mlp.parameters():
        p.grad = None
    h = z
    for block in mlp.blocks:
        h = _relu_block(block, h, 1)
    assert torch.equal(h, z)
    (h * w).sum().backward()
    for block in mlp.blocks:
        assert torch.equal(block.u.grad, torch.zeros_like(block.u))


# -- variants -------------------------------------------------------------------------------------------------------
def test_no_id_init_is_xavier_without_residual():
    torch.manual_seed(0)
    block = LRLinear(10, rank=4, n_modes=None, init="xavier")
    assert not block.residual and block.u.abs().sum() > 0
    z = torch.randn(7, 10)
    out = block(z)
    assert not torch.allclose(out, z)
    assert torch.equal(out, ((z @ block.v.T) @ block.u.T + block.bias).clamp(min=0))  # act(a), no z + ...
    assert (out >= 0).all()
    gt = GradientTransform(4, 6, NetConfig.variant("no_id_init", rank=3, norm=False), n_modes=1)
    u, d = torch.randn(5, 4), torch.randn(5, 6)
    u_t, d_t = gt(u, d, 0)
    assert not torch.allclose(u_t, u) and not torch.allclose(d_t, d)


@pytest.mark.parametrize("variant,m,n,transformed", [
    ("only_u", 6, 10, "u"), ("only_delta", 6, 10, "delta"),
    ("only_smaller", 6, 10, "u"), ("only_smaller", 10, 6, "delta"), ("mend", 6, 10, "both"),
])
def test_one_sided_variants_transform_only_their_side(variant, m, n, transformed):
    gt = GradientTransform(m, n, NetConfig.variant(variant, rank=4), n_modes=1).train()
    assert gt.sides == transformed
    assert gt.mlp.blocks[0].u.shape[0] == {"u": m, "delta": n, "both": m + n}[transformed]
    _perturb(gt)
    u, d = _rows(8, m, seed=3), _rows(8, n, seed=4)
    u_t, d_t = gt(u, d, 0)
    gt.eval()
    u_n, d_n = gt.u_norm(u), gt.d_norm(d)
    assert torch.equal(u_t, u_n) is (transformed == "delta")
    assert torch.equal(d_t, d_n) is (transformed == "u")


SHAPES = {"a.0": (6, 10), "b.0": (10, 6), "a.1": (6, 10), "b.1": (10, 6), "a.2": (6, 10)}


def test_shared_builds_one_transform_per_shape_with_modes_in_name_order():
    net = EditorNet(SHAPES, NetConfig(rank=4))
    assert sorted(net.transforms) == ["10x6", "6x10"]
    assert net.route == {"a.0": ("6x10", 0), "b.0": ("10x6", 0), "a.1": ("6x10", 1), "b.1": ("10x6", 1),
                         "a.2": ("6x10", 2)}
    for key, n_modes in (("6x10", 3), ("10x6", 2)):
        for block in net.transforms[key].mlp.blocks:
            assert block.scale.weight.shape == block.shift.weight.shape == (n_modes, 16)
            assert torch.equal(block.scale.weight, torch.ones(n_modes, 16))
            assert torch.equal(block.shift.weight, torch.zeros(n_modes, 16))
    assert torch.equal(net.edit_lrs, torch.full((5,), 1e-4))
    assert net.step_size("a.1") is not None and net.step_size("a.1").item() == pytest.approx(1e-4)


def test_modes_select_their_own_scale_and_offset():
    net = EditorNet(SHAPES, NetConfig(rank=4, norm=False))
    _perturb(net)
    with torch.no_grad():
        for block in net.transforms["6x10"].mlp.blocks:
            block.shift.weight[1] = block.shift.weight[0]
            block.scale.weight[1] = block.scale.weight[0]
    u, d = torch.randn(3, 6), torch.randn(3, 10)
    out0, out1, out2 = (net(name, u, d)[0] for name in ("a.0", "a.1", "a.2"))
    assert torch.equal(out0, out1) and not torch.equal(out0, out2)


def test_per_row_modes_gather_the_same_tables_with_and_without_grad():
    """Editing without a graph gathers the per-row scale and offset by index_select; the values are exactly those
    of the indexing that training uses (rank 4 < D/2, so both take the factored product)."""
    net = EditorNet(SHAPES, NetConfig(rank=4, norm=False))
    _perturb(net)
    rows = {n: (_rows(3 + i, s[0], seed=i), _rows(3 + i, s[1], seed=10 + i)) for i, (n, s) in enumerate(SHAPES.items())}
    with torch.enable_grad():
        graph = net.forward_all(rows)
    with torch.no_grad():
        plain = net.forward_all(rows)
    for name in rows:
        assert torch.equal(graph[name][0].detach(), plain[name][0])
        assert torch.equal(graph[name][1].detach(), plain[name][1])


@pytest.mark.parametrize("shared", [True, False])
def test_forward_all_equals_per_weight_forward(shared):
    """All weights of a shape in one pass (per-row modes) = one weight at a time, once statistics are frozen.

    To float32 rounding: the two passes' matmuls have other shapes, so their sums round differently (seen: 3e-6)."""
    net = EditorNet(SHAPES, NetConfig(rank=4, shared=shared))
    _perturb(net)
    rows = {n: (_rows(3 + i, s[0], seed=i), _rows(3 + i, s[1], seed=10 + i)) for i, (n, s) in enumerate(SHAPES.items())}
    net.train().forward_all(rows)
    net.eval()
    together = net.forward_all(rows)
    for name, (u, d) in rows.items():
        alone = net(name, u, d)
        torch.testing.assert_close(together[name][0], alone[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[name][1], alone[1], rtol=1e-5, atol=1e-5)


def test_no_share_builds_one_transform_per_weight_without_tables():
    net = EditorNet(SHAPES, NetConfig.variant("no_share", rank=4))
    assert len(net.transforms) == len(SHAPES)
    assert [net.route[n] for n in SHAPES] == [(f"w{i}", None) for i in range(5)]
    for t in net.transforms.values():
        for block in t.mlp.blocks:
            assert block.scale is None and block.shift is None
    assert not any("scale" in n or "shift" in n for n, _ in net.named_parameters())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_construct_and_run(name):
    config = NetConfig.variant(name, rank=4)
    for key, value in VARIANTS[name].items():
        assert getattr(config, key) == value
    net = EditorNet(SHAPES, config).train()
    u, d = _rows(6, 6, seed=0), _rows(6, 10, seed=1)
    u_t, d_t = net("a.1", u, d)
    assert u_t.shape == (6, 6) and d_t.shape == (6, 10) and torch.isfinite(u_t).all() and torch.isfinite(d_t).all()


def test_invalid_config_values_raise():
    with pytest.raises(ValueError, match="init"):
        NetConfig(init="zeros")
    with pytest.raises(ValueError, match="sides"):
        NetConfig(sides="left")
    with pytest.raises(ValueError, match="unknown variant"):
        NetConfig.variant("no_everything")
    with pytest.raises(ValueError, match="sides"):
        NetConfig.variant("only_u", sides="sideways")


def test_param_groups_cover_every_parameter_once():
    net = EditorNet(SHAPES, NetConfig(rank=4))
    groups = net.param_groups(lr=1e-6, lr_lr=1e-4)
    assert [g["lr"] for g in groups] == [1e-6, 1e-4]
    assert len(groups[1]["params"]) == 1 and groups[1]["params"][0] is net.edit_lrs
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert id(net.edit_lrs) not in {id(p) for p in groups[0]["params"]}
    torch.optim.Adam(groups)  # a valid optimiser spec
    assert net.count_parameters() == sum(p.numel() for p in net.parameters()) - len(SHAPES)


# -- parameter counts (reference §1.10) -------------------------------------------------------------------------------
def _pairs(m: int, n: int, layers: int) -> list[tuple[int, int]]:
    return [(m, n), (n, m)] * layers


@pytest.mark.parametrize("shapes,expected", [
    (_pairs(768, 3072, 3), 59_089_920),       # distilGPT-2 / BERT-base
    (_pairs(768, 3072, 4), 59_120_640),       # BART-base
    (_pairs(1600, 6400, 3), 123_104_000),     # GPT-2-XL
    (_pairs(2560, 10240, 3), 196_966_400),    # GPT-Neo-2.7B
    (_pairs(4096, 16384, 3), 315_146_240),    # GPT-J-6B
    (_pairs(2048, 5120, 4), 110_358_528),     # T5-XL v1.1
    (_pairs(4096, 10240, 4), 220_717_056),    # T5-XXL v1.1
], ids=["distilgpt2", "bart-base", "gpt2-xl", "gpt-neo-2.7b", "gpt-j", "t5-xl", "t5-xxl"])
def test_parameter_counts_match_reference(shapes, expected):
    assert nets.parameter_count(shapes) == expected
    assert nets.parameter_count({f"w{i}": s for i, s in enumerate(shapes)}, NetConfig()) == expected


@pytest.mark.parametrize("variant,expected", [
    ("mend", 59_089_920), ("no_norm", 59_089_920), ("no_id_init", 59_089_920), ("no_share", 176_993_280),
    ("only_u", 26_006_016), ("only_delta", 26_006_016), ("only_smaller", 4_740_096),
])
def test_ablation_parameter_counts_distilgpt2(variant, expected):
    assert nets.parameter_count(_pairs(768, 3072, 3), NetConfig.variant(variant)) == expected


@pytest.mark.parametrize("auto,config,expected", [
    (AutoModelForCausalLM, GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257), 59_089_920),
    (AutoModelForCausalLM, GPTJConfig(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400,
                                      n_positions=2048), 315_146_240),
    (AutoModelForSeq2SeqLM, T5Config(d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
                                     d_kv=64, feed_forward_proj="gated-gelu", vocab_size=32128), 220_717_056),
], ids=["distilgpt2", "gpt-j", "t5-xxl"])
def test_parameter_counts_from_meta_models(auto, config, expected):
    with torch.device("meta"):
        model = auto.from_config(config)
    shapes = {n: shape_key(model, n) for n in default_edited_weights(model)}
    assert nets.parameter_count(shapes) == expected
    with torch.device("meta"):
        assert EditorNet(shapes, NetConfig()).count_parameters() == expected


# -- the acceptance test: identity MEND without normalisation is a plain gradient step --------------------------------
VOCAB = 40
IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)


def _tiny(auto, config):
    torch.manual_seed(0)
    return auto.from_config(config).double().eval()


TINY = {
    "gpt2": lambda: _tiny(AutoModelForCausalLM, GPT2Config(
        n_layer=4, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=32, **IDS, resid_pdrop=0, embd_pdrop=0,
        attn_pdrop=0)),
    "gpt_neo": lambda: _tiny(AutoModelForCausalLM, GPTNeoConfig(
        num_layers=4, hidden_size=16, num_heads=2, attention_types=[[["global", "local"], 2]], vocab_size=VOCAB,
        max_position_embeddings=32, window_size=4, **IDS, resid_dropout=0, embed_dropout=0, attention_dropout=0)),
    "bart": lambda: _tiny(AutoModelForSeq2SeqLM, BartConfig(
        d_model=16, encoder_layers=3, decoder_layers=3, encoder_ffn_dim=24, decoder_ffn_dim=24,
        encoder_attention_heads=2, decoder_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
        dropout=0, attention_dropout=0, activation_dropout=0)),
    "t5": lambda: _tiny(AutoModelForSeq2SeqLM, T5Config(
        d_model=16, d_ff=24, num_layers=3, num_decoder_layers=3, num_heads=2, d_kv=8, vocab_size=VOCAB,
        feed_forward_proj="gated-gelu", dropout_rate=0)),
    "bert": lambda: _tiny(AutoModelForSequenceClassification, BertConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=VOCAB,
        num_labels=1, hidden_dropout_prob=0, attention_probs_dropout_prob=0)),
}


def _enc(model, seed: int) -> dict:
    """Right-padded random requests of 3 rows, labelled like the collator does for the model's kind."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 6, 8])
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = (torch.arange(9) < lengths[:, None]).long()
    ids = ids * mask
    if model.config.model_type == "bert":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1.0, 0.0, 1.0])}
    if model.config.is_encoder_decoder:
        labels = torch.randint(3, VOCAB, (3, 4), generator=g)
        labels[1, 3:] = -100
        start = getattr(model.config, "decoder_start_token_id", None) or 0
        dec = torch.cat([torch.full((3, 1), start), labels[:, :-1].clamp(min=0)], 1)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "decoder_input_ids": dec,
                "decoder_attention_mask": (labels != -100).long()}
    labels = torch.full_like(ids, -100)
    for b, n in enumerate(lengths.tolist()):
        labels[b, n - 3:n] = ids[b, n - 3:n]  # the last 3 real tokens are the target
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _mean_nll(model, enc: dict) -> torch.Tensor:
    """The edit loss written out independently of mendlab.losses, in the model's dtype."""
    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    logits = model(**{k: v for k, v in enc.items() if k in keys}).logits
    labels = enc["labels"]
    if model.config.model_type == "bert":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.to(logits.dtype))
    if not model.config.is_encoder_decoder:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _sgd_step(model, names: list[str], enc: dict, lr: float):
    """A copy of ``model`` after one torch.optim.SGD step on the edited weights only, and its ΔW per weight."""
    stepped = copy.deepcopy(model)
    for n, p in stepped.named_parameters():
        p.requires_grad_(n in names)
    params = dict(stepped.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.SGD([params[n] for n in names], lr=lr)
    _mean_nll(stepped, enc).backward()
    opt.step()
    return stepped, {n: params[n].detach() - before[n] for n in names}


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("descent", [False, True])
def test_identity_mend_without_norm_is_a_plain_gradient_step(family, descent):
    model = TINY[family]()
    names = default_edited_weights(model)
    assert len(names) in (6, 8) and all(is_conv1d(model, n) is (family == "gpt2") for n in names)
    editor = MEND.for_model(model, NetConfig(norm=False), descent=descent)
    lr = 0.5
    with torch.no_grad():
        editor.net.edit_lrs.fill_(lr if descent else -lr)  # "+α" (official sign) with α = −lr, or descent with +lr
    enc, test = _enc(model, seed=0), _enc(model, seed=1)
    edit = editor.edit(model, enc)
    assert sorted(edit.names) == sorted(names) and not edit.dense

    params = dict(model.named_parameters())
    grads = torch.autograd.grad(_mean_nll(model, enc), [params[n] for n in names])
    stepped, sgd_delta = _sgd_step(model, names, enc, lr)
    for name, g in zip(names, grads, strict=True):
        delta = edit.delta(name)
        assert delta.shape == params[name].shape
        # the editor runs in float32 (as the official code does), so float32 precision is the bar
        scale = g.abs().max().item()
        torch.testing.assert_close(delta.double(), -lr * g, rtol=1e-5, atol=1e-6 * lr * scale)
        torch.testing.assert_close(delta.double(), sgd_delta[name], rtol=1e-5, atol=1e-6 * lr * scale)
        assert delta.abs().max() > 0

    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        post = edit.forward(model, test)
        ref = stepped(**{k: v for k, v in test.items() if k in keys}).logits
        pre = model(**{k: v for k, v in test.items() if k in keys}).logits
    torch.testing.assert_close(post, ref, rtol=1e-6, atol=1e-7)
    assert (post - pre).abs().max() > 1e3 * (post - ref).abs().max()  # the edit moved the logits, exactly like SGD
    with edit.applied(model), torch.no_grad():
        torch.testing.assert_close(model(**{k: v for k, v in test.items() if k in keys}).logits, ref,
                                   rtol=1e-6, atol=1e-7)


def test_identity_mend_with_norm_is_the_normalised_gradient():
    """With normalisation on, the untrained editor returns α Σ_t norm(δ_t) norm(u_t)ᵀ (reference §1.5 note)."""
    model = TINY["gpt2"]()
    editor = MEND.for_model(model, NetConfig()).train()
    enc = _enc(model, seed=0)
    edit = editor.edit(model, enc)
    with rank1.capture(model) as cap:
        rows = cap.rows(nll("decoder", forward(model, enc), enc["labels"]))
    groups: dict[tuple[int, int], list[str]] = {}
    for name in editor.names:
        groups.setdefault(shape_key(model, name), []).append(name)
    for members in groups.values():
        # statistics are pooled over the weights sharing a transform, one edit's rows folded in together
        u_all = torch.cat([rows[n].u for n in members]).double()
        d_all = torch.cat([rows[n].delta for n in members]).double()
        for name in members:
            u = (rows[name].u.double() - u_all.mean(0)) / (u_all.std(0) + 1e-7)
            d = (rows[name].delta.double() - d_all.mean(0)) / (d_all.std(0) + 1e-7)
            expected = 1e-4 * (u.T @ d)  # Conv1D layout [in, out]
            torch.testing.assert_close(edit.delta(name).double(), expected, rtol=1e-4, atol=1e-9)
        assert editor.net.transforms[nets.shape_name(shape_key(model, members[0]))].u_norm.count.item() == len(u_all)


def test_normaliser_cache_follows_its_statistics():
    norm = Normalizer(4)
    norm.update(torch.randn(10, 4))
    norm.eval()
    x = torch.randn(3, 4)
    first = norm(x)
    torch.testing.assert_close(first, (x - norm.mean.float()) / (norm.std.float() + 1e-7))
    norm.update(torch.randn(10, 4) * 5 + 3)  # new statistics: the cached ones must not be used
    torch.testing.assert_close(norm(x), (x - norm.mean.float()) / (norm.std.float() + 1e-7))
    other = Normalizer(4)
    other.load_state_dict({k: v * 2 for k, v in norm.state_dict().items()})
    other.eval()
    torch.testing.assert_close(other(x), (x - other.mean.float()) / (other.std.float() + 1e-7))
    assert not torch.allclose(other(x), norm(x))
