"""Self-sampled generation targets: never the greedy continuation, tokenising back, seeded and cached."""

from __future__ import annotations

import torch

from mendlab import selfsample, tasks
from mendlab.data import Collator


def _greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    for _ in range(n):
        ids = torch.cat([ids, model(input_ids=ids).logits[0, -1].argmax().view(1, 1)], dim=1)
    return ids[0, -n:].tolist()


def test_targets_are_samples_other_than_the_greedy_continuation(micro, tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    model, tok, world = micro("gpt2")
    edits = tasks.from_world(world, "decoder", "gen", gen_variants=2).train[:12]
    got, stats = selfsample.retarget(edits, model, tok, progress=False)
    assert stats["n"] == 12 and len(got) == 12 - stats["dropped"] and len(got) > 0
    special = set(tok.all_special_ids)
    for e in got:
        ids = tok(e.target, add_special_tokens=False)["input_ids"]
        assert len(ids) == 10 and not special & set(ids)
        assert ids != _greedy(model, tok, e.prompt, 10)
        # the collator labels exactly those 10 tokens after the prompt
        enc = Collator.for_model(model, tok).encode([(e.prompt, e.target)], gen=True)
        assert enc["labels"][0][enc["labels"][0] != -100].tolist() == ids
    # the prompts, rephrases and locality are the world's; only the target changed
    assert [e.prompt for e in got] == [e.prompt for e in edits if e.prompt in {g.prompt for g in got}]
    assert (tmp_path / "selfsample").is_dir()
    again, _ = selfsample.retarget(edits, model, tok, progress=False)  # from the cache
    assert again == got


def test_sampling_is_seeded(micro):
    model, tok, world = micro("gpt2")
    prompts = [e.prompt for e in world.gen_edits("train")[:6]]
    a, _ = selfsample.sample_targets(model, tok, prompts, selfsample.SampleConfig(seed=3), progress=False)
    b, _ = selfsample.sample_targets(model, tok, prompts, selfsample.SampleConfig(seed=3), progress=False)
    c, _ = selfsample.sample_targets(model, tok, prompts, selfsample.SampleConfig(seed=4), progress=False)
    assert a == b and a != c


def test_a_certain_model_drops_the_request(micro):
    model, tok, world = micro("gpt2")
    prompts = [e.prompt for e in world.gen_edits("train")[:3]]
    cold = selfsample.SampleConfig(temperature=1e-6, tries=2)  # every sample is the greedy continuation
    got, stats = selfsample.sample_targets(model, tok, prompts, cold, progress=False)
    assert got == [None] * 3 and stats["dropped"] == 3 and stats["first_try_greedy"] == 1.0


def test_nucleus_keeps_the_most_likely_tokens_up_to_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]])
    got = selfsample._nucleus(probs, 0.9)
    assert torch.allclose(got[0], torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    assert torch.equal(got[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # the argmax alone already covers 0.9
    assert torch.equal(selfsample._nucleus(probs, 1.0), probs)


def test_nucleus_sampling_never_draws_a_tail_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    probs = selfsample._nucleus(torch.tensor([[0.6, 0.35, 0.03, 0.02]]).repeat(2000, 1), 0.9)
    draws = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    assert set(draws.tolist()) == {0, 1}
