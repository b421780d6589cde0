"""Property tests (hypothesis): the Edit algebra and the collator's labels, for any shapes, layouts and texts.

- sums of edits are commutative and associative up to float tolerance;
- apply-then-revert gives every weight back bit for bit, also for stacked edits;
- save-then-load gives the same edit back exactly (tensors, layouts, meta, fingerprint);
- the collator labels exactly the target's tokens, for any prompt, target, padding side and length limit.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mendlab.data import Collator
from mendlab.edit import Edit, Factors, restore

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SHAPES = {"a.weight": (6, 4), "b.weight": (3, 5), "c.weight": (4, 4)}


class Toy(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(SHAPES[n][1], SHAPES[n][0], dtype=dtype) for n in ("a.weight", "b.weight",
                                                                                             "c.weight"))


@st.composite
def edits(draw):
    """A random edit of some of the toy's weights: each as factors (either layout) or dense, any rank."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    names = draw(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=3, unique=True))
    factors, dense = {}, {}
    for n in names:
        out, n_in = SHAPES[n]
        form = draw(st.sampled_from(["linear", "conv1d", "dense"]))
        if form == "dense":
            dense[n] = torch.randn(out, n_in, generator=g)
        else:
            rank, conv = draw(st.integers(1, 4)), form == "conv1d"
            # Conv1D stores [in, out]: a conv1d edit of an [out, in] weight has delta [r, in] and u [r, out]
            d, u = (n_in, out) if conv else (out, n_in)
            factors[n] = Factors(torch.randn(rank, d, generator=g), torch.randn(rank, u, generator=g), conv)
    return Edit(factors, dense, {"seed": draw(st.integers(0, 9))},
                draw(st.sampled_from([None, {"model_type": None, "name": "toy", "shapes": {}}])))


def _close(x: Edit, y: Edit):
    assert sorted(x.names) == sorted(y.names)
    for n in x.names:
        torch.testing.assert_close(x.delta(n), y.delta(n), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(edits(), edits())
def test_sum_is_commutative(a, b):
    _close(a + b, b + a)


@SETTINGS
@given(edits(), edits(), edits())
def test_sum_is_associative(a, b, c):
    _close((a + b) + c, a + (b + c))
    _close(sum([a, b, c]), a + b + c)


@SETTINGS
@given(st.lists(edits(), min_size=1, max_size=3), st.sampled_from([torch.float32, torch.float16, torch.float64]))
def test_apply_then_revert_is_the_identity_bit_for_bit(stack, dtype):
    torch.manual_seed(0)
    model = Toy(dtype)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    saved = [e.apply_(model) for e in stack]
    for s in reversed(saved):
        restore(model, s)
    with stack[0].applied(model):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


@SETTINGS
@given(edits())
def test_save_then_load_round_trips_exactly(edit):
    with tempfile.TemporaryDirectory() as tmp:
        loaded = Edit.load(edit.save(Path(tmp) / "e.safetensors"))
    assert loaded.meta == edit.meta and loaded.base == edit.base
    assert loaded.factors.keys() == edit.factors.keys() and loaded.dense.keys() == edit.dense.keys()
    for n, f in edit.factors.items():
        g = loaded.factors[n]
        assert g.conv1d == f.conv1d and torch.equal(g.delta, f.delta) and torch.equal(g.u, f.u)
    assert all(torch.equal(loaded.dense[n], d) for n, d in edit.dense.items())


# -- the collator --------------------------------------------------------------------------------------------------
TEXT = st.text(min_size=1, max_size=40).filter(lambda t: t.strip())


@SETTINGS
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3), st.sampled_from(["left", "right"]),
       st.sampled_from([None, 24]), st.booleans())
def test_decoder_labels_cover_exactly_the_targets_tokens(micro, pairs, side, max_length, gen):
    model, tok, _ = micro("gpt2")
    collator = Collator.for_model(model, tok, max_length=max_length)
    old, tok.padding_side = tok.padding_side, side
    try:
        targets = [tok(t if gen else " " + t, add_special_tokens=False)["input_ids"] for _, t in pairs]
        if any(len(t) >= collator.max_length for t in targets):
            return  # refused: tested in test_reliability
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the once-only truncation warning
            enc = collator.encode(pairs, gen=gen)
    finally:
        tok.padding_side = old
    assert enc["input_ids"].shape[1] <= collator.max_length
    for b, t in enumerate(targets):
        labels, ids, mask = enc["labels"][b], enc["input_ids"][b], enc["attention_mask"][b]
        assert labels[labels != -100].tolist() == t
        width = int(mask.sum())
        assert mask[:width].all() and not mask[width:].any()  # padding on the right
        assert ids[width - len(t):width].tolist() == t and (labels[width:] == -100).all()


@SETTINGS
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3), st.sampled_from(["left", "right"]))
def test_seq2seq_labels_are_exactly_the_targets_tokens(micro, pairs, side):
    model, tok, _ = micro("bart")
    collator = Collator.for_model(model, tok)
    old, tok.padding_side = tok.padding_side, side
    try:
        enc = collator.encode(pairs)
    finally:
        tok.padding_side = old
    for b, (_, t) in enumerate(pairs):
        labels = enc["labels"][b]
        assert labels[labels != -100].tolist() == tok(t)["input_ids"]
        assert enc["decoder_attention_mask"][b].sum() == len(tok(t)["input_ids"])
