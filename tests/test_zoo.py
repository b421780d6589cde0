"""The zoo: build, cache, load through from_pretrained; the acceptance table as a slow test."""

import json

import pytest
import torch

from mendlab import zoo
from mendlab.world import PRETOKEN, World, WorldConfig

MICRO = zoo.ZooSpec("micro-gpt2", "gpt2", dict(n_layer=2, n_embd=32, n_head=2, n_positions=128), steps=30,
                    passage_every=3, batch_size=16, world=WorldConfig(n_subjects=12))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    return tmp_path


def test_build_caches_and_loads(cache):
    card = zoo.build(MICRO, progress=False)
    assert not card["cached"] and card["path"].startswith(str(cache))
    for key in ("name", "path", "params", "seconds", "acc_train", "acc_heldout_template"):
        assert key in card
    assert 0.0 <= card["acc_train"] <= 1.0
    again = zoo.build(MICRO, progress=False)
    assert again["cached"] and again["path"] == card["path"] and again["params"] == card["params"]
    model, tok = zoo.load(card["path"])
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert sum(p.numel() for p in model.parameters()) == card["params"]
    assert tok.pad_token_id == zoo.PAD and tok.eos_token_id == zoo.EOS
    assert zoo.world_of(card["path"]).subjects == World(MICRO.world).subjects


def test_same_spec_same_weights(cache):
    a, _, _ = zoo.train_model(MICRO, progress=False)
    b, _, _ = zoo.train_model(MICRO, progress=False)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kind", ["decoder", "seq2seq", "seq2seq_t5", "classifier"])
def test_every_world_word_is_one_token(kind):
    world = World(WorldConfig(n_subjects=30))
    tok = zoo.build_tokenizer(world, 8192, kind)
    for text in world.corpus():  # one token per word or punctuation mark
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == len(PRETOKEN.findall(text)), text
    ids = tok("Where was X born?")["input_ids"]
    expected = {"decoder": (None, None), "seq2seq": (zoo.BOS, zoo.EOS), "seq2seq_t5": (None, zoo.EOS),
                "classifier": (zoo.BOS, zoo.EOS)}[kind]
    assert (ids[0] == zoo.BOS) == (expected[0] == zoo.BOS)
    assert (ids[-1] == zoo.EOS) == (expected[1] == zoo.EOS)


def test_load_a_plain_local_folder(tmp_path):
    """Any checkpoint folder loads through the same path as a zoo name (here: one saved by hand)."""
    from transformers import BartConfig, BartForConditionalGeneration

    world = World(WorldConfig(n_subjects=10))
    tok = zoo.build_tokenizer(world, 8192, "seq2seq")
    cfg = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                     max_position_embeddings=64)
    BartForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = zoo.load(str(tmp_path))
    assert type(model).__name__ == "BartForConditionalGeneration"
    assert tok2("Where was X born?")["input_ids"] == tok("Where was X born?")["input_ids"]


def test_unknown_zoo_name():
    with pytest.raises(KeyError, match="tiny-gpt2"):
        zoo.spec("tiny-llama", "ci")


def test_variant_changes_only_what_it_names(cache):
    base = zoo.spec("tiny-bert", "ci", seed=1)
    v = zoo.variant("tiny-bert", "ci", seed=1, config={"num_hidden_layers": 6}, steps=1200, world_n_subjects=80)
    assert v.config == {**base.config, "num_hidden_layers": 6}
    assert (v.steps, v.world.n_subjects, v.world.seed, v.seed) == (1200, 80, 1, 1)
    assert v.lr == base.lr and v.cloze_steps == base.cloze_steps
    assert zoo.cache_path(v) != zoo.cache_path(base) and zoo.cache_path(v).name.startswith("tiny-bert-")
    assert zoo.variant("tiny-bert", "ci", seed=1) == base
    assert zoo.variant("tiny-gpt2", "ci", config={"n_layer": 4}).config["n_layer"] == 4  # an attribute alias


def test_named_variant_is_its_base_widened_and_not_in_the_course_zoo():
    base, wide = zoo.spec("tiny-bart", "full", seed=2), zoo.spec("tiny-bart-wide", "full", seed=2)
    assert wide.name == "tiny-bart-wide" and "tiny-bart-wide" not in zoo.names()
    assert zoo.known("tiny-bart-wide") and zoo.known("tiny-bart") and not zoo.known("./tiny-bart-wide")
    assert wide.config == {**base.config, "d_model": 256, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}
    assert (wide.world, wide.steps, wide.warmup, wide.seed) == (base.world, base.steps, base.warmup, base.seed)
    assert wide.lr == 1e-3 < base.lr
    assert zoo.cache_path(wide) != zoo.cache_path(base) and zoo.cache_path(wide).name.startswith("tiny-bart-wide-")
    assert zoo.world_of("tiny-bart-wide", "ci", seed=1).config == zoo.world_of("tiny-bart", "ci", seed=1).config
    with pytest.raises(KeyError, match="tiny-bart-wide"):
        zoo.spec("tiny-bart-wider", "ci")


def test_variant_refuses_settings_that_do_not_exist():
    with pytest.raises(ValueError, match="num_layerz"):
        zoo.variant("tiny-bert", "ci", config={"num_layerz": 6})
    with pytest.raises(ValueError, match="world_n_subjects"):
        zoo.variant("tiny-bert", "ci", stepz=3)
    with pytest.raises(ValueError, match="world_n_subjectz"):
        zoo.variant("tiny-bert", "ci", world_n_subjectz=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_acceptance(name):
    """Every zoo model of the active profile knows the world (issue #2's acceptance bars)."""
    card = zoo.build(name, progress=False)
    print(json.dumps({k: card[k] for k in ("name", "params", "seconds", "cached", "acc_train",
                                          "acc_heldout_template")}))
    assert card["acc_train"] >= 0.95
    if zoo.spec(name).model_type != "bert":
        assert card["acc_heldout_template"] >= 0.80


def test_probe_table(cache):
    from mendlab import probe
    from mendlab.world import N_TEMPLATES

    card = zoo.build(MICRO, progress=False)
    model, tok = zoo.load(card["path"])
    world = zoo.world_of(card["path"])
    subjects = world.subjects_in("test")[:2]
    df = probe.knowledge(model, tok, world, subjects)
    assert len(df) == 2 * len(world.relations) * N_TEMPLATES
    assert df.heldout_template.sum() == 2 * len(world.relations)
    assert set(df.truth) <= {o for r in world.relations for o in r.objects}
    assert df.correct.equals(df.prediction == df.truth)
    assert list(probe.summary(df).columns) == ["trained templates", "held-out template"]


def test_a_build_trains_on_one_thread_and_restores_the_callers(monkeypatch):
    seen = []
    loss = zoo._loss
    monkeypatch.setattr(zoo, "_loss", lambda *a: (seen.append(torch.get_num_threads()), loss(*a))[1])
    torch.set_num_threads(2)
    try:
        zoo.train_model(MICRO, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert seen and set(seen) == {1}
