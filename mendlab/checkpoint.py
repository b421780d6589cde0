"""Training checkpoints as safetensors + JSON, written atomically; never pickle.

A checkpoint folder holds ``tensors.safetensors`` (the editor's state dict under ``editor.``, the optimiser's
per-parameter state under ``opt.<index>.<name>``, torch's RNG state) and ``state.json`` (everything else: the
optimiser's hyper-parameters and step counters, Python's RNG state, the run's counters and history). Both are
written into a temporary folder beside it, which then replaces the old checkpoint with ``os.replace`` of a
folder name, so a crash at any moment leaves either the old checkpoint or the new one, never half of each.

Loading never runs code: safetensors holds only tensors, JSON only data. A checkpoint written by an older
mendlab (``checkpoint.pt``) is read with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

TENSORS, STATE = "tensors.safetensors", "state.json"


def _split_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state dict as (tensors by flat name, the JSON-able rest)."""
    tensors, plain = {}, {}
    for index, entry in opt_state["state"].items():
        plain[str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain[str(index)][name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict = {int(i): dict(rest) for i, rest in saved["plain"].items()}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    # JSON has no tuples: hyper-parameters such as Adam's betas come back as lists (``params`` is a list)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def save(folder: str | Path, editor: torch.nn.Module, optimizer: torch.optim.Optimizer, python_rng: tuple,
         meta: dict) -> Path:
    """Write the checkpoint ``folder`` atomically; ``meta`` must be JSON-able."""
    from safetensors.torch import save_file

    folder = Path(folder)
    opt_tensors, opt_plain = _split_optimizer(optimizer.state_dict())
    tensors = {f"editor.{k}": v.detach().contiguous().cpu() for k, v in editor.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / TENSORS))
    version, internal, gauss = python_rng
    state = {"optimizer": opt_plain, "python_rng": [version, list(internal), gauss], **meta}
    (tmp / STATE).write_text(json.dumps(state))
    replace_folder(tmp, folder)
    return folder


def load(folder: str | Path, editor: torch.nn.Module, optimizer: torch.optim.Optimizer,
         device: torch.device | str = "cpu") -> tuple[tuple, dict]:
    """Restore ``editor`` and ``optimizer`` and torch's RNG from ``folder``; returns (Python RNG state, meta)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        tensors = load_file(str(folder / TENSORS), device=str(device))
        state = json.loads((folder / STATE).read_text())
    except Exception as e:  # a truncated or foreign file: say which, never load half of it
        raise ValueError(f"checkpoint {folder} cannot be read ({type(e).__name__}: {e}); delete it to start "
                         "training afresh") from e
    editor.load_state_dict({k[len("editor."):]: v for k, v in tensors.items() if k.startswith("editor.")})
    optimizer.load_state_dict(_join_optimizer(tensors, state.pop("optimizer")))
    torch.set_rng_state(tensors["torch_rng"].cpu())
    version, internal, gauss = state.pop("python_rng")
    return (version, tuple(internal), gauss), state


def load_legacy(path: str | Path, editor: torch.nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device | str = "cpu") -> tuple[tuple, dict]:
    """:func:`load` for a ``checkpoint.pt`` of an older mendlab, read without running code
    (``weights_only=True``: tensors and plain containers only)."""
    saved = torch.load(path, map_location=device, weights_only=True)
    editor.load_state_dict(saved.pop("editor"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    torch.set_rng_state(saved.pop("torch_rng").cpu())
    return saved.pop("rng"), saved


def replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``: the old ``target`` is moved aside first and removed last, so that a
    crash leaves ``target`` or ``target.old`` complete (:func:`recover` puts ``.old`` back)."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: str | Path) -> Path:
    """After a crash inside :func:`replace_folder`: if ``target`` is missing and ``target.old`` exists, put it
    back. A leftover ``.tmp`` folder (a write that never finished) is removed. Returns ``target``."""
    target = Path(target)
    old, tmp = target.with_name(target.name + ".old"), target.with_name(target.name + ".tmp")
    if not target.exists() and old.exists():
        os.replace(old, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target
