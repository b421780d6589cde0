"""The course as files: its exercises, and the student copy of it.

An exercise's solution lives in a code cell between the lines ``### BEGIN SOLUTION`` and ``### END SOLUTION``
(nbgrader's markers, on lines of their own, possibly indented; a cell may hold several regions). Its check is the
next code cell, whose first line is ``# CHECK``: it calls a checker of :mod:`mendlab.exercises`, which raises
``AssertionError`` when the answer is wrong or missing. Run in a fresh namespace, the notebook's first code cell,
the solution cell and the check cell pass; with the regions stubbed, the stubbed cell or the check cell raises.

:func:`student_copy` writes the course with every region replaced by ``raise NotImplementedError(...)`` and every
output cleared: what ``mendlab course student-copy OUT`` hands to a student.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import nbformat

MARK_BEGIN = "### BEGIN SOLUTION"
MARK_END = "### END SOLUTION"
CHECK_MARK = "# CHECK"
STUB = 'raise NotImplementedError("exercise: write your solution here")'

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = ROOT / "chapters"

README = """# MEND course: student copy

This is the course's notebooks (`notebooks/`) and chapters (`chapters/`) with the exercises' solutions removed
and every output cleared. Each exercise is a code cell holding

    raise NotImplementedError("exercise: write your solution here")

where your solution goes; the code cell after it starts with `# CHECK` and checks your answer (it raises
`AssertionError` while the answer is wrong or missing). Run the notebook from its first cell, write your solution,
then run the check cell. The notebooks need the `mendlab` library installed (`pip install -e .` in the course's
repository).

Written by `mendlab course student-copy`.
"""


class CourseError(ValueError):
    """A notebook breaks the exercise convention (unbalanced markers, a solution cell without its check)."""


def _marker(line: str) -> str | None:
    stripped = line.strip()
    return stripped if stripped in (MARK_BEGIN, MARK_END) else None


def solution_spans(source: str) -> list[tuple[int, int]]:
    """The marked regions of a cell's ``source`` as (BEGIN line, END line) indices, markers included.

    Raises :class:`CourseError` on an END without a BEGIN, a BEGIN inside a region, or a BEGIN never closed."""
    spans, begin = [], None
    for i, line in enumerate(source.splitlines()):
        mark = _marker(line)
        if mark == MARK_BEGIN:
            if begin is not None:
                raise CourseError(f"line {i + 1}: {MARK_BEGIN!r} inside the region opened on line {begin + 1} "
                                  "(regions do not nest)")
            begin = i
        elif mark == MARK_END:
            if begin is None:
                raise CourseError(f"line {i + 1}: {MARK_END!r} without a {MARK_BEGIN!r} before it")
            spans.append((begin, i))
            begin = None
    if begin is not None:
        raise CourseError(f"line {begin + 1}: {MARK_BEGIN!r} never closed by a {MARK_END!r}")
    return spans


def solution_regions(source: str) -> list[str]:
    """The text inside each marked region of ``source`` (markers excluded), in order."""
    lines = source.splitlines()
    return ["\n".join(lines[b + 1:e]) for b, e in solution_spans(source)]


def strip_solutions(source: str) -> str:
    """``source`` with every marked region (markers included) replaced by one ``raise NotImplementedError`` line at
    the BEGIN marker's indentation. Raises :class:`CourseError` on unbalanced or nested markers."""
    spans = solution_spans(source)
    if not spans:
        return source
    lines = source.splitlines()
    out, last = [], 0
    for begin, end in spans:
        indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
        out += lines[last:begin] + [indent + STUB]
        last = end + 1
    out += lines[last:]
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _read(nb) -> tuple[nbformat.NotebookNode, str]:
    """(notebook, name) from a notebook or the path of one."""
    if isinstance(nb, (str, os.PathLike)):
        return nbformat.read(nb, as_version=4), Path(nb).name
    return nb, "notebook"


def exercises(nb, name: str | None = None) -> list[tuple[int, int]]:
    """(solution cell index, check cell index) of each exercise of ``nb`` (a notebook or its path), indices into
    ``nb.cells``. Raises :class:`CourseError`, naming the notebook and cell, on unbalanced markers or a solution
    cell whose next code cell does not start with ``# CHECK``."""
    nb, default = _read(nb)
    name = name or default
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    pairs = []
    for k, i in enumerate(code):
        try:
            has_solution = bool(solution_spans(nb.cells[i].source))
        except CourseError as e:
            raise CourseError(f"{name}, cell {i}: {e}") from None
        if not has_solution:
            continue
        nxt = code[k + 1] if k + 1 < len(code) else None
        first = nb.cells[nxt].source.splitlines()[:1] if nxt is not None else []
        if not first or first[0].rstrip() != CHECK_MARK:
            where = f"code cell {nxt} does not start with it" if nxt is not None else "there is no code cell after it"
            raise CourseError(f"{name}, cell {i}: a solution cell must be followed by a check cell whose first line "
                              f"is {CHECK_MARK!r}; {where}")
        pairs.append((i, nxt))
    return pairs


def student_notebook(nb) -> nbformat.NotebookNode:
    """A copy of ``nb`` with its solutions stripped, every output cleared and every execution count reset."""
    nb = nbformat.from_dict(nb)
    nb.metadata.pop("widgets", None)  # saved widget state is output too
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def _support_files(notebooks_dir: Path) -> list[Path]:
    """The files beside the notebooks that running or checking them needs (``conftest.py``, ``sanitize.cfg``, ...):
    every plain, non-hidden file there that is not a notebook."""
    return sorted(p for p in notebooks_dir.iterdir()
                  if p.is_file() and p.suffix != ".ipynb" and not p.name.startswith(".") and p.suffix != ".pyc")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CourseError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise CourseError(f"{out} is not empty; choose an empty or new folder, or pass --force to write over it")


def student_copy(out, notebooks_dir=None, chapters_dir=None, force: bool = False) -> list[Path]:
    """Write the student copy of the course into ``out``: ``out/notebooks`` (every notebook with its solutions
    stripped and outputs cleared, and the non-notebook files beside them), ``out/chapters`` (every chapter) and
    ``out/README.md``. Every notebook is checked first (:func:`exercises`), so nothing is written for a broken one.

    Refuses a non-empty ``out`` unless ``force``. Returns the paths written, in order."""
    out = Path(out)
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS)
    chapters_dir = Path(chapters_dir or CHAPTERS)
    _check_out(out, force)
    notebooks = {p: nbformat.read(p, as_version=4) for p in sorted(notebooks_dir.glob("*.ipynb"))}
    if not notebooks:
        raise CourseError(f"no notebooks in {notebooks_dir}")
    for path, nb in notebooks.items():
        exercises(nb, path.name)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "chapters").mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in notebooks.items():
        nbformat.write(student_notebook(nb), out / "notebooks" / path.name)
        written.append(out / "notebooks" / path.name)
    for path in _support_files(notebooks_dir):
        written.append(Path(shutil.copyfile(path, out / "notebooks" / path.name)))
    for path in sorted(chapters_dir.glob("*.md")):
        written.append(Path(shutil.copyfile(path, out / "chapters" / path.name)))
    (out / "README.md").write_text(README)
    return [*written, out / "README.md"]


def exercise_counts(notebooks_dir=None) -> dict[str, int]:
    """How many exercises each notebook of ``notebooks_dir`` (default: the course's) holds, by file name."""
    paths = sorted(Path(notebooks_dir or NOTEBOOKS).glob("*.ipynb"))
    return {p.name: len(exercises(p)) for p in paths}


def _runnable(source: str) -> str:
    """``source`` without its IPython magic and shell lines (those starting with ``%`` or ``!``)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


@contextmanager
def _cwd(path):
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_exercise(nb, solution_index: int, check_index: int, stub: bool, cwd=None) -> None:
    """Run one exercise of ``nb`` (a notebook or its path) as a student would: its first code cell, then the
    solution cell (with its regions stubbed when ``stub``), then the check cell, in one fresh namespace via ``exec``
    (lines starting with ``%`` or ``!`` skipped), in the folder ``cwd`` if given. Raises whatever the cells raise."""
    nb, name = _read(nb)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    namespace: dict = {"__name__": "__main__"}
    with _cwd(cwd):
        for i in dict.fromkeys((first, solution_index, check_index)):
            source = nb.cells[i].source
            if i == solution_index and stub:
                source = strip_solutions(source)
            exec(compile(_runnable(source), f"<{name} cell {i}>", "exec"), namespace)


def time_notebooks(names=None, notebooks_dir=None, timeout: int = 900, on_row=None, progress: bool = True):
    """Run each notebook of the course (or those whose file name starts with one of ``names``, e.g. ``"03"``)
    top to bottom in a fresh kernel, as ``pytest --nbval`` does, on a copy (the stored notebook is untouched),
    and time it. One row per notebook: ``notebook``, ``seconds``, ``code_cells``, ``exercises``. ``on_row(row)``
    is called as each is finished (``report.ResultsTable.add``). A failing notebook raises, naming it."""
    import time

    import pandas as pd
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    folder = Path(notebooks_dir or NOTEBOOKS)
    paths = [p for p in sorted(folder.glob("*.ipynb")) if not names or p.name.startswith(tuple(names))]
    if not paths:
        raise CourseError(f"no notebook in {folder} starts with {list(names or [])}")
    rows = []
    for path in tqdm(paths, desc="notebooks", disable=not progress):
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(folder)}}).execute()
        except Exception as e:  # a cell error or a timeout: which notebook, and what
            raise CourseError(f"{path.name} failed: {type(e).__name__}: {str(e)[-400:]}") from e
        rows.append({"notebook": path.stem, "seconds": round(time.perf_counter() - t0, 1),
                     "code_cells": sum(c.cell_type == "code" for c in nb.cells), "exercises": len(exercises(nb))})
        if on_row is not None:
            on_row(rows[-1])
    return pd.DataFrame(rows)


def runtime_label(seconds: float) -> str:
    """How the course index writes a notebook's run time: ``"45 s"`` under a minute, else ``"3.5 min"``."""
    return f"{seconds:.0f} s" if seconds < 59.5 else f"{seconds / 60:.1f} min"
