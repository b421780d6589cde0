"""What an :class:`~mendlab.edit.Edit` knows about the model it was made for, and its file format.

An edit records its base model's fingerprint ``{"model_type", "name", "shapes": {weight: shape}}`` (shapes in
the weight's own layout, JSON types, so it is saved with the edit). Applying an edit checks that the model has
every edited weight with the right shape (always) and the recorded model type (when recorded); adding two edits
checks the same between them. Weight values are never compared: stacked edits change them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MismatchedModelError(ValueError, KeyError):
    """An editor or an edit was used with a model other than the one it was made for. (Also a ``KeyError``:
    a missing weight raised one before edits knew their model.)"""

    __str__ = ValueError.__str__  # not KeyError's, which quotes the message


def describe(model) -> tuple[str | None, str]:
    """``(model_type, name)`` of a model; a plain ``nn.Module`` has no type and is named by its class."""
    config = getattr(model, "config", None)
    name = (getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "")
            or f"<unnamed {type(model).__name__}>")
    return getattr(config, "model_type", None), str(name)


def base_of(model, names) -> dict:
    """The fingerprint an edit of ``names`` made on ``model`` records."""
    model_type, name = describe(model)
    params = dict(model.named_parameters())
    return {"model_type": model_type, "name": name, "shapes": {n: list(params[n].shape) for n in names}}


def _label(base: dict | None) -> str:
    if not base:
        return "an unrecorded model"
    return f"{base.get('name')!r} ({base.get('model_type') or 'no model type'})"


def check_model(shapes: dict[str, tuple], base: dict | None, model, what: str = "this edit") -> None:
    """Raise :class:`MismatchedModelError` unless ``model`` has every weight of ``shapes`` with that shape and,
    when ``base`` records one, its model type."""
    params = dict(model.named_parameters())
    model_type, _ = describe(model)
    problems = []
    if base and base.get("model_type") and model_type and base["model_type"] != model_type:
        problems.append(f"model type {base['model_type']!r} vs {model_type!r}")
    missing = [n for n in shapes if n not in params]
    if missing:
        problems.append(f"the model has no weights {missing[:8]}{' …' if len(missing) > 8 else ''}")
    wrong = [f"{n} {list(s)} vs {list(params[n].shape)}" for n, s in shapes.items()
             if n in params and tuple(params[n].shape) != tuple(s)]
    if wrong:
        problems.append("shapes differ: " + "; ".join(wrong[:3]))
    if problems:
        raise MismatchedModelError(
            f"{what} was made for {_label(base)} but was given {_label(base_of(model, []))}: "
            f"{'; '.join(problems)}. Use it with the model it was made for (or a copy), or make a new edit for "
            "this model.")


def combine(a: dict | None, b: dict | None, shapes_a: dict, shapes_b: dict) -> dict | None:
    """The fingerprint of the sum of two edits (weights' shapes ``shapes_a``, ``shapes_b``); raises
    :class:`MismatchedModelError` naming both if they were made for models of other types or shapes."""
    problems = []
    if a and b and a.get("model_type") and b.get("model_type") and a["model_type"] != b["model_type"]:
        problems.append(f"model type {a['model_type']!r} vs {b['model_type']!r}")
    recorded_a, recorded_b = (a or {}).get("shapes", {}), (b or {}).get("shapes", {})
    wrong = [f"{n} {list(s)} vs {list(shapes_b[n])}" for n, s in shapes_a.items()
             if n in shapes_b and tuple(s) != tuple(shapes_b[n])]
    wrong += [f"{n} {s} vs {recorded_b[n]}" for n, s in recorded_a.items()
              if n in recorded_b and list(s) != list(recorded_b[n]) and not (n in shapes_a and n in shapes_b)]
    if wrong:
        problems.append("shapes differ: " + "; ".join(wrong[:3]))
    if problems:
        raise MismatchedModelError(f"cannot add an edit of {_label(a)} to an edit of {_label(b)}: "
                                   f"{'; '.join(problems)}. Only edits of the same model add up.")
    if not a or not b:
        return a or b
    return dict(a, shapes={**recorded_b, **recorded_a})


def save_edit(edit, path: str | Path) -> Path:
    """One safetensors file: tensors ``{name}.delta``/``{name}.u`` or ``{name}.dense``, layouts, ``meta`` and the
    base fingerprint in the metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for name, f in edit.factors.items():
        tensors[f"{name}.delta"] = f.delta.detach().contiguous().cpu()
        tensors[f"{name}.u"] = f.u.detach().contiguous().cpu()
    for name, d in edit.dense.items():
        tensors[f"{name}.dense"] = d.detach().contiguous().cpu()
    layout = {"factors": {n: f.conv1d for n, f in edit.factors.items()}, "dense": list(edit.dense)}
    meta = {"mendlab_edit": json.dumps(layout), "meta": json.dumps(edit.meta, default=str)}
    if edit.base is not None:
        meta["base"] = json.dumps(edit.base)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_edit(path: str | Path, device=None):
    """The :class:`~mendlab.edit.Edit` saved by :func:`save_edit`."""
    from safetensors import safe_open

    from mendlab.edit import Edit, Factors

    with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
        meta = f.metadata() or {}
        if "mendlab_edit" not in meta:
            raise ValueError(f"{path} is not a mendlab Edit file (no 'mendlab_edit' metadata)")
        layout = json.loads(meta["mendlab_edit"])
        factors = {n: Factors(f.get_tensor(f"{n}.delta"), f.get_tensor(f"{n}.u"), conv1d)
                   for n, conv1d in layout["factors"].items()}
        dense = {n: f.get_tensor(f"{n}.dense") for n in layout["dense"]}
    base = json.loads(meta["base"]) if "base" in meta else None
    return Edit(factors, dense, json.loads(meta.get("meta", "{}")), base)


def shapes_of(factors: dict, dense: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Each edited weight's shape in its own layout, from factors (without forming ΔW) and dense deltas."""
    out = {n: f.shape for n, f in factors.items()}
    out.update({n: tuple(d.shape) for n, d in dense.items()})
    return out
