"""Training checkpoints: safetensors + JSON round trips, atomic folder swaps, old pickles read weights-only."""

import pickle
import random

import pytest
import torch

from mendlab import checkpoint


def _editor_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()  # Adam now has exp_avg, exp_avg_sq and step per parameter
    return net, opt


def test_save_then_load_restores_editor_optimizer_and_both_rngs(tmp_path):
    net, opt = _editor_and_opt(0)
    rng = random.Random(3)
    torch.manual_seed(7)
    meta = {"order": [3, 1], "state": {"step": 12}, "best_val": float("inf"), "history": [{"loss": 0.5}]}
    checkpoint.save(tmp_path / "ck", net, opt, rng.getstate(), meta)
    expected_draw, expected_torch = rng.random(), torch.rand(3)
    other, other_opt = _editor_and_opt(1)
    torch.manual_seed(99)
    state, back = checkpoint.load(tmp_path / "ck", other, other_opt)
    assert back == meta
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True))
    mine, theirs = opt.state_dict(), other_opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"] and mine["state"].keys() == theirs["state"].keys()
    for i, entry in mine["state"].items():
        assert entry.keys() == theirs["state"][i].keys()
        assert all(torch.equal(v, theirs["state"][i][k]) for k, v in entry.items())
    assert torch.equal(torch.rand(3), expected_torch)
    r = random.Random()
    r.setstate(state)
    assert r.random() == expected_draw
    assert not (tmp_path / "ck.tmp").exists() and not (tmp_path / "ck.old").exists()


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    target, old = tmp_path / "best", tmp_path / "best.old"
    old.mkdir()
    (old / "editor.safetensors").write_text("the last good editor")
    (tmp_path / "best.tmp").mkdir()  # the unfinished new one
    checkpoint.recover(target)
    assert (target / "editor.safetensors").read_text() == "the last good editor"
    assert not old.exists() and not (tmp_path / "best.tmp").exists()


def test_a_truncated_checkpoint_is_refused_naming_the_folder(tmp_path):
    net, opt = _editor_and_opt(0)
    checkpoint.save(tmp_path / "ck", net, opt, random.Random(0).getstate(), {})
    data = (tmp_path / "ck" / checkpoint.TENSORS).read_bytes()
    (tmp_path / "ck" / checkpoint.TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="ck cannot be read"):
        checkpoint.load(tmp_path / "ck", net, opt)


class _Boom:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_an_old_pickle_checkpoint_never_runs_code(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"editor": _Boom()}, f)
    net, opt = _editor_and_opt(0)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load_legacy(path, net, opt)


def test_no_torch_load_without_weights_only_and_no_pickle_in_the_library():
    from pathlib import Path

    import mendlab

    for path in Path(mendlab.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
