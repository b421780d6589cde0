"""Profiles and the cache folder.

``MENDLAB_PROFILE`` picks ``ci`` (tiny models, CPU, minutes; the default without a GPU) or ``full`` (larger
worlds and models, the paper's settings; the default with a GPU). Every setting that differs between them is a
field of :class:`Profile`, and :data:`SETTINGS` holds both, here and nowhere else. ``MENDLAB_CACHE`` (default
``~/.cache/mendlab``) holds every built world, tokenizer, model and editor, keyed by a hash of its config.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskData:
    """How many requests the tasks draw from a world. Claims have two labels, so a claim request cannot get a
    fresh target in training (``TrainConfig.resample_target``): the train split gets ``claim_variants`` redrawn
    claims per training fact instead. Generation draws ``gen_variants`` requests per training subject (28k
    distinct requests on the ``ci`` world; the paper trains on ~68k) and ``gen_eval_variants`` per validation and
    test subject (160 and 320 requests, so one request moves edit success by well under 0.01)."""

    claim_variants: int = 7
    gen_variants: int = 200
    gen_eval_variants: int = 8


@dataclass(frozen=True)
class Profile:
    """Everything a profile sets. ``train``: ``TrainConfig`` fields of editor training (steps, validation,
    patience); ``zoo_scale``: the world's subjects and the zoo's training steps, times the ``ci`` zoo's;
    ``compare``: a notebook-sized comparison (editor training ``steps``, None for the profile's; test requests
    ``n``, None for all; ``n_val`` requests in FT's learning-rate sweep); ``tasks``: :class:`TaskData`."""

    name: str
    train: dict
    zoo_scale: int
    compare: dict
    tasks: TaskData = field(default_factory=TaskData)


SETTINGS: dict[str, Profile] = {
    "ci": Profile("ci", train=dict(steps=2000, val_every=100, val_size=160, patience=1000), zoo_scale=1,
                  compare=dict(steps=300, n=24, n_val=8)),
    # full: patience = steps, so the cosine schedule always runs to its end (the best checkpoint is still the
    # validation's): a shorter patience lets a noisy validation loss end the run before the low-lr phase at the
    # end of the schedule, which is where an editor settles
    "full": Profile("full", train=dict(steps=12000, val_every=500, val_size=500, patience=12000), zoo_scale=4,
                    compare=dict(steps=None, n=None, n_val=48)),
}
PROFILES = tuple(SETTINGS)


def profile() -> str:
    """The active profile name: ``$MENDLAB_PROFILE``, else ``full`` with CUDA and ``ci`` without."""
    name = os.environ.get("MENDLAB_PROFILE")
    if name is None:
        import torch

        name = "full" if torch.cuda.is_available() else "ci"
    if name not in PROFILES:
        raise ValueError(f"MENDLAB_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
    return name


def settings(name: str | None = None) -> Profile:
    """The :class:`Profile` named ``name``, else the active one (:func:`profile`)."""
    name = name or profile()
    if name not in SETTINGS:
        raise ValueError(f"{name!r} is not a profile; choose one of {PROFILES}")
    return SETTINGS[name]


def cache_dir() -> Path:
    """``$MENDLAB_CACHE`` or ``~/.cache/mendlab``, created on first use."""
    path = Path(os.environ.get("MENDLAB_CACHE") or Path.home() / ".cache" / "mendlab").expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the mendlab cache folder {path} ({e}); set MENDLAB_CACHE to a "
                              "writable folder") from e
    return path


def writable(folder: Path) -> Path:
    """``folder`` (created if missing) when this process can write into it; a ``PermissionError`` naming it and
    ``MENDLAB_CACHE`` otherwise. Called before a build or a training run starts, not after its work is done.
    A read-only cache still serves what it already holds."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"the mendlab cache folder {folder} is not writable ({e.strerror or e}); set "
                              "MENDLAB_CACHE to a writable folder, or build what you need where you can write") from e
    return folder


def config_hash(obj) -> str:
    """A short stable hash of a dataclass / JSON-able config, used as a cache key."""
    blob = json.dumps(asdict(obj) if is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
