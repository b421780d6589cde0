"""Tests for mendlab.data: readers (world round trip and MEND's real layouts) and collators."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mendlab.data import (
    LABELS,
    Collator,
    EditBatch,
    EditExample,
    drop_first_sentence,
    read_fever,
    read_nq,
    read_self_sample,
    read_wikitext,
    read_zsre,
)
from mendlab.world import SPLITS, World, WorldConfig
from mendlab.zoo import BOS, EOS, PAD, build_tokenizer

DATA = Path(__file__).parent / "data"
SMALL = WorldConfig(seed=0, n_subjects=40)


@pytest.fixture(scope="module")
def world() -> World:
    return World(SMALL)


@pytest.fixture(scope="module")
def toks(world) -> dict:
    return {kind: build_tokenizer(world, 8192, kind) for kind in ("decoder", "seq2seq", "seq2seq_t5", "classifier")}


@pytest.fixture(scope="module")
def written(world, tmp_path_factory) -> dict[str, Path]:
    return world.write(tmp_path_factory.mktemp("world"))


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """The readers go through ``datasets``, which caches Arrow files; keep them out of ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _row(t: torch.Tensor, i: int, n: int | None = None) -> list[int]:
    return t[i, :n].tolist() if n is not None else t[i].tolist()


# ======================================================================================================================
# Round trip: world → write() → readers → the same EditExamples
# ======================================================================================================================
@pytest.mark.parametrize("split", SPLITS)
def test_round_trip_zsre(world, written, split):
    got = read_zsre(written[f"zsre_{split}"])
    assert got == world.qa_edits(split)
    assert len(got) == len(world.subjects_in(split)) * len(world.relations)


@pytest.mark.parametrize("split", SPLITS)
def test_round_trip_fever(world, written, split):
    got = read_fever(written[f"fever_{split}"])
    assert got == world.claim_edits(split)


def test_read_zsre_drops_record_whose_only_rephrase_is_the_input(tmp_path):
    recs = [
        {"input": "Who wrote Dune?", "prediction": "Frank Herbert", "alternatives": ["Isaac Asimov"],
         "filtered_rephrases": ["Who wrote Dune?"], "output": [{"answer": "Frank Herbert"}]},
        {"input": "Who painted the Mona Lisa?", "prediction": "Leonardo da Vinci", "alternatives": ["Raphael"],
         "filtered_rephrases": ["Who is the painter of the Mona Lisa?"], "output": [{"answer": "Leonardo da Vinci"}]},
    ]
    path = tmp_path / "z.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = read_zsre(path)
    assert [e.prompt for e in got] == ["Who painted the Mona Lisa?"]
    assert all(e.rephrases for e in got)


def test_read_fever_real_layout():
    got = read_fever(DATA / "fever_sample.jsonl")
    assert [e.prompt for e in got] == ["Nepal borders France.", "Belgium is made up of three regions.",
                                       "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company."]
    nepal, belgium, nikolaj = got
    assert nepal == EditExample(
        prompt="Nepal borders France.", target="SUPPORTS",
        rephrases=("Nepal is bordered by France.", "France shares a border with Nepal."), heldout_rephrases=(),
        locality=("Belgium is made up of three regions.", "SUPPORTS"), original="REFUTES", kind="claim")
    assert (belgium.original, belgium.target) == ("SUPPORTS", "REFUTES")
    # a wrong base prediction: the edit flips the *prediction*; as locality it carries its *gold* label
    assert (nikolaj.original, nikolaj.target) == ("REFUTES", "SUPPORTS")
    assert belgium.locality == ("Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.", "SUPPORTS")
    assert nikolaj.locality == ("Nepal borders France.", "REFUTES")
    for e in got:
        assert {e.original, e.target} == set(LABELS)


def test_read_self_sample_real_english(toks):
    tok = toks["decoder"]
    blob = json.loads((DATA / "self_sample_sample.json").read_text())
    got = read_self_sample(DATA / "self_sample_sample.json", tok)
    assert len(got) == len(blob["completions"]) == 3
    for e, text in zip(got, blob["completions"], strict=True):
        assert e.kind == "gen" and e.locality is None and e.original is None
        assert e.prompt + e.target == text
        ids = _ids(tok, text)
        assert len(ids) > 10
        # the target is exactly the text of the completion's last 10 tokens (leading whitespace included)
        assert tok.decode(ids[-10:], clean_up_tokenization_spaces=False) == e.target
        assert tok.decode(ids[:-10], clean_up_tokenization_spaces=False).lstrip() == e.prompt
        assert not e.prompt.endswith((" ", "\n"))
        assert e.rephrases == (drop_first_sentence(e.prompt),)
        assert e.rephrases[0] == e.prompt.split(". ", 1)[1]
    assert any(not e.target[0].isspace() for e in got)  # some target starts mid-word (like MEND's "At|torney")
    assert got[0].prompt.startswith("Saprang Kalayanamitr is a Thai military officer")
    assert got[0].target.endswith("replaced by a general")


def test_read_self_sample_n_tokens_is_read_from_the_file(tmp_path, toks):
    tok = toks["decoder"]
    text = "Halley observed the transit of Mercury from Saint Helena in 1677 and wrote about it."
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"n_tokens": 3, "original": [text], "completions": [text]}))
    (e,) = read_self_sample(path, tok)
    assert e.prompt + e.target == text
    assert tok.decode(_ids(tok, text)[-3:], clean_up_tokenization_spaces=False) == e.target


def test_read_self_sample_too_short(tmp_path, toks):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"n_tokens": 10, "original": ["Hi."], "completions": ["Hi there."]}))
    with pytest.raises(ValueError, match="shorter than n_tokens=10"):
        read_self_sample(path, toks["decoder"])


def test_read_nq_real_layout(tmp_path):
    got = read_nq(DATA / "nq_sample.json")
    assert got == [("Who sang the song i don't care anymore?", "Phil Collins"),
                   ("Where is the eiffel tower located?", "Paris"),
                   ("When did the titanic sink?", "15 April 1912"),
                   ("Who wrote the novel pride and prejudice?", "Jane Austen")]
    bad = tmp_path / "nq.json"
    bad.write_text(json.dumps({"questions": ["Who?", "What?"], "answers": ["Me"]}))
    with pytest.raises(ValueError):
        read_nq(bad)


def test_read_wikitext_real_layout():
    got = read_wikitext(DATA / "wikitext_sample.raw")
    assert got == [
        "= Saprang Kalayanamitr =",
        "Saprang Kalayanamitr is a Thai military officer and a former Assistant Commander @-@ in @-@ Chief of the "
        "Royal Thai Army . He was one of the leaders of the 2006 coup .",
        "= = Career = =",
        "After the coup , Saprang was appointed Secretary @-@ General of the Council for National Security .",
    ]


def test_drop_first_sentence():
    assert drop_first_sentence("A b. C d. E f.") == "C d. E f."
    assert drop_first_sentence("Just one sentence.") == "Just one sentence."
    assert drop_first_sentence("Trailing. ") == "Trailing. "


# ======================================================================================================================
# Collator
# ======================================================================================================================
def _right_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def _mixed_lengths(world, n: int = 6) -> list[EditExample]:
    """Val QA edits whose prompts have different lengths, so padding shows."""
    edits = world.qa_edits("val")
    edits = sorted(edits, key=lambda e: len(e.prompt))
    return [edits[0], edits[-1], *edits[1:n - 1]]


def test_decoder_encode(world, toks):
    tok = toks["decoder"]
    pairs = [(e.prompt, e.target) for e in _mixed_lengths(world)]
    enc = Collator(tok, "decoder").encode(pairs)
    assert set(enc) == {"input_ids", "attention_mask", "labels"}
    rows = [(_ids(tok, p), _ids(tok, " " + t)) for p, t in pairs]
    width = max(len(p) + len(t) for p, t in rows)
    for k in enc:
        assert enc[k].shape == (len(pairs), width) and enc[k].dtype == torch.long
    assert _right_padded(enc["attention_mask"])
    assert (enc["attention_mask"] == 0).any()
    for i, ((p, t), (prompt, target)) in enumerate(zip(rows, pairs, strict=True)):
        n = len(p) + len(t)
        assert p + t == _ids(tok, prompt + " " + target)
        assert _row(enc["input_ids"], i, n) == p + t
        assert _row(enc["input_ids"], i)[n:] == [tok.pad_token_id] * (width - n)
        assert _row(enc["attention_mask"], i) == [1] * n + [0] * (width - n)
        assert _row(enc["labels"], i) == [-100] * len(p) + t + [-100] * (width - n)
        assert tok.decode(t) == " " + target


def test_decoder_gen_targets_keep_their_leading_space(world, toks):
    tok = toks["decoder"]
    edits = world.gen_edits("val")
    enc = Collator(tok, "decoder").encode([(e.prompt, e.target) for e in edits], gen=True)
    for i, e in enumerate(edits):
        labels = [x for x in _row(enc["labels"], i) if x != -100]
        assert labels == _ids(tok, e.target) and len(labels) == world.config.gen_tokens
        assert tok.decode(labels, clean_up_tokenization_spaces=False) == e.target
        n = int(enc["attention_mask"][i].sum())
        assert _row(enc["input_ids"], i, n) == _ids(tok, e.prompt + e.target)
    # without gen=True a space would be added in front of the (already spaced) target
    plain = Collator(tok, "decoder").encode([(edits[0].prompt, edits[0].target)])
    assert [x for x in _row(plain["labels"], 0) if x != -100] != _ids(tok, edits[0].target)


def test_decoder_locality_without_answer_labels_every_token(world, toks):
    tok = toks["decoder"]
    passage = world.passages("val")[0]
    short = world.qa_edits("val")[0]
    enc = Collator(tok, "decoder").encode([(passage, ""), (short.prompt, short.target)])
    ids = _ids(tok, passage)
    assert enc["input_ids"].shape[1] == len(ids)  # the passage is the longest row
    assert _row(enc["input_ids"], 0) == ids
    assert _row(enc["labels"], 0) == ids
    n = int(enc["attention_mask"][1].sum())
    assert n < len(ids)
    assert _row(enc["labels"], 1)[n:] == [-100] * (len(ids) - n)
    assert (enc["labels"][enc["attention_mask"] == 0] == -100).all()


def test_decoder_truncation_keeps_the_target(world, toks):
    tok = toks["decoder"]
    e = world.qa_edits("val")[0]
    enc = Collator(tok, "decoder", max_length=6).encode([(e.prompt, e.target)])
    t = _ids(tok, " " + e.target)
    assert enc["input_ids"].shape == (1, 6)
    assert _row(enc["labels"], 0)[-len(t):] == t
    assert _row(enc["input_ids"], 0) == (_ids(tok, e.prompt) + t)[-6:]


def test_decoder_truncates_locality_passages(world, toks):
    tok = toks["decoder"]
    passage = " ".join(world.passages("val"))
    assert len(_ids(tok, passage)) > 16
    enc = Collator(tok, "decoder", max_length=16).encode([(passage, "")])
    assert enc["input_ids"].shape == (1, 16)
    assert torch.equal(enc["labels"], enc["input_ids"])


@pytest.mark.parametrize("kind,start", [("seq2seq", EOS), ("seq2seq_t5", PAD)])
def test_seq2seq_encode(world, toks, kind, start):
    tok = toks[kind]
    pairs = [(e.prompt, e.target) for e in _mixed_lengths(world)] + [("What is the pet of nobody?", "a big dog")]
    enc = Collator(tok, "seq2seq", decoder_start_token_id=start).encode(pairs)
    assert set(enc) == {"input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask"}
    src = [tok(p)["input_ids"] for p, _ in pairs]
    tgt = [tok(t)["input_ids"] for _, t in pairs]
    ws, wt = max(map(len, src)), max(map(len, tgt))
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (len(pairs), ws)
    assert enc["labels"].shape == enc["decoder_input_ids"].shape == enc["decoder_attention_mask"].shape
    assert enc["labels"].shape == (len(pairs), wt)
    assert wt > min(map(len, tgt))  # some label padding to check
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        assert _row(enc["input_ids"], i) == s + [tok.pad_token_id] * (ws - len(s))
        assert _row(enc["attention_mask"], i) == [1] * len(s) + [0] * (ws - len(s))
        assert _row(enc["labels"], i) == t + [-100] * (wt - len(t))
        assert t[-1] == EOS and (t[0] == BOS) == (kind == "seq2seq")
        assert s[-1] == EOS and (s[0] == BOS) == (kind == "seq2seq")
    labels = enc["labels"]
    assert (enc["decoder_input_ids"][:, 0] == start).all()
    shifted = labels[:, :-1].masked_fill(labels[:, :-1] == -100, tok.pad_token_id)
    assert torch.equal(enc["decoder_input_ids"][:, 1:], shifted)
    assert torch.equal(enc["decoder_attention_mask"], (labels != -100).long())
    assert _right_padded(enc["attention_mask"]) and _right_padded(enc["decoder_attention_mask"])


def test_seq2seq_decoder_inputs_match_hf_shift(world, toks):
    from transformers.models.bart.modeling_bart import shift_tokens_right

    tok = toks["seq2seq"]
    pairs = [(e.prompt, e.target) for e in _mixed_lengths(world)]
    enc = Collator(tok, "seq2seq", decoder_start_token_id=EOS).encode(pairs)
    assert torch.equal(enc["decoder_input_ids"], shift_tokens_right(enc["labels"], tok.pad_token_id, EOS))


def test_classifier_encode(world, toks):
    tok = toks["classifier"]
    edits = world.claim_edits("val")
    pairs = [(e.prompt, e.target) for e in edits]
    enc = Collator(tok, "classifier").encode(pairs)
    assert set(enc) == {"input_ids", "attention_mask", "labels"}
    assert enc["labels"].shape == (len(pairs),) and enc["labels"].dtype == torch.float32
    assert enc["labels"].tolist() == [1.0 if t == "SUPPORTS" else 0.0 for _, t in pairs]
    assert set(enc["labels"].tolist()) == {0.0, 1.0}
    assert enc["input_ids"].shape == enc["attention_mask"].shape and enc["input_ids"].shape[0] == len(pairs)
    assert _right_padded(enc["attention_mask"]) and (enc["attention_mask"] == 0).any()
    for i, (p, _) in enumerate(pairs):
        ids = tok(p)["input_ids"]
        assert ids[0] == BOS and ids[-1] == EOS
        assert _row(enc["input_ids"], i) == ids + [tok.pad_token_id] * (enc["input_ids"].shape[1] - len(ids))


def test_edit_batch_decoder(world, toks):
    tok = toks["decoder"]
    col = Collator(tok, "decoder")
    edits = _mixed_lengths(world, 4)
    batch = col(edits)
    assert isinstance(batch, EditBatch) and batch.examples == edits
    expect = {
        "edit_inner": col.encode([(e.prompt, e.target) for e in edits]),
        "edit_outer": col.encode([(e.rephrases[0], e.target) for e in edits]),
        "loc": col.encode([e.locality for e in edits]),
    }
    for name, want in expect.items():
        got = getattr(batch, name)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert not torch.equal(batch.edit_inner["input_ids"][:, :4], batch.edit_outer["input_ids"][:, :4])
    # x'_e and x_e carry the same target tokens
    for i in range(len(edits)):
        a = [x for x in _row(batch.edit_inner["labels"], i) if x != -100]
        b = [x for x in _row(batch.edit_outer["labels"], i) if x != -100]
        assert a == b == _ids(tok, " " + edits[i].target)


def test_edit_batch_random_rephrase(world, toks):
    col = Collator(toks["decoder"], "decoder")
    edits = world.qa_edits("val")[:8]
    batch = col(edits, rng=random.Random(0))
    replay = random.Random(0)
    chosen = [replay.choice(e.rephrases) for e in edits]
    assert all(c in e.rephrases for c, e in zip(chosen, edits, strict=True))
    assert chosen != [e.rephrases[0] for e in edits]  # really random, not the first one
    want = col.encode([(c, e.target) for c, e in zip(chosen, edits, strict=True)])
    assert all(torch.equal(batch.edit_outer[k], want[k]) for k in want)


def test_edit_batch_gen_and_claims(world, toks):
    gen = world.gen_edits("val")
    col = Collator(toks["decoder"], "decoder")
    batch = col(gen)
    # the locality text is language-modelled: every token is a label
    loc = batch.loc
    assert torch.equal(loc["labels"][loc["attention_mask"] == 1], loc["input_ids"][loc["attention_mask"] == 1])
    assert torch.equal(batch.edit_inner["input_ids"], col.encode([(e.prompt, e.target) for e in gen], gen=True)
                       ["input_ids"])
    assert torch.equal(batch.edit_outer["labels"], col.encode([(e.rephrases[0], e.target) for e in gen], gen=True)
                       ["labels"])
    claims = world.claim_edits("val")[:6]
    cb = Collator(toks["classifier"], "classifier")(claims)
    assert cb.edit_inner["labels"].tolist() == [float(e.target == "SUPPORTS") for e in claims]
    assert torch.equal(cb.edit_outer["labels"], cb.edit_inner["labels"])
    assert cb.loc["labels"].tolist() == [1.0] * len(claims)


def test_edit_batch_without_rephrases_uses_the_prompt(toks):
    col = Collator(toks["decoder"], "decoder")
    e = EditExample(prompt="Where was Dreikou born?", target="Stepenville")
    batch = col([e])
    assert torch.equal(batch.edit_outer["input_ids"], batch.edit_inner["input_ids"])
    assert batch.loc is None


def test_edit_batch_seq2seq_and_to(world, toks):
    col = Collator(toks["seq2seq"], "seq2seq", decoder_start_token_id=EOS)
    edits = world.qa_edits("test")[:3]
    batch = col(edits)
    assert set(batch.edit_inner) == {"input_ids", "attention_mask", "labels", "decoder_input_ids",
                                     "decoder_attention_mask"}
    assert torch.equal(batch.edit_inner["labels"], batch.edit_outer["labels"])
    moved = batch.to("cpu")
    assert isinstance(moved, EditBatch) and moved.examples == edits
    for name in ("edit_inner", "edit_outer", "loc"):
        for k, v in getattr(batch, name).items():
            assert getattr(moved, name)[k].device.type == "cpu" and torch.equal(getattr(moved, name)[k], v)
    no_loc = [dataclasses.replace(e, locality=None) for e in world.gen_edits("test")[:2]]
    gen_batch = Collator(toks["decoder"], "decoder")(no_loc).to(torch.device("cpu"))  # .to() keeps a missing loc
    assert gen_batch.loc is None


def test_collator_for_model(toks):
    from transformers import BartConfig, GPT2Config

    bart = SimpleNamespace(config=BartConfig(vocab_size=64, d_model=8, decoder_start_token_id=EOS))
    col = Collator.for_model(bart, toks["seq2seq"], max_length=20)
    assert (col.kind, col.start, col.max_length) == ("seq2seq", EOS, 20)
    gpt = SimpleNamespace(config=GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2))
    assert Collator.for_model(gpt, toks["decoder"]).kind == "decoder"


def test_collator_errors(world, toks):
    with pytest.raises(ValueError, match="unknown model kind"):
        Collator(toks["decoder"], "encoder")
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        Collator(toks["seq2seq"], "seq2seq")
    no_pad = build_tokenizer(world, 8192, "decoder")  # a private copy: do not touch the shared fixture
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    with pytest.raises(ValueError, match="pad token"):
        Collator(no_pad, "decoder")
    assert toks["decoder"].pad_token_id == PAD
