"""Tests for mendlab.edit: apply/revert bit for bit, the functional view, sums, save/load, summary, EditSet.

Tiny random-init models built from configs: GPT-2 (``Conv1D`` weights, stored [in, out]) and GPT-Neo
(``nn.Linear``, stored [out, in]). Edits come from an untrained MEND editor whose normaliser was primed by one
training-mode edit, or are built by hand.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

from mendlab.edit import Edit, EditSet, Factors
from mendlab.editors.mend import MEND
from mendlab.families import edited_weights, is_conv1d
from mendlab.nets import NetConfig

VOCAB, T, N_LABELS = 61, 10, 3


def _gpt2(n_layer: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, n_positions=32,
                                      vocab_size=VOCAB)).eval()


def _gptneo(seed: int = 0):
    torch.manual_seed(seed)
    config = GPTNeoConfig(num_layers=3, hidden_size=32, num_heads=2, max_position_embeddings=32,
                          vocab_size=VOCAB, window_size=8, attention_types=[[["global", "local"], 1], [["global"], 1]])
    return GPTNeoForCausalLM(config).eval()


BUILDERS = {"gpt2": _gpt2, "gptneo": _gptneo}


def _enc(batch: int, seed: int, n_labels=N_LABELS) -> dict:
    """Decoder inputs [batch, T] without padding; labels (aligned with the ids) on the last ``n_labels[b]``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, T), generator=g)
    labels = torch.full_like(ids, -100)
    counts = [n_labels] * batch if isinstance(n_labels, int) else n_labels
    for b, k in enumerate(counts):
        labels[b, -k:] = ids[b, -k:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _rows(enc: dict, rows) -> dict:
    return {k: v[rows] for k, v in enc.items()}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"not restored bit for bit: {changed}"


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp(min=1e-30)) < tol


@pytest.fixture(params=sorted(BUILDERS))
def setup(request):
    """(model, editor): the editor is untrained, its normaliser primed by one training-mode edit, then frozen."""
    model = BUILDERS[request.param]()
    editor = MEND.for_model(model, NetConfig(rank=16))
    editor.train()
    editor.edit(model, _enc(2, seed=100))
    editor.eval()
    return model, editor


# -- applied: in place, restored bit for bit ------------------------------------------------------------------
def test_applied_changes_only_the_edited_weights_and_restores_every_parameter(setup):
    model, editor = setup
    edit = editor.edit(model, _enc(1, seed=1))
    assert set(edit.names) == set(edited_weights(model))
    before = _snapshot(model)
    with edit.applied(model) as inside:
        assert inside is model
        state = model.state_dict()
        for k, w in state.items():
            if k in edit.names:
                assert not torch.equal(w, before[k]), k
                assert torch.equal(w, before[k] + edit.delta(k).detach()), k
            else:
                assert torch.equal(w, before[k]), k
    _assert_same_state(model, before)


def test_applied_restores_on_exception_and_lets_it_through(setup):
    model, editor = setup
    edit = editor.edit(model, _enc(1, seed=2))
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with edit.applied(model):
            assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
            raise RuntimeError("boom")
    _assert_same_state(model, before)


def test_applied_twice_in_a_row_restores_bit_exactly(setup):
    """W + ΔW − ΔW is not W in floating point: the originals must be copied back, not subtracted."""
    model, editor = setup
    edit = editor.edit(model, _enc(1, seed=3)).detach()
    big = Edit(dense={n: 1e3 * d for n, d in edit.deltas().items()})  # makes W + ΔW − ΔW ≠ W certain
    before = _snapshot(model)
    for e in (edit, big, edit + big):
        with e.applied(model):
            pass
        _assert_same_state(model, before)


# -- the functional view --------------------------------------------------------------------------------------
def test_forward_equals_logits_inside_applied_and_leaves_the_model_alone(setup):
    model, editor = setup
    enc = _enc(2, seed=4)
    edit = editor.edit(model, _rows(enc, [0]))
    before = _snapshot(model)
    with torch.no_grad():
        plain = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    view = edit.forward(model, enc)
    _assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())
    assert view.requires_grad  # the graph to the editor is kept
    assert not torch.equal(view, plain)  # the edit does something
    with edit.applied(model), torch.no_grad():
        inside = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(view.detach(), inside, rtol=0, atol=1e-6)
    params = edit.params(model)
    assert set(params) == set(edit.names)
    for n, w in params.items():
        assert torch.equal(w.detach(), before[n] + edit.delta(n).detach())


def test_forward_keeps_the_graph_to_the_editor(setup):
    model, editor = setup
    enc = _enc(1, seed=5)
    model.requires_grad_(False)
    edit = editor.edit(model, enc)
    edit.forward(model, enc).logsumexp(-1).mean().backward()
    assert editor.net.edit_lrs.grad is not None and editor.net.edit_lrs.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


# -- sums -----------------------------------------------------------------------------------------------------
def test_sum_of_edits_sums_the_deltas_and_concatenates_the_factors(setup):
    model, editor = setup
    a, b, c = (editor.edit(model, _enc(1, seed=s)) for s in (6, 7, 8))
    ab = a + b
    for n in a.names:
        fa, fb, fab = a.factors[n], b.factors[n], ab.factors[n]
        assert fab.conv1d == fa.conv1d == is_conv1d(model, n)
        assert fab.u.shape[0] == fa.u.shape[0] + fb.u.shape[0]
        assert torch.equal(fab.delta, torch.cat([fa.delta, fb.delta]))
        assert _close(ab.delta(n), a.delta(n) + b.delta(n))
    abc = sum([a, b, c])
    assert isinstance(abc, Edit) and set(abc.names) == set(a.names)
    for n in a.names:
        assert abc.factors[n].u.shape[0] == sum(e.factors[n].u.shape[0] for e in (a, b, c))
        assert _close(abc.delta(n), a.delta(n) + b.delta(n) + c.delta(n))


def test_rank_adds_up_for_hand_built_factors():
    model = _gpt2()
    names = edited_weights(model)
    g = torch.Generator().manual_seed(0)

    def factors(r: int) -> Edit:
        out = {}
        for n in names:
            w = dict(model.named_parameters())[n]
            i, o = (w.shape if is_conv1d(model, n) else w.shape[::-1])
            out[n] = Factors(torch.randn(r, o, generator=g), torch.randn(r, i, generator=g), is_conv1d(model, n))
        return Edit(out)

    a, b = factors(2), factors(3)
    for n in names:
        assert a.delta(n).shape == dict(model.named_parameters())[n].shape
        assert int(torch.linalg.matrix_rank((a + b).delta(n))) == 5
    table = (a + b).summary(model)
    assert (table["rank"] == 5).all() and (table["rows"] == 5).all()


def test_sum_with_a_dense_edit(setup):
    model, editor = setup
    a = editor.edit(model, _enc(1, seed=9))
    shared, only_dense = a.names[0], "transformer.wpe.weight"
    g = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    d = Edit(dense={n: 1e-3 * torch.randn(params[n].shape, generator=g) for n in (shared, only_dense)})
    for total in (a + d, d + a):
        assert set(total.names) == set(a.names) | {only_dense}
        assert set(total.dense) == {shared, only_dense}  # a name with both becomes dense
        assert set(total.factors) == set(a.names) - {shared}
        assert _close(total.delta(shared), a.delta(shared) + d.dense[shared])
        assert torch.equal(total.delta(only_dense), d.dense[only_dense])
        for n in set(a.names) - {shared}:
            assert torch.equal(total.delta(n), a.delta(n))
    before = _snapshot(model)
    with (a + d).applied(model):
        pass
    _assert_same_state(model, before)
    with pytest.raises(ValueError, match="both"):
        Edit(factors={shared: a.factors[shared]}, dense={shared: d.dense[shared]})


# -- save / load ----------------------------------------------------------------------------------------------
def test_save_load_round_trip(setup, tmp_path):
    model, editor = setup
    a = editor.edit(model, _enc(1, seed=10))
    wpe = dict(model.named_parameters())["transformer.wpe.weight"]
    edit = a + Edit(dense={"transformer.wpe.weight": 1e-3 * torch.randn(wpe.shape)}, meta={"note": "dense"})
    path = edit.save(tmp_path / "sub" / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.names == edit.names
    assert set(loaded.factors) == set(edit.factors) and set(loaded.dense) == set(edit.dense)
    for n, f in edit.factors.items():
        g = loaded.factors[n]
        assert g.conv1d == f.conv1d
        assert torch.equal(g.delta, f.delta.detach()) and torch.equal(g.u, f.u.detach())
    for n in edit.names:
        assert torch.equal(loaded.delta(n), edit.delta(n).detach())
    assert loaded.meta == edit.meta
    assert loaded.meta["parts"][1] == {"note": "dense"}
    before = _snapshot(model)
    with loaded.applied(model), torch.no_grad():
        after = model(input_ids=_enc(1, seed=11)["input_ids"]).logits
    _assert_same_state(model, before)
    torch.testing.assert_close(edit.forward(model, _enc(1, seed=11)).detach(), after, rtol=0, atol=1e-6)


def test_load_rejects_a_file_that_is_not_an_edit(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="not a mendlab Edit"):
        Edit.load(path)


# -- summary --------------------------------------------------------------------------------------------------
def test_summary(setup):
    model, editor = setup
    edit = editor.edit(model, _enc(1, seed=12))
    table = edit.summary(model)
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == edit.names
    assert {"rank", "norm", "relative_norm", "rows"} <= set(table.columns)
    params = dict(model.named_parameters())
    for n, row in table.iterrows():
        assert 1 <= row["rank"] <= row["rows"] == edit.factors[n].u.shape[0]
        assert row["norm"] == pytest.approx(float(edit.delta(n).detach().norm()), rel=1e-5)
        assert row["relative_norm"] == pytest.approx(row["norm"] / float(params[n].detach().norm()), rel=1e-5)
    assert "relative_norm" not in edit.summary().columns


# -- EditSet --------------------------------------------------------------------------------------------------
def test_editset_items_equal_editing_each_request_alone(setup):
    model, editor = setup
    enc = _enc(3, seed=13, n_labels=[2, 4, 3])
    edits = editor.edit_many(model, enc)
    assert isinstance(edits, EditSet) and len(edits) == 3
    for b in range(3):
        alone = editor.edit(model, _rows(enc, [b]))
        item = edits[b]
        assert item.names == alone.names
        for n in alone.names:
            assert item.factors[n].u.shape == alone.factors[n].u.shape
            assert _close(item.delta(n), alone.delta(n), 1e-4), (b, n)


def test_editset_forward_runs_each_row_with_its_own_edit(setup):
    model, editor = setup
    enc = _enc(3, seed=14, n_labels=[2, 4, 3])
    edits = editor.edit_many(model, enc)
    before = _snapshot(model)
    out = edits.forward(model, enc)
    _assert_same_state(model, before)
    assert out.shape == (3, T, VOCAB)
    for b in range(3):
        ref = edits[b].forward(model, _rows(enc, [b]))[0]
        torch.testing.assert_close(out[b], ref, rtol=0, atol=1e-5)
    other = _enc(4, seed=15)
    index = torch.tensor([2, 0, 0, 1])
    out = edits.forward(model, other, index=index)
    for i, b in enumerate(index.tolist()):
        torch.testing.assert_close(out[i], edits[b].forward(model, _rows(other, [i]))[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="per-example edits"):
        edits.forward(model, other)


def test_editset_merged_sums_all_edits(setup):
    model, editor = setup
    edits = editor.edit_many(model, _enc(3, seed=16, n_labels=[2, 4, 3]))
    merged = edits.merged()
    total = sum(edits[b] for b in range(len(edits)))
    for n in merged.names:
        parts = sum(edits[b].delta(n) for b in range(len(edits)))
        assert _close(merged.delta(n), parts)
        assert _close(total.delta(n), parts)
        assert merged.factors[n].u.shape[0] == sum(edits[b].factors[n].u.shape[0] for b in range(len(edits)))


# -- wrong model ----------------------------------------------------------------------------------------------
def test_edit_for_another_model_raises_key_error_naming_the_weights():
    big, small = _gpt2(n_layer=4), _gpt2(n_layer=2)
    editor = MEND.for_model(big, NetConfig(norm=False, rank=8))
    edit = editor.edit(big, _enc(1, seed=17))
    missing = [n for n in edit.names if n not in dict(small.named_parameters())]
    present = [n for n in edit.names if n not in missing]
    assert missing and present  # h.1 exists in both, h.2 and h.3 only in the big one
    with pytest.raises(KeyError) as err:
        edit.forward(small, _enc(1, seed=17))
    assert all(n in str(err.value) for n in missing)
    before = _snapshot(small)
    with pytest.raises(KeyError, match=re.escape(missing[0])):
        with edit.applied(small):
            pass
    _assert_same_state(small, before)  # weights changed before the missing one was met are restored
