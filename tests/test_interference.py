"""The coherence of a set of edits and the growth of their sum (mendlab.interference), against dense
computations on hand-built EditSets and on the edits MEND makes on a micro model."""

from __future__ import annotations

import math

import pytest
import torch

from mendlab import interference, rank1, tasks
from mendlab.data import Collator
from mendlab.edit import EditSet, Factors
from mendlab.editors import MEND
from mendlab.families import get_family
from mendlab.nets import NetConfig


def _edit_set(delta: torch.Tensor, u: torch.Tensor, owner: torch.Tensor, size: int, conv1d=False) -> EditSet:
    return EditSet({"w": Factors(delta, u, conv1d)}, {"w": owner}, size)


def _random(b=6, rows=3, out=4, n_in=5, seed=0, conv1d=False) -> EditSet:
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(b).repeat_interleave(rows)
    return _edit_set(torch.randn(b * rows, out, generator=g, dtype=torch.float64),
                     torch.randn(b * rows, n_in, generator=g, dtype=torch.float64), owner, b, conv1d)


def _dense(s: EditSet) -> torch.Tensor:
    return torch.stack([s[b].factors["w"].dense() for b in range(len(s))])  # [B, ...]


def test_coherence_matches_pairwise_inner_products():
    s = _random()
    d = _dense(s).flatten(1)
    gram = d @ d.T
    b = len(s)
    mean_sq = gram.diagonal().mean()
    rho = (gram.sum() - gram.diagonal().sum()) / (b * (b - 1)) / mean_sq
    row = interference.coherence(s).iloc[0]
    assert row["edits"] == b
    assert row["size"] == pytest.approx(float(mean_sq.sqrt()), rel=1e-10)
    assert row["coherence"] == pytest.approx(float(rho), rel=1e-9, abs=1e-12)
    assert row["common"] == pytest.approx(float(d.mean(0).pow(2).sum() / mean_sq), rel=1e-9)
    assert row["common"] == pytest.approx(row["coherence"] + (1 - row["coherence"]) / b, rel=1e-9)


def test_identical_edits_have_coherence_one_and_their_sum_grows_like_k():
    one = _random(b=1)
    f = one.factors["w"]
    b = 5
    s = _edit_set(f.delta.repeat(b, 1), f.u.repeat(b, 1), torch.arange(b).repeat_interleave(len(f.delta)), b)
    assert interference.coherence(s).iloc[0]["coherence"] == pytest.approx(1.0, rel=1e-12)
    norms = interference.sum_norms(s, ks=(1, 3, 5))
    assert norms["measured"].tolist() == pytest.approx([1.0, 3.0, 5.0], rel=1e-12)
    assert norms["predicted"].tolist() == pytest.approx([1.0, 3.0, 5.0], rel=1e-12)


def test_edits_on_disjoint_inputs_have_coherence_zero():
    b, n_in = 4, 8  # edit b reads only input dimensions 2b and 2b + 1: every pair of edits is orthogonal
    g = torch.Generator().manual_seed(1)
    u = torch.zeros(b * 2, n_in, dtype=torch.float64)
    for r in range(b * 2):
        u[r, (r // 2) * 2 + r % 2] = 1.0 + r
    s = _edit_set(torch.randn(b * 2, 3, generator=g, dtype=torch.float64), u, torch.arange(b).repeat_interleave(2), b)
    assert interference.coherence(s).iloc[0]["coherence"] == pytest.approx(0.0, abs=1e-12)
    norms = interference.sum_norms(s, ks=(b,))
    d = _dense(s)
    s_rms = float(d.flatten(1).pow(2).sum(1).mean().sqrt())
    assert norms.iloc[0]["measured"] == pytest.approx(float(d.sum(0).norm()) / s_rms, rel=1e-10)
    assert norms.iloc[0]["predicted"] == pytest.approx(math.sqrt(b), rel=1e-10)


@pytest.mark.parametrize("conv1d", [False, True])
def test_sum_norms_measures_prefix_sums_in_either_layout(conv1d):
    s = _random(b=7, rows=2, seed=3, conv1d=conv1d)
    d = _dense(s)
    s_rms = float(d.flatten(1).pow(2).sum(1).mean().sqrt())
    norms = interference.sum_norms(s, ks=(1, 4, 7)).set_index("k")
    for k in (1, 4, 7):
        assert norms.loc[k, "measured"] == pytest.approx(float(d[:k].sum(0).norm()) / s_rms, rel=1e-10)
        assert norms.loc[k, "unrelated"] == pytest.approx(math.sqrt(k))


def test_sum_growth_formula_and_its_limits():
    assert interference.sum_growth(0.0, 25) == pytest.approx(5.0)
    assert interference.sum_growth(1.0, 25) == pytest.approx(25.0)
    assert interference.sum_growth(0.3, 25) / 5.0 == pytest.approx(math.sqrt(1 + 24 * 0.3))
    assert interference.sum_growth(-1.0, 3) == 0.0  # floored, never imaginary
    with pytest.raises(ValueError, match="positive"):
        interference.sum_growth(0.1, 0)


def test_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        interference.coherence(_random(b=1))
    with pytest.raises(TypeError, match="EditSet"):
        interference.coherence(_random(b=3)[0])
    with pytest.raises(ValueError, match="ks must lie"):
        interference.sum_norms(_random(b=3), ks=(4,))
    zero = _random(b=2)
    zero.factors["w"] = Factors(torch.zeros_like(zero.factors["w"].delta), zero.factors["w"].u)
    with pytest.raises(ValueError, match="zero"):
        interference.coherence(zero)


def test_mend_edits_of_a_micro_model(micro):
    """On real MEND edits (an editor on micro GPT-2 whose normaliser has seen a few edits) the table has one row
    per edited weight and the formula's ρ reproduces the measured norm of the sum of all B edits exactly (it is
    derived from it)."""
    model, tok, world = micro("gpt2")
    torch.manual_seed(0)
    editor = MEND.for_model(model, NetConfig(rank=16)).train()
    task = tasks.from_world(world, get_family(model).kind, "qa")
    editor.edit(model, Collator.for_model(model, tok)(task.train[6:10]))  # prime the normaliser
    editor.eval()
    enc = Collator.for_model(model, tok).encode([(e.prompt, e.target) for e in task.train[:6]])
    edits = editor.edit_many(model, enc).detach()
    table = interference.coherence(edits)
    assert list(table["weight"]) == editor.names and (table["edits"] == 6).all()
    assert table["coherence"].between(-1, 1).all() and (table["size"] > 0).all()
    norms = interference.sum_norms(edits, ks=(6,))
    assert norms["measured"].to_numpy() == pytest.approx(norms["predicted"].to_numpy(), rel=1e-9)


def test_gradient_edits_are_the_per_request_negative_gradients(micro):
    model, tok, world = micro("gpt2")
    task = tasks.from_world(world, get_family(model).kind, "qa")
    collator = Collator.for_model(model, tok)
    edits = interference.gradient_edits(model, collator.encode([(e.prompt, e.target) for e in task.train[:3]]))
    assert len(edits) == 3 and edits.meta["editor"] == "gradient"
    for b, e in enumerate(task.train[:3]):
        alone = rank1.autograd_gradients(model, collator.encode([(e.prompt, e.target)]), list(edits.factors))
        for name, g in alone.items():
            assert torch.allclose(edits[b].factors[name].dense(), -g, atol=1e-6, rtol=1e-4), name
