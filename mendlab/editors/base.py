"""The editor protocol and what every editor shares: batching requests, fingerprinting base models, saving.

Every editor is an :class:`Editor`: ``edit(model, batch) -> Edit`` (several requests give one edit),
``edit_many(model, batch) -> EditSet`` (each request its own edit, in one pass), ``aux_loss`` (a training term of
its own, 0 by default), ``num_parameters()``, and ``default_config(task)`` / ``train_overrides(task)``: how the
harness builds and trains it, so that no runner branches on an editor's name. Trainable editors are
:class:`TrainableEditor`s (``nn.Module``s): ``param_groups(lr, lr_lr)`` for ``train.py`` and, from their
``config_dict()`` / ``from_config_dict``, ``save_pretrained`` / ``from_pretrained`` written once here.

Every editor's ``edit`` and ``edit_many`` are wrapped once here (:func:`guarded`, applied by
``Editor.__init_subclass__``): the editor must have been built for this model (type and edited shapes), the
base model runs in eval mode (dropout off: the same request gives the same edit) and gets its modes back, and the
result records the model's fingerprint (:attr:`mendlab.edit.Edit.base`).

Memory: an edit runs one forward and backward of the base model over all B requests at once (plus, for MEND
and ENN, B·T token rows of ``in + out`` floats per edited weight), so its peak grows linearly with the batch's
B·T tokens. ``edit_many`` therefore runs a batch of more than ``chunk_requests`` (256) requests in passes of that
many and joins the results (``EditSet.concat``; exact, since edit b depends on request b alone): its peak is
that of 256 requests, whatever B. A pooled ``edit`` of many requests is one pass (its loss is a mean over all
of their tokens); ``metrics.evaluate`` edits in chunks of ``chunk`` requests.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mendlab.data import Collator, EditBatch, EditExample
from mendlab.edit import EditSet
from mendlab.edit_guard import MismatchedModelError, base_of, describe
from mendlab.families import edited_weights, shape_key

WEIGHTS_FILE, CONFIG_FILE = "editor.safetensors", "editor_config.json"


class Editor:
    """The protocol every editor answers. Instances carry ``kind`` (the base model's family kind), ``names`` (the
    edited weights) and ``base`` (the base model's :func:`fingerprint`)."""

    alg: ClassVar[str] = ""
    trainable: ClassVar[bool] = False  # trained ahead of time by mendlab.train (else: it optimises at edit time)
    batched: ClassVar[bool] = False  # edit_many edits many requests apart in one pass
    chunk_requests: ClassVar[int] = 256  # edit_many runs larger batches in passes of this many requests
    kind: str
    names: list[str]
    base: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method in ("edit", "edit_many"):
            fn = cls.__dict__.get(method)
            if fn is not None and not getattr(fn, "guarded", False):
                setattr(cls, method, guarded(fn))

    def edit(self, model: nn.Module, tokenizer_or_batch, examples=None):
        """One :class:`~mendlab.edit.Edit` for one or many requests (a tokenizer and ``EditExample``s, or a
        prepared ``EditBatch`` / tensor dict)."""
        raise NotImplementedError

    def edit_many(self, model: nn.Module, tokenizer_or_batch, examples=None):
        """An :class:`~mendlab.edit.EditSet`: edit b is what editing request b alone gives, all in one pass."""
        raise NotImplementedError(f"{type(self).__name__} edits one request per call (batched=False): call edit "
                                  "once per request (metrics.evaluate does)")

    def aux_loss(self, model: nn.Module, batch, pre_loc_logits: torch.Tensor) -> torch.Tensor:
        """A training term of the editor's own, added to Algorithm 1's loss (ENN's distillation); 0 here."""
        return pre_loc_logits.new_zeros((), dtype=torch.float32)

    def num_parameters(self) -> int:
        """Parameters trained ahead of time (0 for an editor that trains nothing)."""
        return 0

    @classmethod
    def default_config(cls, task: str | None = None, variant: str = "mend", **overrides) -> Any:
        """The config the harness builds this editor with for ``task``. ``variant`` and ``overrides`` are MEND's
        network ablations; other editors take none."""
        if variant != "mend" or overrides:
            raise ValueError(f"variants and network overrides are MEND ablations; {cls.alg!r} takes none")
        return cls.config_class()

    @classmethod
    def train_overrides(cls, task: str | None = None) -> dict:
        """``TrainConfig`` fields this editor trains with on ``task``, on top of the profile's."""
        return {}


class TrainableEditor(Editor, nn.Module):
    """An editor with parameters trained by :func:`mendlab.train.train`, saved as ``editor.safetensors`` plus
    ``editor_config.json`` (``alg``, ``config_dict()`` and the base model's fingerprint)."""

    trainable = True
    batched = True
    config_field: ClassVar[str] = "editor"  # the name of the editor's config in a cache key

    def param_groups(self, lr: float, lr_lr: float) -> list[dict]:
        raise NotImplementedError

    def config_dict(self) -> dict:
        """Everything but the weights that ``from_config_dict`` needs to rebuild this editor (JSON types)."""
        raise NotImplementedError

    @classmethod
    def from_config_dict(cls, cfg: dict) -> TrainableEditor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``editor.safetensors`` (the state dict) and ``editor_config.json``."""
        return save_editor(self, directory, {"alg": self.alg, **self.config_dict(), "base_model": self.base})

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: nn.Module | None = None, device=None):
        """Load a saved editor; with ``model``, first check it is the model the editor was trained for
        (:class:`MismatchedModelError` names both otherwise)."""
        cfg = read_editor_config(directory, cls.alg, model)
        return load_editor_state(cls.from_config_dict(cfg), directory, device)


def as_batch(model, tokenizer_or_batch, examples: EditExample | Sequence[EditExample] | None = None,
             max_length: int | None = None) -> EditBatch | dict:
    """An :class:`EditBatch` (or tensor dict) from either a prepared batch or ``(tokenizer, examples)``; texts
    are cut to the model's own position limit (or ``max_length``, if smaller; see :meth:`Collator.for_model`)."""
    if isinstance(tokenizer_or_batch, (EditBatch, dict)):
        batch = tokenizer_or_batch
    elif examples is None:
        raise TypeError("edit(model, tokenizer, examples) needs examples, or pass a prepared EditBatch")
    else:
        if isinstance(examples, EditExample):
            examples = [examples]
        batch = Collator.for_model(model, tokenizer_or_batch, max_length=max_length)(list(examples))
    enc = batch.edit_inner if isinstance(batch, EditBatch) else batch
    if "input_ids" in enc and enc["input_ids"].shape[0] == 0:
        raise ValueError("no edit requests: the batch has 0 rows; pass at least one EditExample")
    return batch


def guarded(method):
    """``edit`` / ``edit_many`` of an editor, checked against the model, run in eval mode, fingerprinted."""
    @functools.wraps(method)
    def run(self, model, *args, **kwargs):
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(f"{type(model).__name__} has weights on the meta device (built without them, e.g. for "
                             "counting parameters); load the real weights (from_pretrained) before editing")
        check_editor_model(self, model)
        with eval_mode(model):
            if method.__name__ == "edit_many":
                parts = [method(self, model, *chunk) for chunk in _chunks(*args, size=self.chunk_requests, **kwargs)]
                out = parts[0] if len(parts) == 1 else EditSet.concat(parts)
            else:
                out = method(self, model, *args, **kwargs)
        if getattr(out, "base", False) is None:
            out.base = base_of(model, out.names)
        return out

    run.guarded = True
    return run


def _chunks(tokenizer_or_batch, examples=None, *, size: int):
    """``(tokenizer_or_batch, examples)`` cut into runs of at most ``size`` requests: a list of examples by
    items, a prepared batch by rows of its edit inputs (``edit_many``'s edit b depends on request b alone)."""
    if examples is not None and not isinstance(examples, EditExample):
        examples = list(examples)
        return [(tokenizer_or_batch, examples[i:i + size]) for i in range(0, max(len(examples), 1), size)]
    if examples is not None or not isinstance(tokenizer_or_batch, (EditBatch, dict)):
        return [(tokenizer_or_batch, examples)]
    enc = tokenizer_or_batch.edit_inner if isinstance(tokenizer_or_batch, EditBatch) else tokenizer_or_batch
    n = int(enc["input_ids"].shape[0]) if "input_ids" in enc else 0
    if n <= size:
        return [(tokenizer_or_batch, None)]
    return [({k: v[i:i + size] for k, v in enc.items()}, None) for i in range(0, n, size)]


_warned_training = False


@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode and give every module its own train/eval flag back (also on exceptions).
    Warns once if it was in training mode: dropout would make every edit of the same request different."""
    global _warned_training
    modes = [(m, m.training) for m in model.modules()]
    if not any(mode for _, mode in modes):  # already in eval mode everywhere (the usual case): nothing to undo
        yield model
        return
    if model.training and not _warned_training:
        _warned_training = True
        warnings.warn("the base model is in training mode (dropout on); editors run it in eval mode, so the same "
                      "request always gives the same edit, and then put it back in training mode", stacklevel=4)
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def check_editor_model(editor, model) -> None:
    """Raise :class:`MismatchedModelError` naming both models unless ``model`` has the type and edited weight
    shapes the editor was built for (cheap: no weight values are compared)."""
    base = getattr(editor, "base", None)
    if not isinstance(base, dict) or not isinstance(base.get("shapes"), dict):
        return
    model_type, name = describe(model)
    params = dict(model.named_parameters())
    problem = None
    if base.get("model_type") and model_type and base["model_type"] != model_type:
        problem = f"model type {base['model_type']!r} vs {model_type!r}"
    elif any(n not in params for n in base["shapes"]):
        problem = f"the model has no weights {[n for n in base['shapes'] if n not in params][:3]}"
    else:
        wrong = [n for n, s in base["shapes"].items() if list(shape_key(model, n, params)) != list(s)]
        problem = f"different shapes of {wrong[:3]}" if wrong else None
    if problem:
        raise MismatchedModelError(
            f"{type(editor).__name__} was built for model {base.get('name')!r} ({base.get('model_type')}) but was "
            f"given {name!r} ({model_type}): {problem}. Edit the model it was built for, or build an editor for "
            "this one (e.g. MEND.for_model(model)).")


def model_name(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "<unnamed>")


def fingerprint(model, names: Sequence[str] | None = None) -> dict:
    """What identifies a base model for an editor: type, name, edited shapes, and the first 8 values of each
    edited weight (compared with a tolerance, so a bf16 copy of the same model still matches)."""
    names = edited_weights(model, names)
    params = dict(model.named_parameters())
    return {"model_type": model.config.model_type, "name": model_name(model),
            "shapes": {n: list(shape_key(model, n)) for n in names},
            "probe": {n: None if params[n].is_meta else
                      [round(float(x), 6) for x in params[n].detach().flatten()[:8].float().cpu()] for n in names}}


def check_fingerprint(saved: dict, model, where: str = "editor") -> None:
    """Raise :class:`MismatchedModelError` naming both models if ``model`` is not the one ``saved`` describes."""
    mine = fingerprint(model, list(saved["shapes"]) if _has_all(model, saved["shapes"]) else None)
    problem = None
    if mine["model_type"] != saved["model_type"]:
        problem = f"model type {saved['model_type']!r} vs {mine['model_type']!r}"
    elif mine["shapes"] != saved["shapes"]:
        problem = "different edited weights or shapes"
    else:
        for n, vals in saved["probe"].items():
            if vals is None or mine["probe"][n] is None:  # built on the meta device: nothing to compare
                continue
            if not torch.allclose(torch.tensor(mine["probe"][n]), torch.tensor(vals), rtol=2e-2, atol=1e-3):
                problem = f"different weights (first values of {n} differ)"
                break
    if problem:
        raise MismatchedModelError(
            f"{where} was trained for model {saved['name']!r} ({saved['model_type']}) but was given "
            f"{mine['name']!r} ({mine['model_type']}): {problem}. Load it with the model it was trained for, "
            f"or train a new editor for this one.")


def _has_all(model, names) -> bool:
    params = dict(model.named_parameters())
    return all(n in params for n in names)


def save_editor(editor: torch.nn.Module, directory: str | Path, config: dict) -> Path:
    """``editor.safetensors`` (the editor's state dict) and ``editor_config.json`` (``config``, which should
    hold ``alg`` and ``base_model``): what every trainable editor's ``save_pretrained`` writes. Each file is
    written under a temporary name and renamed into place, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, cfg = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    save_file({k: v.detach().contiguous().cpu() for k, v in editor.state_dict().items()}, str(_tmp(weights)))
    _tmp(cfg).write_text(json.dumps(config, indent=1))
    os.replace(_tmp(weights), weights)
    os.replace(_tmp(cfg), cfg)
    return directory


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def read_editor_config(directory: str | Path, alg: str, model=None) -> dict:
    """The saved config of an ``alg`` editor; with ``model``, first checks it is the model the editor was
    trained for (:class:`MismatchedModelError` names both otherwise)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}; is it a saved {alg} editor?")
    try:
        cfg = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON ({e}); save the editor again") from e
    if cfg.get("alg", "mend") != alg:
        raise ValueError(f"{directory} holds a {cfg.get('alg')!r} editor, not {alg!r}")
    if model is not None:
        check_fingerprint(cfg["base_model"], model, where=f"the editor in {directory}")
    return cfg


def load_editor_state(editor: torch.nn.Module, directory: str | Path, device=None):
    """Load ``editor.safetensors`` into ``editor`` and return it in eval mode (ready to edit: in training mode
    an edit would move a normaliser's statistics), on ``device`` if given."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"non-finite values in {', '.join(bad[:5])}")
        editor.load_state_dict(state)
    except Exception as e:  # a truncated, foreign or poisoned file: name it, never edit with half of it
        raise ValueError(f"{path} cannot be loaded as this editor's weights ({type(e).__name__}: {e})") from e
    editor.eval()
    return editor.to(device) if device is not None else editor
