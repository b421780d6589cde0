"""Results tables: CSV files written row by row, each with a provenance sidecar, and their figures.

Every table under ``results/`` is written by a ``mendlab`` command through :class:`ResultsTable`: a run cut short
keeps the rows it finished, and the sidecar ``<name>.provenance.json`` says how the rows were made (command,
commit, profile, seeds, wall time, library versions) and whether the run completed.
"""

from __future__ import annotations

import csv
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it; None outside a git checkout."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(command: str, profile: str, seeds: Iterable[int], **extra) -> dict:
    """The sidecar's fields; ``extra`` adds any setting the rows depend on (``world_seed``, ``steps``...)."""
    import torch
    import transformers

    return {"command": command, "commit": git_commit(), "profile": profile, "seeds": list(seeds), **extra,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a shell line (``mendlab compare ...``)."""
    argv = sys.argv if argv is None else argv
    head = "mendlab" if Path(argv[0]).name in ("mendlab", "__main__.py") else Path(argv[0]).name
    return " ".join([head, *map(shlex.quote, argv[1:])])


def sidecar_of(table: str | Path) -> Path:
    """Where a table's provenance lives: beside it, ``<name>.provenance.json`` (``batch_qa.provenance.json``)."""
    table = Path(table)
    return table.with_name(table.stem + ".provenance.json")


class ResultsTable:
    """A CSV written one row at a time, with ``<name>.provenance.json`` (its provenance) beside it.

    The columns are fixed by the first row; the sidecar is rewritten after every row (``complete: false``) and
    once more by :meth:`close` (``complete: true`` and the wall time), so a cut run still says what it holds.
    """

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise ValueError(f"a results table is a .csv file, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sidecar = sidecar_of(self.path)
        self.meta = dict(meta)
        self.columns: list[str] | None = None
        self.rows = 0
        self.t0 = time.perf_counter()
        self.path.unlink(missing_ok=True)
        self._write_sidecar(complete=False)

    def add(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        if list(row) != self.columns:
            raise ValueError(f"row columns {list(row)} differ from the table's {self.columns}")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_cell(row[c]) for c in self.columns])
        self.rows += 1
        self._write_sidecar(complete=False)

    def close(self) -> None:
        self._write_sidecar(complete=True)

    def _write_sidecar(self, complete: bool) -> None:
        blob = {**self.meta, "rows": self.rows, "complete": complete,
                "wall_seconds": round(time.perf_counter() - self.t0, 1)}
        self.sidecar.write_text(json.dumps(blob, indent=1) + "\n")


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


# the repository's results folder (a checkout: next to the package)
RESULTS = Path(__file__).resolve().parents[2] / "results"


def load(path: str | Path):
    """(DataFrame, provenance dict) of a results table: a path, or the name of a table in the repository's
    ``results/`` (``"compare_ci_gen"``). Refuses a table whose provenance sidecar is missing."""
    import pandas as pd

    path = Path(path)
    if path.suffix != ".csv" and len(path.parts) == 1:
        path = RESULTS / f"{path.name}.csv"
    sidecar = sidecar_of(path)
    if not sidecar.exists():
        raise FileNotFoundError(f"{path} has no provenance sidecar {sidecar.name}: tables under results/ are "
                                "written only by mendlab commands")
    return pd.read_csv(path), json.loads(sidecar.read_text())
