"""Profiles and the cache folder.

``MENDLAB_PROFILE`` picks ``ci`` (tiny models, CPU, minutes; the default without a GPU) or ``full`` (larger
worlds and models, the paper's settings; the default with a GPU). ``MENDLAB_CACHE`` (default
``~/.cache/mendlab``) holds every built world, tokenizer, model and editor, keyed by a hash of its config.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

PROFILES = ("ci", "full")


def profile() -> str:
    """The active profile name: ``$MENDLAB_PROFILE``, else ``full`` with CUDA and ``ci`` without."""
    name = os.environ.get("MENDLAB_PROFILE")
    if name is None:
        import torch

        name = "full" if torch.cuda.is_available() else "ci"
    if name not in PROFILES:
        raise ValueError(f"MENDLAB_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
    return name


def cache_dir() -> Path:
    """``$MENDLAB_CACHE`` or ``~/.cache/mendlab``, created on first use."""
    path = Path(os.environ.get("MENDLAB_CACHE") or Path.home() / ".cache" / "mendlab").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(obj) -> str:
    """A short stable hash of a dataclass / JSON-able config, used as a cache key."""
    blob = json.dumps(asdict(obj) if is_dataclass(obj) else obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
