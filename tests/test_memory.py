"""The least-squares memory of sequential editing: one step is MALMEN's batch least squares, later edits keep the
earlier edits' keys where they were put, and a sequence through it reverts bit for bit."""

import pytest
import torch

from mendlab import tasks
from mendlab.data import Collator
from mendlab.edit import EditSet, Factors
from mendlab.editors import MEND
from mendlab.experiments import sequential as seq
from mendlab.families import get_family
from mendlab.memory import LeastSquaresMemory


def _one_edit(delta_w: torch.Tensor, keys: torch.Tensor, name: str = "w") -> EditSet:
    """An EditSet of one edit whose ΔW is ``delta_w`` [out, in] (as full-rank factors) with ``keys`` [M, in]."""
    out = delta_w.shape[0]
    f = Factors(torch.eye(out, dtype=torch.float64), delta_w.clone())  # ΔW = Iᵀ ΔW
    return EditSet({name: f}, {name: torch.zeros(out, dtype=torch.long)}, 1,
                   keys={name: (keys, torch.zeros(len(keys), dtype=torch.long))})


def test_a_later_edit_keeps_what_an_earlier_one_put_on_its_keys():
    g = torch.Generator().manual_seed(0)
    k1, k2 = torch.eye(6, dtype=torch.float64)[:2], torch.eye(6, dtype=torch.float64)[2:4]
    d1, d2 = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    memory = LeastSquaresMemory(ridge=1e-6)
    t1 = memory.add(_one_edit(d1, k1)).dense["w"]
    torch.testing.assert_close(t1 @ k1.T, d1 @ k1.T, rtol=1e-4, atol=1e-4)
    t2 = memory.add(_one_edit(d2, k2)).dense["w"]  # edit 2 asks, on its keys, for T1 k2 + ΔW2 k2
    torch.testing.assert_close(t2 @ k1.T, d1 @ k1.T, rtol=1e-4, atol=1e-4)  # edit 1 kept
    torch.testing.assert_close(t2 @ k2.T, (t1 + d2) @ k2.T, rtol=1e-4, atol=1e-4)
    summed = t1 + d2  # what adding edit 2 on top would give: it moves edit 1's keys too
    assert not torch.allclose(summed @ k1.T, d1 @ k1.T, atol=1e-2)
    assert memory.n_edits == 2


def test_one_step_equals_the_batch_least_squares(micro):
    model, tok, world = micro("bart")
    task = tasks.from_world(world, get_family(model).kind)
    edits = MEND.for_model(model).edit_many(model, Collator.for_model(model, tok)(task.test[:3])).detach()
    total = LeastSquaresMemory(ridge=1e-2).add(edits)
    batch = edits.aggregate("least_squares", ridge=1e-2)
    assert set(total.names) == set(batch.names)
    for name in batch.names:
        torch.testing.assert_close(total.delta(name), batch.delta(name), rtol=1e-4, atol=1e-6)


def test_refuses_edits_without_keys_and_a_zero_ridge():
    edits = _one_edit(torch.ones(2, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    edits.keys = {}
    with pytest.raises(ValueError, match="needs the edits' keys"):
        LeastSquaresMemory().add(edits)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        LeastSquaresMemory(ridge=0)


@pytest.mark.parametrize("model_type", ["bart", "gpt2"])
def test_a_least_squares_sequence_reverts_bit_for_bit(micro, model_type):
    model, tok, world = micro(model_type)
    task = tasks.from_world(world, get_family(model).kind)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frame, info = seq.sequential(MEND.for_model(model), model, tok, task.test[:4], task.panel[:8],
                                 aggregate="least_squares", progress=False)
    assert info["reverted_exactly"] and len(frame) == 4 * 5 // 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_sequential_refuses_least_squares_for_an_editor_without_keys(micro):
    from mendlab.editors.ft import FT

    model, tok, world = micro("bart")
    task = tasks.from_world(world, get_family(model).kind)
    with pytest.raises(ValueError, match="no keys for least squares"):
        seq.sequential(FT.for_model(model), model, tok, task.test[:2], task.panel[:4], aggregate="least_squares",
                       progress=False)
