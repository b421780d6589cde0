"""losses.labelled_logits: a decoder's LM head on the labelled positions only, with unchanged scores."""

import pytest
import torch

from mendlab import losses
from mendlab.data import Collator


@pytest.mark.parametrize("model_type", ["gpt2", "bart"])
def test_labelled_logits_score_like_the_full_forward(micro, model_type):
    model, tok, world = micro(model_type)
    kind = "decoder" if model_type == "gpt2" else "seq2seq"
    pairs = world.qa_pairs(split="train")[:3] + [(world.passage(world.subjects_in("train")[0], 2), "")]
    if kind == "seq2seq":
        pairs = pairs[:3]
    enc = Collator.for_model(model, tok).encode(pairs)
    full = losses.forward(model, enc)
    params = {n: p + 0.01 for n, p in model.named_parameters() if n.endswith("mlp.c_fc.weight") or "fc1" in n}
    for p in (None, params):
        logits, labels, k = losses.labelled_logits(model, kind, enc, p)
        ref = losses.forward(model, enc, p) if p else full
        torch.testing.assert_close(losses.nll(k, logits, labels), losses.nll(kind, ref, enc["labels"]))
        torch.testing.assert_close(losses.nll_per_example(k, logits, labels),
                                   losses.nll_per_example(kind, ref, enc["labels"]))
        assert torch.equal(losses.correct(k, logits, labels), losses.correct(kind, ref, enc["labels"]))
    if kind == "decoder":  # fewer positions projected onto the vocabulary
        assert logits.shape[1] < full.shape[1]
