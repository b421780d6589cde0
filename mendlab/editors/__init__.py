"""Editors: one file each, all answering the same protocol (:class:`mendlab.editors.base.Editor`).

``ALGS`` names them as the command line does; ``editor_class(alg)`` gives the class, ``load_editor(dir, model)``
loads any saved trainable editor by the ``alg`` its config records.
"""

from __future__ import annotations

import json
from pathlib import Path

from mendlab.editors.base import Editor, MismatchedModelError, as_batch, fingerprint
from mendlab.editors.mend import MEND

ALGS = ("mend", "ft", "ft_kl", "ke", "enn")
TRAINED = ("mend", "ke", "enn")  # trained with train.py; FT and FT+KL only optimise at edit time


def editor_class(alg: str):
    """The editor class for ``alg`` (one of :data:`ALGS`)."""
    if alg == "mend":
        return MEND
    if alg in ("ft", "ft_kl"):
        from mendlab.editors.ft import FT, FTKL

        return FT if alg == "ft" else FTKL
    if alg == "ke":
        from mendlab.editors.ke import KE

        return KE
    if alg == "enn":
        from mendlab.editors.enn import ENN

        return ENN
    raise ValueError(f"unknown alg {alg!r}; choose one of {ALGS}")


def load_editor(directory: str | Path, model=None, device=None):
    """A saved trainable editor (``save_pretrained`` folder) of whatever alg its ``editor_config.json`` names."""
    cfg_file = Path(directory) / "editor_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{directory} has no editor_config.json; is it a saved editor?")
    alg = json.loads(cfg_file.read_text()).get("alg", "mend")
    return editor_class(alg).from_pretrained(directory, model, device=device)


__all__ = ["ALGS", "MEND", "TRAINED", "Editor", "MismatchedModelError", "as_batch", "editor_class", "fingerprint",
           "load_editor"]
