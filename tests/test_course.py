"""The course as files (mendlab.course): solution regions stubbed, exercises paired with their checks, the student
copy written by ``mendlab course student-copy``, and every exercise of the course's notebooks run both ways."""

import json
import textwrap

import nbformat
import pytest
import torch

from mendlab import course
from mendlab.cli import main
from mendlab.course import CHECK_MARK, MARK_BEGIN, MARK_END, STUB, CourseError

NOTEBOOKS = course.NOTEBOOKS


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def notebook(*cells) -> nbformat.NotebookNode:
    """A notebook of ``("code" | "md", source)`` cells, every code cell with a stored output and count."""
    nb = nbformat.v4.new_notebook()
    for n, (kind, source) in enumerate(cells, 1):
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source, execution_count=n)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output {n}\n")]
            nb.cells.append(cell)
    return nb


# A two-exercise notebook following the convention: the first solution is a function body (the stub raises when
# the check calls it), the second is top-level code (the stubbed cell itself raises).
FIRST = src("""
    %matplotlib inline
    import math
    !echo "shell lines are skipped"
    POWER = 2
    """)
SOLUTION_1 = src(f"""
    def area(r):
        \"\"\"The area of a circle of radius r.\"\"\"
        {MARK_BEGIN}
        squared = r ** POWER
        return math.pi * squared
        {MARK_END}
    """)
CHECK_1 = f"{CHECK_MARK}\nassert abs(area(2.0) - 4 * math.pi) < 1e-12, 'area(2) should be 4π'\n"
SOLUTION_2 = src(f"""
    radii = [1.0, 2.0, 3.0]
    {MARK_BEGIN}
    # one line per radius
    total = sum(math.pi * r ** POWER for r in radii)
    {MARK_END}
    print(total)
    """)
CHECK_2 = f"{CHECK_MARK}\nassert abs(total - 14 * math.pi) < 1e-12, 'total should be 14π'\n"


def synthetic() -> nbformat.NotebookNode:
    return notebook(("code", FIRST), ("md", "# Exercise 1"), ("code", SOLUTION_1), ("md", "Check it:"),
                    ("code", CHECK_1), ("code", SOLUTION_2), ("code", CHECK_2), ("code", "print('the end')"))


# --- strip_solutions ---------------------------------------------------------------------------------------------

def test_strip_keeps_the_begin_markers_indentation():
    assert course.strip_solutions(SOLUTION_1) == src(f"""
        def area(r):
            \"\"\"The area of a circle of radius r.\"\"\"
            {STUB}
        """)


def test_strip_replaces_every_region_and_keeps_the_rest():
    source = f"a = 1\n{MARK_BEGIN}\nb = 2\n{MARK_END}\nc = 3\n  {MARK_BEGIN}\n  d = 4\n  e = 5\n  {MARK_END}\n"
    assert course.strip_solutions(source) == f"a = 1\n{STUB}\nc = 3\n  {STUB}\n"
    assert course.solution_regions(source) == ["b = 2", "  d = 4\n  e = 5"]
    assert course.strip_solutions("x = 1") == "x = 1"  # nothing marked, nothing changed


@pytest.mark.parametrize("source, message", [
    (f"{MARK_END}\n", "without"),
    (f"{MARK_BEGIN}\nx = 1\n", "never closed"),
    (f"{MARK_BEGIN}\n{MARK_BEGIN}\n{MARK_END}\n{MARK_END}\n", "do not nest"),
    (f"{MARK_BEGIN}\n{MARK_END}\n{MARK_END}\n", "line 3"),
])
def test_unbalanced_or_nested_markers_are_a_clear_error(source, message):
    with pytest.raises(CourseError, match=message):
        course.strip_solutions(source)
    assert issubclass(CourseError, ValueError)


# --- exercises() -------------------------------------------------------------------------------------------------

def test_exercises_pairs_each_solution_cell_with_the_next_code_cell():
    assert course.exercises(synthetic()) == [(2, 4), (5, 6)]
    assert course.exercises(notebook(("code", FIRST))) == []


@pytest.mark.parametrize("cells, message", [
    ([("code", FIRST), ("code", SOLUTION_1), ("code", "assert area(1) > 0")], "cell 1.*code cell 2"),
    ([("code", FIRST), ("code", SOLUTION_1), ("md", CHECK_1)], "cell 1.*no code cell after"),
    ([("code", FIRST), ("code", f"{MARK_BEGIN}\nx = 1\n"), ("code", CHECK_1)], "cell 1.*never closed"),
])
def test_exercises_names_the_notebook_and_cell_of_a_broken_exercise(cells, message):
    with pytest.raises(CourseError, match=f"my.ipynb, {message}"):
        course.exercises(notebook(*cells), "my.ipynb")


# --- run_exercise on the synthetic notebook ---------------------------------------------------------------------

@pytest.mark.parametrize("pair", [(2, 4), (5, 6)])
def test_synthetic_exercise_passes_with_its_solution_and_raises_stubbed(pair, capsys):
    course.run_exercise(synthetic(), *pair, stub=False)
    with pytest.raises(NotImplementedError, match="exercise"):
        course.run_exercise(synthetic(), *pair, stub=True)


def test_a_wrong_answer_fails_the_check():
    nb = synthetic()
    nb.cells[2].source = nb.cells[2].source.replace("math.pi * squared", "math.pi * r")
    with pytest.raises(AssertionError, match="4π"):
        course.run_exercise(nb, 2, 4, stub=False)


def test_each_exercise_runs_in_a_fresh_namespace(tmp_path):
    nb = synthetic()
    nb.cells[6].source = f"{CHECK_MARK}\nassert 'area' not in globals() and 'POWER' in globals()\n"
    course.run_exercise(nb, 5, 6, stub=False)
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    course.run_exercise(path, 5, 6, stub=False)  # a path works as well


# --- the student copy --------------------------------------------------------------------------------------------

def assert_student_copy(notebooks_dir, chapters_dir, out) -> None:
    """``out`` is the student copy of the course in ``notebooks_dir`` and ``chapters_dir``."""
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        original = nbformat.read(path, as_version=4)
        copy = nbformat.read(out / "notebooks" / path.name, as_version=4)
        assert [c.cell_type for c in copy.cells] == [c.cell_type for c in original.cells], path.name
        for i, (old, new) in enumerate(zip(original.cells, copy.cells, strict=True)):
            if new.cell_type != "code":  # prose may name the markers
                assert new.source == old.source
                continue
            assert MARK_BEGIN not in new.source and MARK_END not in new.source, (path.name, i)
            assert new.outputs == [] and new.execution_count is None, (path.name, i)
            kept = {line.strip() for line in course.strip_solutions(old.source).splitlines()}
            outside = kept - {STUB}  # lines of the cell outside its regions may stay, of course
            for region in course.solution_regions(old.source):
                for line in region.splitlines():
                    code = line.strip()
                    if code and not code.startswith("#") and code not in outside:
                        assert code not in {s.strip() for s in new.source.splitlines()}, (path.name, i, code)
            if course.solution_regions(old.source):
                assert STUB in new.source, (path.name, i)
        assert copy.metadata.get("widgets") is None
    for path in chapters_dir.glob("*.md"):
        assert (out / "chapters" / path.name).read_text() == path.read_text()
    for name in ("conftest.py", "sanitize.cfg"):
        if (notebooks_dir / name).exists():
            assert (out / "notebooks" / name).read_bytes() == (notebooks_dir / name).read_bytes()
    assert "solutions removed" in (out / "README.md").read_text()


@pytest.fixture
def tiny_course(tmp_path):
    """A course of one synthetic notebook, one chapter and one support file."""
    nbs, chapters = tmp_path / "nbs", tmp_path / "chapters"
    nbs.mkdir()
    chapters.mkdir()
    nb = synthetic()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(nb, nbs / "00_intro.ipynb")
    (nbs / "sanitize.cfg").write_text("[x]\nregex: a\nreplace: b\n")
    (chapters / "00_intro.md").write_text("# Intro\n")
    return nbs, chapters


def test_student_copy_of_a_synthetic_course(tiny_course, tmp_path):
    nbs, chapters = tiny_course
    out = tmp_path / "out"
    written = course.student_copy(out, nbs, chapters)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "README.md", "chapters/00_intro.md", "notebooks/00_intro.ipynb", "notebooks/sanitize.cfg"]
    assert_student_copy(nbs, chapters, out)
    copy = nbformat.read(out / "notebooks" / "00_intro.ipynb", as_version=4)
    assert "return math.pi * squared" not in copy.cells[2].source and "print(total)" in copy.cells[5].source
    assert copy.cells[4].source == CHECK_1 and copy.cells[0].source == FIRST


def test_student_copy_refuses_a_non_empty_folder_unless_forced(tiny_course, tmp_path):
    nbs, chapters = tiny_course
    out = tmp_path / "out"
    out.mkdir()
    course.student_copy(out, nbs, chapters)  # an empty folder is fine
    with pytest.raises(CourseError, match="not empty"):
        course.student_copy(out, nbs, chapters)
    course.student_copy(out, nbs, chapters, force=True)
    assert_student_copy(nbs, chapters, out)


def test_student_copy_writes_nothing_for_a_broken_notebook(tiny_course, tmp_path):
    nbs, chapters = tiny_course
    nbformat.write(notebook(("code", FIRST), ("code", SOLUTION_1)), nbs / "01_broken.ipynb")
    with pytest.raises(CourseError, match="01_broken.ipynb, cell 1"):
        course.student_copy(tmp_path / "out", nbs, chapters)
    assert not (tmp_path / "out").exists()


def test_cli_student_copy_of_the_course(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["course", "student-copy", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["out"] == str(out) and set(result["exercises"]) == {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert all(p.startswith(str(out)) for p in result["files"])
    assert_student_copy(NOTEBOOKS, course.CHAPTERS, out)
    for path in (out / "notebooks").glob("*.ipynb"):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert not any("BEGIN SOLUTION" in c.source or "END SOLUTION" in c.source for c in code), path.name
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
    assert main(["course", "student-copy", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["course", "student-copy", str(out), "--force"]) == 0
    assert "exercises" in capsys.readouterr().out


# --- every exercise of the course's notebooks, both ways -------------------------------------------------------

def course_exercises():
    """One param per (notebook, exercise); a notebook without exercises (skipped) or breaking the convention
    (failed) gives one param of its own."""
    params = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        try:
            pairs = course.exercises(path)
        except CourseError as e:
            params.append(pytest.param(path, None, str(e), id=f"{path.stem}-broken"))
            continue
        if not pairs:
            params.append(pytest.param(path, None, None, id=f"{path.stem}-no-exercises"))
        params += [pytest.param(path, pair, None, id=f"{path.stem}-cell{pair[0]}") for pair in pairs]
    return params


@pytest.fixture
def isolated():
    """The notebooks' first cells set torch's threads, determinism and seed: put them back afterwards."""
    threads, deterministic, rng = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), \
        torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_rng_state(rng)
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("path, pair, error", course_exercises())
def test_course_exercise_passes_with_its_solution_and_raises_stubbed(path, pair, error, isolated, capsys):
    if error is not None:
        pytest.fail(error)
    if pair is None:
        pytest.skip(f"{path.name} has no exercises yet")
    nb = nbformat.read(path, as_version=4)
    course.run_exercise(nb, *pair, stub=False, cwd=NOTEBOOKS)
    with pytest.raises((NotImplementedError, AssertionError)):
        course.run_exercise(nb, *pair, stub=True, cwd=NOTEBOOKS)


# COURSE COMPLETENESS: fails until the exercises of notebooks 00–04 have been written (expected until then).
def test_course_complete_notebooks_00_to_04_have_at_least_two_exercises_each():
    counts = course.exercise_counts()
    early = {name: n for name, n in counts.items() if name[:2] in {"00", "01", "02", "03", "04"}}
    assert len(early) == 5, sorted(counts)
    assert all(n >= 2 for n in early.values()), f"exercises per notebook: {early}"


def test_time_notebooks_runs_each_in_a_fresh_kernel_and_names_a_failing_one(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("print(x + 1)")]), tmp_path / "00_a.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("raise ValueError('boom')")]), tmp_path / "01_b.ipynb")
    rows = course.time_notebooks(["00"], notebooks_dir=tmp_path, progress=False)
    assert list(rows["notebook"]) == ["00_a"] and rows["code_cells"][0] == 2 and rows["seconds"][0] >= 0
    assert not (tmp_path / "00_a.ipynb").read_text().count('"outputs": [\n     {')  # the stored notebook untouched
    with pytest.raises(course.CourseError, match="(?s)01_b.ipynb failed.*boom"):
        course.time_notebooks(["01"], notebooks_dir=tmp_path, progress=False)


def test_the_course_index_lists_every_notebook_with_its_exercises_and_measured_run_time():
    """notebooks/README.md: one row per notebook, its exercise count as the notebooks hold them, and its run time
    as `mendlab course timings` measured it (results/course_timings.csv)."""
    import re

    from mendlab.experiments import report

    index = (course.NOTEBOOKS / "README.md").read_text()
    rows = {m[0]: m for m in re.findall(r"^\| (\d\d) \| `([^`]+)` \|.*\| (\d+) \| ([^|]+) \|$", index, flags=re.M)}
    counts = course.exercise_counts()
    timings, meta = report.load("course_timings")
    assert meta["complete"] and sorted(rows) == sorted(n[:2] for n in counts)
    for _, stem, exercises, runtime in rows.values():
        assert f"{stem}.ipynb" in counts and int(exercises) == counts[f"{stem}.ipynb"], stem
        seconds = timings.set_index("notebook").loc[stem, "seconds"]
        assert runtime.strip() == course.runtime_label(seconds), (stem, runtime, seconds)
