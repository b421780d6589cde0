"""The editing playground as an ipywidgets panel, for live edits in class (notebook 08).

    from mendlab.widgets import Playground
    pg = Playground.for_zoo("tiny-gpt2", algs=("mend", "ft"))   # a zoo model and its cached editors
    pg                                                          # shows the panel in Jupyter

Type a question and a new answer, pick an editor and press Edit: the table shows the answers to the prompt, its
rephrasings and a few unrelated facts before and after, with p(target); the chart shows p before and after.
Edits stack (each computed on the already-edited model) or, in batch mode, queue up and apply as one edit.
Undo and Undo all restore the weights bit for bit; Compare runs the request through two editors side by side
without keeping either edit. Every callback calls one :class:`~mendlab.playground.Workbench` method,
so the logic is tested without a browser; bad input becomes a message in the status line, not a traceback.

Every control carries a CSS class (``mendlab-prompt``, ``mendlab-edit``, ``mendlab-table`` …) for the browser test.
"""

from __future__ import annotations

import html

import ipywidgets as W

from mendlab.playground import EditResult, PlaygroundError, Workbench

_STYLE = ("<style>.mendlab-table table{border-collapse:collapse;font-size:13px}"
          ".mendlab-table td,.mendlab-table th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
          ".mendlab-table tr.changed td.after{font-weight:bold}.mendlab-error{color:#b00020}</style>")


class Playground:
    """An ipywidgets panel over a :class:`Workbench` (``workbench``); ``widget`` is the panel."""

    def __init__(self, model, tokenizer, editors: dict, **options):
        self.workbench = Workbench(model, tokenizer, editors, **options)
        names = list(self.workbench.editors)
        self.prompt = _tagged(W.Text(description="Prompt", placeholder="Where was … born?",
                                     layout=W.Layout(width="480px")), "prompt")
        self.target = _tagged(W.Text(description="New answer", layout=W.Layout(width="300px")), "target")
        self.rephrasings = _tagged(W.Textarea(description="Rephrasings", placeholder="one per line",
                                              layout=W.Layout(width="480px", height="90px")), "rephrasings")
        self.editor = _tagged(W.Dropdown(options=names, value=names[0], description="Editor"), "editor")
        self.editor_b = _tagged(W.Dropdown(options=names, value=names[-1], description="against"), "editor-b")
        self.mode = _tagged(W.ToggleButtons(options=["stack", "batch"], value="stack"), "mode")
        self.buttons = {key: _tagged(W.Button(description=label, button_style=style), key) for key, label, style in
                        (("edit", "Edit", "primary"), ("apply-batch", "Apply batch", ""), ("undo", "Undo", "warning"),
                         ("undo-all", "Undo all", "danger"), ("compare", "Compare", "info"))}
        self.status = _tagged(W.HTML(), "status")
        self.table = _tagged(W.HTML(), "table")
        self.history = _tagged(W.HTML(), "history")
        self.chart = _tagged(W.Image(format="png", layout=W.Layout(align_self="flex-start")), "chart")
        self._suggested = ""  # the rephrasings last filled in from the world's templates
        self._wire()
        self.widget = W.VBox([W.HTML(_STYLE), W.HBox([self.prompt, self.target]), self.rephrasings,
                              W.HBox([self.editor, self.mode]), W.HBox(list(self.buttons.values()) + [self.editor_b]),
                              self.status, self.table, self.chart, self.history])
        self._show_history()

    @classmethod
    def for_zoo(cls, model_name: str = "tiny-gpt2", algs=("mend", "ft"), seed: int = 0, progress: bool = False,
                **options) -> Playground:
        """A zoo model with its editors for ``algs`` as the comparison trains them (cached, see
        :func:`mendlab.experiments.editors.editor_for`), watched on its world's facts."""
        from mendlab import zoo
        from mendlab.editors import LABELS
        from mendlab.experiments.editors import editor_for

        editors, model, tok = {}, None, None
        for alg in algs:
            editor, m, t, _ = editor_for(model_name, alg, seed, progress=progress)
            model, tok = (model, tok) if model is not None else (m, t)
            editors[LABELS.get(alg, alg)] = editor
        return cls(model, tok, editors, world=zoo.world_of(model_name, seed=seed), seed=seed, **options)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- callbacks: each calls one workbench method and renders what it returns ----------------------------------
    def _wire(self) -> None:
        self.prompt.observe(self._on_prompt, names="value")
        handlers = {"edit": self._on_edit, "apply-batch": self._on_apply_batch, "undo": self._on_undo,
                    "undo-all": self._on_undo_all, "compare": self._on_compare}
        for key, handler in handlers.items():
            self.buttons[key].on_click(lambda _b, h=handler: self._guarded(h))

    def _guarded(self, handler) -> None:
        try:
            handler()
        except PlaygroundError as e:
            self._say(str(e), error=True)

    def _on_prompt(self, change) -> None:
        """Fill the rephrasings with the world's suggestions; clear them when they were the last prompt's
        suggestions and the new prompt has none (what the user typed is kept)."""
        suggested = "\n".join(self.workbench.suggest_rephrasings(change["new"]))
        if suggested or self.rephrasings.value == self._suggested:
            self.rephrasings.value = suggested
        self._suggested = suggested

    def _typed_rephrasings(self) -> list[str]:
        return [r for r in self.rephrasings.value.splitlines() if r.strip()]

    def _on_edit(self) -> None:
        if self.mode.value == "batch":
            n = self.workbench.queue(self.prompt.value, self.target.value)
            self._say(f"queued: {n} request{'s' * (n > 1)} in the batch; press Apply batch to edit them as one")
            return
        result = self.workbench.edit(self.prompt.value, self.target.value, self.editor.value, self._typed_rephrasings())
        self._show(result, f"edited in {result.seconds:.2f} s with {html.escape(result.editor)}")

    def _on_apply_batch(self) -> None:
        result = self.workbench.apply_batch(self.editor.value)
        self._show(result, f"edited in {result.seconds:.2f} s with {html.escape(result.editor)}: "
                           f"{len(result.requests)} requests as one edit")

    def _on_undo(self) -> None:
        result = self.workbench.undo()
        if result is None:
            self._say("nothing to undo: the model is as it was loaded")
            return
        self._show(result, f"undone: {html.escape(result.requests[0][0])} (weights restored bit for bit)")

    def _on_undo_all(self) -> None:
        n = self.workbench.undo_all()
        self.table.value, self.chart.value = "", b""
        self._say(f"undone all {n} edit{'s' * (n != 1)}: the model is as it was loaded")
        self._show_history()

    def _on_compare(self) -> None:
        a, b = self.workbench.compare(self.prompt.value, self.target.value, self.editor.value, self.editor_b.value,
                                    self._typed_rephrasings())
        self.table.value = _compare_html(a, b)
        self._say(f"compared (neither edit kept): {html.escape(a.editor)} {a.seconds:.2f} s, "
                  f"{html.escape(b.editor)} {b.seconds:.2f} s")
        self._chart([a, b])

    # -- rendering ---------------------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.value = f'<span class="mendlab-error">{html.escape(text)}</span>' if error else text

    def _show(self, result: EditResult, status: str) -> None:
        summary = (f" · prompt {'✓' if result.success else '✗'}"
                   + (f" · rephrasings {result.generalisation:.0%}" if result.generalisation is not None else "")
                   + f" · unrelated changed {result.unrelated_changed}")
        self._say(status + summary)
        self.table.value = result_html(result)
        self._chart([result])
        self._show_history()

    def _show_history(self) -> None:
        items = "".join(f"<li>{html.escape(a.result.editor)}: "
                        + "; ".join(f"{html.escape(p)} → {html.escape(t)}" for p, t in a.result.requests) + "</li>"
                        for a in self.workbench.history)
        pending = f"<p>queued for the batch: {len(self.workbench.pending)}</p>" if self.workbench.pending else ""
        self.history.value = (f"<b>Applied edits ({self.workbench.n_applied})</b><ol>{items}</ol>" + pending)

    def _chart(self, results: list[EditResult]) -> None:
        """The bars as a PNG in an Image widget: it shows the same in a kernel, a browser and a test."""
        import io

        import matplotlib.pyplot as plt

        from mendlab.plots import playground_bars

        fig = playground_bars(results)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=160)  # shown at half size: sharp on high-density screens
        self.chart.width = str(int(fig.get_figwidth() * 80))
        plt.close(fig)  # never shown again by the inline backend
        self.chart.value = buf.getvalue()


def _tagged(widget, name: str):
    widget.add_class(f"mendlab-{name}")
    return widget


def result_html(result: EditResult) -> str:
    """The before/after table of a result: one ``<tr data-role=…>`` per prompt, ``td.before`` / ``td.after``."""
    head = ("<tr><th>role</th><th>prompt</th><th>expected</th><th>before</th><th>after</th>"
            "<th>p before</th><th>p after</th></tr>")
    rows = "".join(
        f'<tr data-role="{c.role}" class="{"changed" if c.changed else ""}"><td>{c.role}</td>'
        f"<td>{html.escape(c.prompt)}</td><td>{html.escape(c.expected)}</td>"
        f'<td class="before">{html.escape(c.before)}</td><td class="after">{html.escape(c.after)}</td>'
        f"<td>{c.p_before:.3f}</td><td>{c.p_after:.3f}</td></tr>" for c in result.rows)
    return f"<table>{head}{rows}</table>"


def _compare_html(a: EditResult, b: EditResult) -> str:
    cols = "".join(f"<td>{html.escape(r.editor)}: {r.seconds:.2f} s · prompt {'✓' if r.success else '✗'} · "
                   f"unrelated changed {r.unrelated_changed}<br>{result_html(r)}</td>" for r in (a, b))
    return f'<table class="mendlab-compare-table"><tr style="vertical-align:top">{cols}</tr></table>'
