"""Fixtures of the browser test: a JupyterLab server and headless Chromium, both stopped whatever happens.

``MENDLAB_PLAYGROUND_NOTEBOOK`` picks the notebook (relative to the repo root; default the course's
notebooks/08_playground.ipynb); ``scratch`` runs a three-cell notebook written to the test's tmp_path."""

import hashlib
import os
from pathlib import Path

import jlab  # pytest puts this folder on sys.path; `tests` is no package (`pytest tests` must collect too)
import pytest

TIMINGS = pytest.StashKey[list]()


@pytest.fixture
def browser_timings(request):
    """Append ``(label, seconds)``: printed in the terminal summary, so the CI log shows them without -s."""
    return request.config.stash.setdefault(TIMINGS, [])


def pytest_terminal_summary(terminalreporter, config):
    timings = config.stash.get(TIMINGS, [])
    if timings:
        terminalreporter.write_sep("-", "browser timings")
        for label, seconds in timings:
            terminalreporter.write_line(f"{label}: {seconds:.2f} s")


@pytest.fixture
def chromium():
    """Fails on CI (CI=true) when Chromium or Playwright is missing, skips elsewhere."""
    why = jlab.chromium_missing()
    if why and os.environ.get("CI", "").lower() == "true":
        pytest.fail(why, pytrace=False)
    if why:
        pytest.skip(why)


@pytest.fixture
def notebook(tmp_path):
    """``(root_dir, notebook relative to it)``; a course notebook must come out of the test byte for byte."""
    choice = os.environ.get("MENDLAB_PLAYGROUND_NOTEBOOK", jlab.NOTEBOOK)
    if choice == "scratch":
        root = tmp_path / "nb"
        root.mkdir()
        yield root, jlab.write_scratch_notebook(root / "scratch.ipynb").name
        return
    path = jlab.REPO / choice
    if not path.exists():
        pytest.fail(f"{choice} is missing (MENDLAB_PLAYGROUND_NOTEBOOK=scratch runs a scratch notebook)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield jlab.REPO, choice
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, \
        f"{choice} changed during the test: JupyterLab saved it (autosave?) or something else wrote it"


@pytest.fixture(scope="module")
def browser_env():
    """The Makefile's environment (profile ci, offline hub) where it is unset, for this process and the kernel."""
    missing = {k: v for k, v in jlab.ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(missing)
    yield
    for k in missing:
        os.environ.pop(k, None)


@pytest.fixture
def warm_zoo(browser_env, chromium):
    """Seconds to load, or on a cold cache build, tiny-gpt2 and its MEND and FT editors before JupyterLab starts."""
    return jlab.warm_cache("tiny-gpt2", ("mend", "ft"), seed=0)


@pytest.fixture
def playground(browser_env, chromium, notebook, tmp_path):
    """``(PlaygroundPage, notebook)``: JupyterLab on ``notebook``'s root and a page in Chromium."""
    root, rel = notebook
    with jlab.playground_page(Path(root), rel, tmp_path) as page:
        yield page, rel
