"""JupyterLab in a subprocess and headless Chromium on it: the browser test of the playground, and the README
screenshot of the panel after one edit.

    python -m tests.browser.jlab --screenshot docs/playground.png

Nothing here touches the user's Jupyter set-up: the server gets its own config, runtime, settings and workspace
folders (autosave off, so running a course notebook in the browser never rewrites its stored outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/08_playground.ipynb"
CHROMIUM = "/usr/bin/chromium"
# The network is closed: without the background-networking flags Chromium keeps retrying refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV_DEFAULTS = {"MENDLAB_PROFILE": "ci", "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TOKENIZERS_PARALLELISM": "false"}
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    # the default windowing attaches off-screen cells lazily: the widget's cell could be missing from the DOM
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
SCRATCH_CELLS = ["from mendlab.widgets import Playground",
                 'pg = Playground.for_zoo("tiny-gpt2", algs=("mend", "ft"), seed=0)', "pg"]

BUTTON = ":is(button.mendlab-{0}, .mendlab-{0} button)"  # ipywidgets 8 puts a Button's classes on the <button>
EDIT_ROW = ".mendlab-table tr[data-role=edit]"


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (Debian's package; never `playwright install`)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


def warm_cache(model: str = "tiny-gpt2", algs=("mend", "ft"), seed: int = 0) -> float:
    """Build whatever the playground loads and is not cached yet (a cold cache: minutes, with progress here on the
    terminal rather than silently inside a kernel cell); seconds when it is warm."""
    from mendlab.experiments.editors import editor_for

    t0 = time.perf_counter()
    for alg in algs:
        editor_for(model, alg, seed, progress=True)
    return time.perf_counter() - t0


def edit_request(model: str = "tiny-gpt2", seed: int = 0) -> tuple[str, str]:
    """A new fact about the first test-split subject: (question, a city that is neither its answer nor the
    world's own counterfactual for it, which a notebook may already have used)."""
    from mendlab import zoo
    from mendlab.world import Fact

    w = zoo.world_of(model, seed=seed)
    subject, r = w.subjects_in("test")[0], w.relations[0]
    truth = w.facts[subject, r.name]
    used = {truth, w.alternatives(Fact(subject, r.name, truth))[0]}
    return r.questions[0].format(s=subject), next(o for o in r.objects if o not in used)


def write_scratch_notebook(path: Path, cells=SCRATCH_CELLS) -> Path:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``python -m jupyterlab`` on 127.0.0.1, a free port and a fresh token, serving ``root_dir``; its state
    lives under ``workdir``. The kernels inherit this process's environment (plus :data:`ENV_DEFAULTS`)."""

    def __init__(self, root_dir: Path, workdir: Path):
        self.root, self.workdir = Path(root_dir), Path(workdir)
        self.port, self.token = _free_port(), secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "jupyterlab.log"

    def _settings(self) -> Path:
        folder = self.workdir / "lab-settings"
        for plugin, values in LAB_SETTINGS.items():
            f = folder / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        return folder

    def _env(self) -> dict:
        env = {**ENV_DEFAULTS, **os.environ}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for var in ("CONFIG", "RUNTIME", "DATA"):
            env[f"JUPYTER_{var}_DIR"] = str(self.workdir / var.lower())
        return env

    def _command(self) -> list[str]:
        w = self.workdir
        return [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False",
                f"--LabApp.user_settings_dir={self._settings()}", f"--LabApp.workspaces_dir={w / 'workspaces'}",
                "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                # opening a notebook checkpoints it: into the workdir, not a .ipynb_checkpoints beside the notebook
                f"--FileCheckpoints.checkpoint_dir={w / 'checkpoints'}"] + (["--allow-root"] * (os.geteuid() == 0))

    def start(self, timeout: float = 120) -> JupyterLab:
        env, cmd = self._env(), self._command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "status")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str, timeout: float = 10):
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def url(self, path: str) -> str:
        return f"{self.base}/lab/tree/{path}?token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        """Shut the kernels down, then the server; killed if it does not exit in 30 s. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:  # kernels run in sessions of their own: a kill of the server alone would orphan them
            for k in self.api("GET", "kernels"):
                self.api("DELETE", f"kernels/{k['id']}", timeout=30)
        except (OSError, ValueError):
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class PlaygroundPage:
    """A JupyterLab notebook page holding the playground panel; every wait that fails saves a screenshot and
    the page's HTML under ``artifacts`` and raises an AssertionError naming them."""

    def __init__(self, page, lab: JupyterLab, artifacts: Path):
        self.page, self.lab, self.artifacts = page, lab, Path(artifacts)

    @contextmanager
    def step(self, what: str):
        try:
            yield
        except Exception as e:
            shot, html = self.save_artifacts(what.split()[0])
            raise AssertionError(f"{what}: {type(e).__name__}: {e}\nscreenshot: {shot}\npage HTML: {html}\n"
                                 f"jupyter lab log (tail):\n{self.lab.log_tail(2000)}") from e

    def save_artifacts(self, name: str) -> tuple[Path, Path]:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        shot, html = self.artifacts / f"{name}.png", self.artifacts / f"{name}.html"
        try:
            self.page.screenshot(path=str(shot), full_page=True)
            html.write_text(self.page.content())
        except Exception as e:  # a crashed page still gets its failure reported
            html.write_text(f"could not save the page: {e}")
        return shot, html

    def run_notebook(self, notebook: str, timeout: float = 300) -> float:
        """Open ``notebook`` (relative to the server's root), run all its cells, wait until the last one is done
        and the panel shows; returns the seconds from Run All to then."""
        with self.step(f"opening {notebook} in JupyterLab"):
            self.page.goto(self.lab.url(notebook))
            self.page.wait_for_function(
                "() => { const w = window.jupyterapp?.shell.currentWidget;"
                " return w?.content?.widgets?.length > 0 && w.sessionContext?.session?.kernel?.status === 'idle'; }",
                timeout=120_000)
        t0 = time.perf_counter()
        with self.step(f"running all cells of {notebook}"):
            # A stored widget state would show a stale panel: clear the outputs first. Then wait for the whole run,
            # not just the panel: a click is only handled once the kernel has run the cells queued before it.
            self.page.evaluate("async () => { const c = window.jupyterapp.commands;"
                               " await c.execute('notebook:clear-all-cell-outputs');"
                               " window.__mendlabRun = null;"
                               " c.execute('notebook:run-all-cells').then(ok => { window.__mendlabRun = {ok}; },"
                               " e => { window.__mendlabRun = {ok: false, error: String(e)}; }); }")
            self._wait_run(timeout)
            self.page.locator(".mendlab-prompt input").first.wait_for(state="visible", timeout=30_000)
        return time.perf_counter() - t0

    def _wait_run(self, timeout: float) -> None:
        errors = self.page.locator("[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.page.evaluate("() => window.__mendlabRun")
            if errors.count():
                raise RuntimeError(f"a cell failed:\n{errors.first.inner_text()[-3000:]}")
            if done is not None:
                if not done["ok"]:
                    raise RuntimeError(f"Run All did not complete: {done}")
                return
            time.sleep(1)
        raise TimeoutError(f"the notebook's cells were still running after {timeout:.0f} s")

    @property
    def panel(self):
        """The first playground panel: the outermost VBox around a ``.mendlab-prompt``."""
        return self.page.locator(".widget-vbox", has=self.page.locator(".mendlab-prompt")).first

    def text(self, selector: str) -> str:
        loc = self.panel.locator(selector)
        return loc.first.inner_text().strip() if loc.count() else ""

    def wait_until(self, what: str, check, timeout: float = 60) -> None:
        """Poll ``check()`` (a bool of the panel's texts) until true."""
        with self.step(f"waiting for {what}"):
            deadline = time.monotonic() + timeout
            while not check():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not within {timeout:.0f} s; status: {self.text('.mendlab-status')!r}, "
                                       f"edit row: {self.text(EDIT_ROW)!r}")
                time.sleep(0.1)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until the kernel is idle: every update of the last callback (chart, history) has reached the page."""
        with self.step("waiting for the kernel to be idle"):
            self.page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session"
                                        "?.kernel?.status === 'idle'", timeout=timeout * 1000)
            self.page.wait_for_function("() => [...document.querySelectorAll('.mendlab-chart, .mendlab-chart img')]"
                                        ".every(e => e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0))",
                                        timeout=timeout * 1000)

    def edit(self, prompt: str, target: str, editor: str = "MEND", timeout: float = 60) -> float:
        """Type the request, press Edit and wait for the edit row to answer ``target``; returns the seconds from
        the click to that moment."""
        with self.step("typing the edit request"):
            self.panel.locator(".mendlab-prompt input").fill(prompt)
            self.panel.locator(".mendlab-target input").fill(target)
            self.panel.locator(".mendlab-editor select").select_option(label=editor)
        t0 = time.perf_counter()
        with self.step("clicking Edit"):
            self.panel.locator(BUTTON.format("edit")).click()
        self.wait_until(f"the {editor} edit {prompt!r} -> {target!r}",
                        lambda: "edited in" in self.text(".mendlab-status")
                        and self.text(f"{EDIT_ROW} td:nth-child(2)") == prompt
                        and self.text(f"{EDIT_ROW} td.after") == target, timeout)
        return time.perf_counter() - t0

    def undo(self, original: str, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        with self.step("clicking Undo"):
            self.panel.locator(BUTTON.format("undo")).click()
        self.wait_until(f"Undo to bring back {original!r}",
                        lambda: "undone" in self.text(".mendlab-status")
                        and self.text(f"{EDIT_ROW} td.after") == original, timeout)
        return time.perf_counter() - t0


@contextmanager
def playground_page(root: Path, notebook: str, workdir: Path, viewport=(1280, 1000)):
    """A :class:`PlaygroundPage` on a fresh JupyterLab serving ``root``; server and browser are stopped on exit,
    whatever happened."""
    from playwright.sync_api import sync_playwright

    with JupyterLab(root, workdir / "lab") as lab, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(60_000)
            yield PlaygroundPage(page, lab, workdir / "artifacts")
        finally:
            browser.close()


def screenshot(out: Path, notebook: str = NOTEBOOK, root: Path = REPO) -> Path:
    """The README picture: the panel after one MEND edit, cropped to the panel."""
    prompt, target = edit_request()
    warm_cache()
    with tempfile.TemporaryDirectory(prefix="mendlab-shot-") as tmp, \
            playground_page(root, notebook, Path(tmp), viewport=(1200, 2400)) as pg:
        pg.run_notebook(notebook)
        pg.page.evaluate("() => { const s = window.jupyterapp.shell; s.collapseLeft(); s.collapseRight(); }")
        pg.edit(prompt, target)
        pg.wait_idle()
        pg.page.mouse.move(0, 0)  # no hover highlight in the picture
        pg.panel.scroll_into_view_if_needed()
        out.parent.mkdir(parents=True, exist_ok=True)
        pg.panel.screenshot(path=str(out))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshot", type=Path, default=REPO / "docs" / "playground.png")
    ap.add_argument("--notebook", default=NOTEBOOK, help=f"relative to the repo root (default {NOTEBOOK}); "
                    "'scratch' writes a three-cell notebook to a temporary folder")
    args = ap.parse_args(argv)
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if args.notebook == "scratch":
        with tempfile.TemporaryDirectory(prefix="mendlab-nb-") as d:
            write_scratch_notebook(Path(d) / "scratch.ipynb")
            out = screenshot(args.screenshot.resolve(), "scratch.ipynb", Path(d))
    else:
        out = screenshot(args.screenshot.resolve(), args.notebook)
    print(f"{out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
