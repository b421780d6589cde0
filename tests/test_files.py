"""Files are written atomically and checked when read: saved editors, zoo builds and the cache folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mendlab import config, zoo
from mendlab.editors.mend import MEND
from mendlab.nets import NetConfig


def _saved(micro, tmp_path) -> tuple[MEND, Path]:
    model, _, _ = micro("gpt2")
    editor = MEND.for_model(model, NetConfig(rank=4))
    return editor, editor.save_pretrained(tmp_path / "editor")


def test_a_saved_editor_leaves_no_temporary_file_and_loads_back_exactly(micro, tmp_path):
    editor, folder = _saved(micro, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["editor.safetensors", "editor_config.json"]
    again = MEND.from_pretrained(folder)
    before, after = editor.state_dict(), again.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_corrupted_editor_file_is_refused_with_its_name(micro, tmp_path):
    _, folder = _saved(micro, tmp_path)
    (folder / "editor.safetensors").write_bytes(torch.randint(256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="editor.safetensors"):
        MEND.from_pretrained(folder)


def test_an_editor_with_non_finite_weights_is_refused_naming_the_tensor(micro, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = _saved(micro, tmp_path)
    state = load_file(str(folder / "editor.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name][0] = float("nan")
    save_file(state, str(folder / "editor.safetensors"))
    with pytest.raises(ValueError, match=f"non-finite values in {name}"):
        MEND.from_pretrained(folder)


def test_a_broken_editor_config_is_refused_with_its_name(micro, tmp_path):
    _, folder = _saved(micro, tmp_path)
    (folder / "editor_config.json").write_text('{"alg": "mend", ')
    with pytest.raises(ValueError, match="editor_config.json is not valid JSON"):
        MEND.from_pretrained(folder)


def test_a_cache_that_cannot_be_created_names_the_folder_and_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MENDLAB_CACHE", str(blocker / "cache"))
    with pytest.raises(PermissionError, match="MENDLAB_CACHE"):
        config.cache_dir()


def test_a_read_only_cache_fails_before_a_build_trains(micro, tmp_path, monkeypatch):
    # root may write anywhere, so "read-only" is a models/ that is a file: mkdir and the write probe both fail
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    (tmp_path / "models").write_text("")
    monkeypatch.setattr(zoo, "train_model", lambda *a, **k: pytest.fail("trained before checking the cache"))
    with pytest.raises(PermissionError, match=f"{tmp_path / 'models'}.*MENDLAB_CACHE"):
        zoo.build("tiny-gpt2")


def test_a_build_that_loses_the_race_keeps_the_winners_model(micro, tmp_path, monkeypatch):
    """Two processes building one model each write their own temporary folder; the second to finish finds the
    first one's model in place, keeps it and removes its own copy."""
    model, tok, _ = micro("gpt2")
    monkeypatch.setenv("MENDLAB_CACHE", str(tmp_path))
    spec = zoo.spec("tiny-gpt2")
    path = zoo.cache_path(spec)

    def the_other_process_wins(s, progress=True):
        path.mkdir(parents=True)
        (path / "mendlab_card.json").write_text(json.dumps({"name": "winner"}))
        return model, tok, {}

    monkeypatch.setattr(zoo, "train_model", the_other_process_wins)
    card = zoo.build(spec)
    assert not card["cached"]
    assert json.loads((path / "mendlab_card.json").read_text()) == {"name": "winner"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left behind
