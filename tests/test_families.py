"""Tests for mendlab.families: default weights at real checkpoint shapes (meta device), layouts, registry."""

from __future__ import annotations

import re

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BertConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoConfig,
    LlamaConfig,
    T5Config,
)

from mendlab.families import (
    REGISTRY,
    Family,
    UnsupportedModelError,
    default_edited_weights,
    edited_weights,
    get_family,
    is_conv1d,
    register,
    shape_key,
    supported,
)


def _meta(auto, config):
    with torch.device("meta"):
        return auto.from_config(config)


def _t5(d_model, d_ff, layers, heads, ffp):
    return T5Config(
        d_model=d_model, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers,
        num_heads=heads, d_kv=64, feed_forward_proj=ffp, vocab_size=32128,
    )


def _gpt(prefix, blocks, fc_in, fc_out):
    return [f"{prefix}.{i}.mlp.{w}.weight" for i in blocks for w in (fc_in, fc_out)]


def _t5_names(blocks, wi):
    enc = [f"encoder.block.{i}.layer.1.DenseReluDense.{w}.weight" for i in blocks for w in (wi, "wo")]
    dec = [f"decoder.block.{i}.layer.2.DenseReluDense.{w}.weight" for i in blocks for w in (wi, "wo")]
    return enc + dec


CASES = {
    "distilgpt2": (
        AutoModelForCausalLM,
        GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257),
        _gpt("transformer.h", (3, 4, 5), "c_fc", "c_proj"),
        (768, 3072),
    ),
    "gpt-j-6b": (
        AutoModelForCausalLM,
        GPTJConfig(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048),
        _gpt("transformer.h", (25, 26, 27), "fc_in", "fc_out"),
        (4096, 16384),
    ),
    "gpt-neo-2.7B": (
        AutoModelForCausalLM,
        GPTNeoConfig(
            num_layers=32, hidden_size=2560, num_heads=20, attention_types=[[["global", "local"], 16]],
            vocab_size=50257, max_position_embeddings=2048,
        ),
        _gpt("transformer.h", (29, 30, 31), "c_fc", "c_proj"),
        (2560, 10240),
    ),
    "t5-small-ssm-nq": (
        AutoModelForSeq2SeqLM, _t5(512, 1024, 8, 6, "gated-gelu"), _t5_names((6, 7), "wi_0"), (512, 1024),
    ),
    "t5-xxl-ssm-nq": (
        AutoModelForSeq2SeqLM, _t5(4096, 10240, 24, 64, "gated-gelu"), _t5_names((22, 23), "wi_0"), (4096, 10240),
    ),
    "t5-large": (
        AutoModelForSeq2SeqLM, _t5(1024, 4096, 24, 16, "relu"), _t5_names((22, 23), "wi"), (1024, 4096),
    ),
    "bart-base": (
        AutoModelForSeq2SeqLM,
        BartConfig(
            d_model=768, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
            encoder_attention_heads=12, decoder_attention_heads=12, vocab_size=50265,
        ),
        [f"model.{s}.layers.{i}.{w}.weight" for s in ("encoder", "decoder") for i in (4, 5) for w in ("fc1", "fc2")],
        (768, 3072),
    ),
    "bert-base": (
        AutoModelForSequenceClassification,
        BertConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=30522, num_labels=1,
        ),
        [f"bert.encoder.layer.{i}.{w}.dense.weight" for i in (9, 10, 11) for w in ("intermediate", "output")],
        (768, 3072),
    ),
}


@pytest.fixture(scope="module")
def models():
    return {key: _meta(auto, cfg) for key, (auto, cfg, _, _) in CASES.items()}


@pytest.fixture
def restore_registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture(scope="module")
def llama():
    cfg = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64,
    )
    return _meta(AutoModelForCausalLM, cfg)


def test_supported():
    assert supported() == ("bart", "bert", "gpt2", "gpt_neo", "gptj", "t5")


@pytest.mark.parametrize("key", CASES)
def test_default_weights_exact(models, key):
    expected = CASES[key][2]
    model = models[key]
    assert default_edited_weights(model) == expected
    assert edited_weights(model) == expected
    assert edited_weights(model, names=expected[::-1]) == expected[::-1]


@pytest.mark.parametrize("key", CASES)
def test_shape_key_and_layout(models, key):
    model, (d_in, d_hidden) = models[key], CASES[key][3]
    family = get_family(model)
    names = default_edited_weights(model)
    for up, down in zip(names[::2], names[1::2], strict=True):
        assert shape_key(model, up) == (d_in, d_hidden)
        assert shape_key(model, down) == (d_hidden, d_in)
    assert all(is_conv1d(model, n) is (family.model_type == "gpt2") for n in names)
    assert family.conv1d is (family.model_type == "gpt2")


def test_t5_gated_never_wi_1(models):
    for key in ("t5-small-ssm-nq", "t5-xxl-ssm-nq"):
        assert not any("wi_1" in n for n in default_edited_weights(models[key]))


def test_relative_names_and_lookup_by_type(models):
    model = models["distilgpt2"]
    assert get_family(model) is get_family(model.config) is get_family("gpt2") is REGISTRY["gpt2"]
    assert REGISTRY["gpt2"].default_weights(model.config)[:2] == ["h.3.mlp.c_fc.weight", "h.3.mlp.c_proj.weight"]
    assert len(REGISTRY["t5"].default_weights(CASES["t5-large"][1])) == 8


@pytest.mark.parametrize("key", CASES)
def test_kind_and_auto_class(models, key):
    auto, cfg, _, _ = CASES[key]
    family = get_family(cfg)
    assert family.auto_class == auto.__name__
    assert getattr(transformers, family.auto_class) is auto
    assert family.kind == {"AutoModelForCausalLM": "decoder", "AutoModelForSeq2SeqLM": "seq2seq"}.get(
        auto.__name__, "classifier"
    )


@pytest.mark.parametrize(
    "auto,config",
    [
        (AutoModelForCausalLM, GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16)),
        (AutoModelForCausalLM, GPTNeoConfig(
            num_layers=2, hidden_size=16, num_heads=2, attention_types=[[["global", "local"], 1]], vocab_size=32,
        )),
        (AutoModelForSequenceClassification, BertConfig(
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24, vocab_size=32,
        )),
    ],
)
def test_shape_key_matches_forward(auto, config):
    model = auto.from_config(config)
    names = default_edited_weights(model)
    assert len(names) == 2 * min(3, config.num_hidden_layers)
    for name in names:
        d_in, d_out = shape_key(model, name)
        out = model.get_submodule(name.rpartition(".")[0])(torch.zeros(1, d_in))
        assert out.shape == (1, d_out)


def test_unsupported_model(llama):
    msg = r"'llama'.*bart, bert, gpt2, gpt_neo, gptj, t5.*names=\["
    with pytest.raises(UnsupportedModelError, match=msg):
        get_family(llama)
    with pytest.raises(UnsupportedModelError, match="llama"):
        default_edited_weights(llama)
    with pytest.raises(ValueError, match=re.escape("MEND.for_model(model, config, names=[...])")):
        edited_weights(llama)
    with pytest.raises(UnsupportedModelError, match="opt"):
        get_family("opt")


def test_explicit_names_on_unknown_family(llama):
    names = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert edited_weights(llama, names=names) == names
    assert edited_weights(llama, names=tuple(names)) == names
    assert shape_key(llama, names[0]) == (16, 32)
    assert shape_key(llama, names[1]) == (32, 16)
    assert not is_conv1d(llama, names[0])


def test_bad_explicit_names(llama):
    with pytest.raises(KeyError, match=r"up_proj\.wieght.*close candidates.*model\.layers\.1\.mlp\.up_proj\.weight"):
        edited_weights(llama, names=["model.layers.1.mlp.up_proj.wieght"])
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        edited_weights(llama, names=["layers.1.mlp.down_proj.weight"])
    with pytest.raises(ValueError, match=r"input_layernorm\.weight.*2-D"):
        edited_weights(llama, names=["model.layers.1.input_layernorm.weight"])
    with pytest.raises(ValueError, match="duplicate"):
        edited_weights(llama, names=["model.layers.1.mlp.up_proj.weight"] * 2)
    with pytest.raises(ValueError, match="empty"):
        edited_weights(llama, names=[])
    with pytest.raises(KeyError, match="nope"):
        shape_key(llama, "nope.weight")


def test_conv1d_detected_by_module_type_when_unregistered(models, restore_registry):
    model = models["distilgpt2"]
    del REGISTRY["gpt2"]
    with pytest.raises(UnsupportedModelError):
        get_family(model)
    assert is_conv1d(model, "transformer.h.5.mlp.c_fc.weight")
    assert shape_key(model, "transformer.h.5.mlp.c_proj.weight") == (3072, 768)
    assert not is_conv1d(model, "transformer.wte.weight")


def test_register_custom_family(llama, restore_registry):
    def weights(config):
        n = config.num_hidden_layers
        return [f"layers.{n - 1}.mlp.{w}.weight" for w in ("up_proj", "down_proj")]

    register(Family("llama", "decoder", "AutoModelForCausalLM", False, weights))
    assert "llama" in supported()
    assert default_edited_weights(llama) == ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def test_register_replaces_and_checks_conv1d_flag(models, restore_registry):
    gpt2 = REGISTRY["gpt2"]
    register(Family("gpt2", "decoder", "AutoModelForCausalLM", False, gpt2.default_weights))
    with pytest.raises(ValueError, match="conv1d"):
        default_edited_weights(models["distilgpt2"])
    register(Family("gpt2", "decoder", "AutoModelForCausalLM", True, lambda c: ["h.0.mlp.missing.weight"]))
    with pytest.raises(KeyError, match="missing"):
        default_edited_weights(models["distilgpt2"])


def test_registry_restored():
    assert "llama" not in REGISTRY
    assert REGISTRY["gpt2"].conv1d


def test_family_validation():
    with pytest.raises(ValueError, match="kind"):
        Family("x", "encoder", "AutoModel", False, lambda c: [])
    with pytest.raises(TypeError):
        register("gpt2")  # type: ignore[arg-type]
