"""The playground in a real browser: JupyterLab runs the notebook, Chromium types a new fact into the panel,
presses Edit, sees the new answer, presses Undo and sees the old one back."""

import time

import pytest
from jlab import EDIT_ROW, edit_request

pytestmark = pytest.mark.browser


def test_edit_and_undo_through_the_widget(warm_zoo, playground, browser_timings):
    page, notebook = playground
    browser_timings.append(("loading (or building) tiny-gpt2, MEND and FT before JupyterLab", warm_zoo))
    t0 = time.perf_counter()
    prompt, target = edit_request("tiny-gpt2", seed=0)
    ran = page.run_notebook(notebook, timeout=300)
    browser_timings.append((f"{notebook}: Run All, every cell done", ran))

    dt = page.edit(prompt, target, "MEND", timeout=60)
    print(f"edit through the widget: {dt:.2f} s")
    browser_timings.append(("edit through the widget (click to new answer)", dt))
    original = page.text(f"{EDIT_ROW} td.before")
    with page.step("reading the answer before the edit"):
        assert original and original != target, f"the edit row's answer before the edit is {original!r}"

    undone = page.undo(original, timeout=60)
    browser_timings.append(("undo through the widget", undone))
    with page.step("checking the status after Undo"):
        assert page.panel.locator(".mendlab-status .mendlab-error").count() == 0
    browser_timings.append(("browser test body", time.perf_counter() - t0))
