"""Results tables: CSV files written row by row, each with a provenance sidecar, and their figures.

Every table under ``results/`` is written by a ``mendlab`` command through :class:`ResultsTable`: a run cut short
keeps the rows it finished, and the sidecar ``<table file>.provenance.json`` says how the rows were made (command,
commit, profile, seeds, wall time, library versions) and whether the run completed.
"""

from __future__ import annotations

import csv
import gzip
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
    """Where a table's provenance lives: beside it, the table's file name plus ``.provenance.json``
    (``batch_qa.csv.provenance.json``, ``sequential_qa.csv.gz.provenance.json``)."""
    table = Path(table)
    return table.with_name(table.name + ".provenance.json")


GZ_FLUSH_ROWS = 1000  # a .csv.gz table is appended to in gzip members of this many rows


class ResultsTable:
    """A CSV written as its rows come, with ``<file>.provenance.json`` (its provenance) beside it.

    The columns are fixed by the first row; the sidecar is rewritten after every write (``complete: false``) and
    once more by :meth:`close` (``complete: true`` and the wall time), so a cut run still says what it holds. A
    plain ``.csv`` gets every row at once; a ``.csv.gz`` (for long tables, e.g. a retention matrix per sequence)
    gets them in gzip members of :data:`GZ_FLUSH_ROWS` rows, which ``pandas.read_csv`` reads as one file.
    """

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        if not self.path.name.endswith((".csv", ".csv.gz")):
            raise ValueError(f"a results table is a .csv or .csv.gz file, got {self.path}")
        self.gz = self.path.name.endswith(".gz")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sidecar = sidecar_of(self.path)
        self.meta = dict(meta)
        self.columns: list[str] | None = None
        self.rows, self.pending = 0, []
        self.t0 = time.perf_counter()
        self.path.unlink(missing_ok=True)
        self._write_sidecar(complete=False)

    def add(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.pending.append(self.columns)
        if list(row) != self.columns:
            raise ValueError(f"row columns {list(row)} differ from the table's {self.columns}")
        self.pending.append([_cell(row[c]) for c in self.columns])
        if not self.gz or len(self.pending) >= GZ_FLUSH_ROWS:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._write_sidecar(complete=True)

    def _flush(self) -> None:
        if not self.pending:
            return
        rows = sum(r is not self.columns for r in self.pending)
        with (gzip.open(self.path, "at", newline="") if self.gz else self.path.open("a", newline="")) as f:
            csv.writer(f).writerows(self.pending)
        self.rows += rows
        self.pending = []
        self._write_sidecar(complete=False)

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
    if not path.name.endswith((".csv", ".csv.gz")) and len(path.parts) == 1:  # a table's name: its .csv or .csv.gz
        path = next((p for p in (RESULTS / f"{path.name}.csv", RESULTS / f"{path.name}.csv.gz") if p.exists()),
                    RESULTS / f"{path.name}.csv")
    sidecar = sidecar_of(path)
    if not sidecar.exists():
        raise FileNotFoundError(f"{path} has no provenance sidecar {sidecar.name}: tables under results/ are "
                                "written only by mendlab commands")
    return pd.read_csv(path), json.loads(sidecar.read_text())
