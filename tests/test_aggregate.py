"""Aggregating a batch of edits into one: ``EditSet.aggregate("sum")`` (paper §5.3) and ``"least_squares"``
(MALMEN): ΔW = V Kᵀ (K Kᵀ + λI)⁻¹, checked against an independent ``torch.linalg.lstsq`` on hand-built edits
and on the EditSets that MEND, KE and ENN make on micro models (Conv1D and nn.Linear layouts)."""

from __future__ import annotations

import pytest
import torch

from mendlab import tasks
from mendlab.data import Collator
from mendlab.edit import AGGREGATIONS, Edit, EditSet, Factors
from mendlab.editors import MEND
from mendlab.editors.enn import ENN
from mendlab.editors.ke import KE, KEConfig
from mendlab.families import get_family
from mendlab.nets import NetConfig

IN, OUT = 5, 4


def _hand_built(rows=(2, 1, 3), keys=(3, 4, 2), conv1d=False, shared=False, seed=0) -> EditSet:
    """B = len(rows) edits (float64) with ``rows[b]`` factor rows and ``keys[b]`` key rows each; the key rows
    are shuffled (aggregation must not rely on their order)."""
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(len(rows)).repeat_interleave(torch.tensor(rows))
    delta = torch.randn(len(owner), OUT, generator=g, dtype=torch.float64)
    u = torch.randn(len(owner), IN, generator=g, dtype=torch.float64)
    k_owner = torch.arange(len(keys)).repeat_interleave(torch.tensor(keys))
    perm = torch.randperm(len(k_owner), generator=g)
    k = torch.randn(len(k_owner), IN, generator=g, dtype=torch.float64)[perm]
    shape = (IN, OUT) if conv1d else (OUT, IN)
    extra = {"w": torch.randn(*shape, generator=g, dtype=torch.float64)} if shared else {}
    return EditSet({"w": Factors(delta, u, conv1d)}, {"w": owner}, len(rows), {"editor": "hand"}, extra,
                   {"w": (k, k_owner[perm])})


def _reference(s: EditSet, ridge: float) -> torch.Tensor:
    """min_X ‖X K − V‖² + λ‖X‖² by ``lstsq`` of the stacked system [Kᵀ; √λ I] Xᵀ = [Vᵀ; 0], [out, in] layout;
    V's column m is ΔW_b k_m with ΔW_b edit b's dense update (from ``s[b]``, minus the shared part)."""
    f = s.factors["w"]
    k, k_owner = s.keys["w"]
    own = [f.delta[s.owner["w"] == b].T @ f.u[s.owner["w"] == b] for b in range(len(s))]  # [out, in] each
    v = torch.stack([own[int(b)] @ k[m] for m, b in enumerate(k_owner)], dim=1)  # [out, M]
    lam = ridge * float((k * k).sum()) / IN
    a = torch.cat([k, lam ** 0.5 * torch.eye(IN, dtype=k.dtype)])  # [M + in, in]
    rhs = torch.cat([v.T, torch.zeros(IN, OUT, dtype=k.dtype)])
    return torch.linalg.lstsq(a, rhs).solution.T


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("ridge", [1e-2, 0.5])
def test_least_squares_equals_the_closed_form(conv1d, ridge):
    s = _hand_built(conv1d=conv1d, shared=True)
    edit = s.aggregate("least_squares", ridge=ridge)
    want = _reference(s, ridge)
    want = (want.T if conv1d else want) + s.shared["w"]  # the shared part counts once
    assert isinstance(edit, Edit) and edit.names == ["w"] and not edit.factors
    torch.testing.assert_close(edit.delta("w"), want, rtol=0, atol=1e-5)
    assert edit.meta == {"editor": "hand", "aggregate": "least_squares", "ridge": ridge}


def test_both_intermediate_routes_agree(monkeypatch):
    """Chunks of one edit and the [in, in] route (forced by a tiny chunk budget) give the same ΔW."""
    from mendlab import edit as edit_module

    s = _hand_built(rows=(6, 7, 5), keys=(9, 8, 10), seed=3)
    want = s.aggregate("least_squares").delta("w")
    monkeypatch.setattr(edit_module, "_CHUNK", 1)
    torch.testing.assert_close(s.aggregate("least_squares").delta("w"), want, rtol=0, atol=1e-12)


def test_sum_is_merged():
    s = _hand_built(shared=True)
    a, b = s.aggregate("sum"), s.merged()
    assert a.names == b.names and a.meta == b.meta
    for n in b.names:
        assert torch.equal(a.delta(n), b.delta(n))
    assert s.aggregate().names == b.names  # "sum" is the default
    assert set(AGGREGATIONS) == {"sum", "least_squares"}


@pytest.mark.parametrize("n_keys", [3, 9])  # fewer keys than IN (a subspace), more (the whole space)
def test_one_edit_is_reproduced_on_its_keys(n_keys):
    s = _hand_built(rows=(2,), keys=(n_keys,), seed=1)
    f = s.factors["w"]
    own = f.delta.T @ f.u
    k = s.keys["w"][0].T  # [in, M]
    got = s.aggregate("least_squares", ridge=1e-9).delta("w")  # tiny, yet above float64 noise
    torch.testing.assert_close(got @ k, own @ k, rtol=0, atol=1e-6)
    if n_keys >= IN:  # keys span every input direction: the edit itself comes back
        torch.testing.assert_close(got, own, rtol=0, atol=1e-6)
    else:  # only its action on the keys' span: ΔW = ΔW_b Π
        proj = k @ torch.linalg.pinv(k)
        torch.testing.assert_close(got, own @ proj, rtol=0, atol=1e-6)
        assert float((got - own).norm()) > 1e-3


def test_errors():
    s = _hand_built()
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        s.aggregate("mean")
    bare = EditSet(s.factors, s.owner, s.size)
    with pytest.raises(ValueError, match=r"least squares needs the edits' keys.*\['w'\]"):
        bare.aggregate("least_squares")
    assert bare.aggregate("sum").names == ["w"]  # summing needs no keys
    with pytest.raises(ValueError, match="ridge"):
        s.aggregate("least_squares", ridge=-1.0)


def test_detach_keeps_keys_and_items_are_plain_edits():
    s = _hand_built(shared=True)
    d = s.detach()
    assert set(d.keys) == {"w"} and torch.equal(d.keys["w"][0], s.keys["w"][0])
    torch.testing.assert_close(d.aggregate("least_squares").delta("w"), s.aggregate("least_squares").delta("w"))
    assert isinstance(s[1], Edit) and not hasattr(s[1], "keys")


def _editor(name, model, t, tok):
    torch.manual_seed(0)
    if name == "mend":
        editor = MEND.for_model(model, NetConfig(rank=16)).train()
        editor.edit(model, Collator.for_model(model, tok)(t.train[:4]))  # prime the normaliser
        return editor.eval()
    if name == "ke":
        return KE.for_model(model, KEConfig(hidden=16, cond_dim=24, weight_hidden=16)).eval()
    return ENN.for_model(model).eval()


@pytest.mark.parametrize("model_type", ["gpt2", "bart"])  # Conv1D ([in, out]) and nn.Linear ([out, in])
@pytest.mark.parametrize("name", ["mend", "ke", "enn"])
def test_editors_record_keys_and_least_squares_runs(micro, model_type, name):
    model, tok, world = micro(model_type)
    t = tasks.from_world(world, get_family(model).kind)
    editor = _editor(name, model, t, tok)
    batch = Collator.for_model(model, tok)(t.test[:3])
    s = editor.edit_many(model, batch.edit_inner)
    params = dict(model.named_parameters())
    assert sorted(s.keys) == sorted(s.factors) == sorted(editor.names)
    for n, (k, k_owner) in s.keys.items():
        assert not k.requires_grad and k.shape[0] == k_owner.shape[0] > 0
        assert k.shape[1] == s.factors[n].u.shape[1]  # the layer's input size
        counts, k_counts = torch.bincount(s.owner[n], minlength=3), torch.bincount(k_owner, minlength=3)
        assert torch.equal(counts, k_counts + (1 if name == "ke" else 0))  # KE adds one offset row per request
    with torch.no_grad():
        edit = s.aggregate("least_squares")
        for n in editor.names:
            assert edit.delta(n).shape == params[n].shape and torch.isfinite(edit.delta(n)).all()
        logits = edit.forward(model, batch.edit_outer)
    assert torch.isfinite(logits).all()
