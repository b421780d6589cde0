"""The notebooks' checked exercises (mendlab.exercises): every solution passes its check in a fresh namespace
where only the notebook's first code cell has run; with the solution stubbed out, as the student copy does, the
check fails; and each checker rejects a deliberately wrong answer."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import nbformat
import pytest
import torch

from mendlab import exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))
REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[ \t]*\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.M | re.S)


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _pairs():
    """(notebook, first code cell, solution cell, check cell) for every exercise of every notebook."""
    out = []
    for path in NOTEBOOKS:
        cells = _code(nbformat.read(path, as_version=4))
        for i, src in enumerate(cells):
            if "### BEGIN SOLUTION" in src:
                out.append(pytest.param(path.stem, cells[0], src, cells[i + 1], id=f"{path.stem[:2]}-{i}"))
    return out


PAIRS = _pairs()


def stub(src: str) -> str:
    """The student copy's cell: each marked region replaced by a raise at the markers' indentation."""
    return REGION.sub(lambda m: f'{m.group(1)}raise NotImplementedError("exercise: write this part")', src)


@pytest.fixture(autouse=True)
def _torch_state():
    """The first cells set torch's threads and determinism; give both back after each test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _run(*cells: str) -> str:
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for src in cells:
            exec(compile(src, "<cell>", "exec"), namespace)
    return out.getvalue()


def test_the_convention_holds_in_every_notebook():
    per_notebook = {p.stem[:2]: 0 for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        cells = _code(nbformat.read(path, as_version=4))
        assert "import mendlab" in cells[0] and "pip install -e ." in cells[0], path.name
        assert "exercises" in cells[0], f"{path.name}: the first cell imports the checkers"
        for i, src in enumerate(cells):
            begins, ends = src.count("### BEGIN SOLUTION"), src.count("### END SOLUTION")
            assert begins == ends == len(REGION.findall(src)), f"{path.name} cell {i}: unpaired markers"
            for line in src.splitlines():
                if "### BEGIN SOLUTION" in line or "### END SOLUTION" in line:
                    assert line.strip() in ("### BEGIN SOLUTION", "### END SOLUTION"), line
            if begins:
                per_notebook[path.stem[:2]] += 1
                assert cells[i + 1].split("\n")[0] == "# CHECK", f"{path.name}: no # CHECK cell after cell {i}"
                assert "exercises.check_" in cells[i + 1]
            if src.split("\n")[0] == "# CHECK":
                assert "### BEGIN SOLUTION" in cells[i - 1], f"{path.name} cell {i}: a check without a solution"
    assert all(per_notebook[k] >= 2 for k in ("00", "01", "02", "03", "04")), per_notebook
    assert all(per_notebook[k] >= 1 for k in ("05", "06", "07", "08")), per_notebook


@pytest.mark.parametrize("notebook, first, solution, check", PAIRS)
def test_the_solution_passes_its_check_in_a_fresh_namespace(notebook, first, solution, check):
    printed = _run(first, solution, check)
    assert printed.strip().splitlines()[-1].startswith("✓"), printed


@pytest.mark.parametrize("notebook, first, solution, check", PAIRS)
def test_the_stubbed_solution_fails_its_check(notebook, first, solution, check):
    stubbed = stub(solution)
    assert "### BEGIN SOLUTION" not in stubbed and "raise NotImplementedError" in stubbed
    with pytest.raises((AssertionError, NotImplementedError)) as err:
        _run(first, stubbed, check)
    if err.type is AssertionError:
        assert str(err.value).startswith("not implemented yet"), err.value


# -- each checker against a wrong answer -------------------------------------------------------------------------
def _kl_wrong_direction(pre, post, mask):
    lp, lq = torch.log_softmax(post, -1), torch.log_softmax(pre, -1)
    return ((lp.exp() * (lp - lq)).sum(-1) * mask).sum() / mask.sum()


def _token_mean_loss(logits, labels, pre, post, mask, c_edit, c_loc):
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    return c_edit * nll + c_loc * _kl_right(pre, post, mask)


def _kl_right(pre, post, mask):
    return _kl_wrong_direction(post, pre, mask)


WRONG = [
    (exercises.check_edit_success, lambda logits, labels: (logits.argmax(-1) == labels).all(-1), "wrong at rows"),
    (exercises.check_accuracy_drawdown, lambda pre, post, labels: 0.0, "max abs error"),
    (exercises.check_rank1_gradient, lambda u, d, conv1d=False: d.T @ u, "shape"),
    (exercises.check_break_even_rows, lambda m, n: m * n // (m + n) + 1, "m=128"),
    (exercises.check_lowrank_block, lambda z, u, v, b, s, o: z + torch.relu(s * (z @ u @ v + b) + o), "max abs"),
    (exercises.check_editor_parameters, lambda m, n, layers, rank=1920, n_blocks=2:
        n_blocks * (2 * (m + n) ** 2 + (m + n) + 2 * layers * (m + n)), "nets.parameter_count"),
    (exercises.check_kl_loc, _kl_wrong_direction, "KL(post ‖ pre)"),
    (exercises.check_mend_loss, _token_mean_loss, "per request first"),
    (exercises.check_ft_kl_loss, lambda logits, labels, pre, post, mask, c: _kl_right(pre, post, mask), "max abs"),
    (exercises.check_least_squares, lambda K, V, ridge: torch.linalg.lstsq(K.T, V.T).solution.T, "ridge 0.01"),
    (exercises.check_fraction_followed, lambda r: sum(c.after == c.expected for c in r.rows) / len(r.rows),
     "random result"),
]


@pytest.mark.parametrize("checker, wrong, message", WRONG, ids=[w[0].__name__ for w in WRONG])
def test_each_checker_rejects_a_wrong_function(checker, wrong, message, capsys):
    with pytest.raises(AssertionError, match=re.escape(message)):
        checker(wrong)
    assert "✓" not in capsys.readouterr().out


def _not_yet(*args, **kwargs):
    raise NotImplementedError("exercise: write this part")


@pytest.mark.parametrize("checker", [w[0] for w in WRONG], ids=[w[0].__name__ for w in WRONG])
def test_an_unwritten_function_is_reported_as_not_implemented(checker):
    with pytest.raises(AssertionError, match="^not implemented yet"):
        checker(_not_yet)


@pytest.mark.parametrize("checker, right, wrong", [
    (exercises.check_lowest_gen_drawdown, "ke", "mend"),
    (exercises.check_only_smaller_parameters, 4_740_096, 4_740_095),
    (exercises.check_neo_editor_parameters, 26_393_600, 4_740_096),
])
def test_answer_checkers(checker, right, wrong, capsys):
    checker(right)
    assert capsys.readouterr().out.startswith("✓")
    with pytest.raises(AssertionError, match="not quite"):
        checker(wrong)
    with pytest.raises(AssertionError):
        checker("something else")
