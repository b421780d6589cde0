"""Editors: one file each, all subclasses of :class:`~mendlab.editors.base.Editor`, and the one registry of them.

:data:`EDITORS` maps each method's name (as the command line spells it) to its label, module and class; the
harness, the CLI and the plots read everything about a method from here and from the class itself
(``trainable``, ``batched``, ``default_config``, ``train_overrides``), so adding an editor is one file and one
entry below. ``load_editor(dir, model)`` loads any saved trainable editor by the ``alg`` its config records.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from mendlab.editors.base import Editor, MismatchedModelError, TrainableEditor, as_batch, fingerprint
from mendlab.editors.mend import MEND


@dataclass(frozen=True)
class EditorEntry:
    """A registered editor: ``alg`` (its name), ``label`` (in tables and figures), where its class lives, and
    whether it is trained ahead of time (checked against the class's own ``trainable`` by the tests)."""

    alg: str
    label: str
    module: str
    class_name: str
    trained: bool

    @property
    def cls(self) -> type[Editor]:
        return getattr(importlib.import_module(self.module), self.class_name)


# in the order of the paper's Table 4, the method last
EDITORS: dict[str, EditorEntry] = {e.alg: e for e in (
    EditorEntry("ft", "FT", "mendlab.editors.ft", "FT", trained=False),
    EditorEntry("ft_kl", "FT+KL", "mendlab.editors.ft", "FTKL", trained=False),
    EditorEntry("ke", "KE", "mendlab.editors.ke", "KE", trained=True),
    EditorEntry("enn", "ENN", "mendlab.editors.enn", "ENN", trained=True),
    EditorEntry("mend", "MEND", "mendlab.editors.mend", "MEND", trained=True),
)}
ALGS = tuple(EDITORS)
TRAINED = tuple(a for a, e in EDITORS.items() if e.trained)  # trained with train.py; the rest optimise at edit time
LABELS = {a: e.label for a, e in EDITORS.items()}


def editor_class(alg: str) -> type[Editor]:
    """The editor class registered as ``alg`` (one of :data:`ALGS`)."""
    if alg not in EDITORS:
        raise ValueError(f"unknown alg {alg!r}; choose one of {ALGS}")
    return EDITORS[alg].cls


def load_editor(directory: str | Path, model=None, device=None):
    """A saved trainable editor (``save_pretrained`` folder) of whatever alg its ``editor_config.json`` names."""
    cfg_file = Path(directory) / "editor_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{directory} has no editor_config.json; is it a saved editor?")
    alg = json.loads(cfg_file.read_text()).get("alg", "mend")
    return editor_class(alg).from_pretrained(directory, model, device=device)


__all__ = ["ALGS", "EDITORS", "LABELS", "MEND", "TRAINED", "Editor", "EditorEntry", "MismatchedModelError",
           "TrainableEditor", "as_batch", "editor_class", "fingerprint", "load_editor"]
