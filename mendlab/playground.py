"""The logic behind the editing playground (:mod:`mendlab.widgets`): edit a model live, look, undo.

A :class:`Workbench` holds one base model, its tokenizer and a few editors by name. Every widget
callback calls one method here, so the whole playground is testable without a browser:

    s = Workbench(model, tok, {"MEND": mend, "FT": ft}, world=world)
    r = s.edit("Where was Kavo Rinel born?", "Tarsk", "MEND")   # computed on the current model, applied in place
    r.frame()                                                   # before/after on the prompt, rephrasings, unrelated
    s.queue(...); s.apply_batch("MEND")                          # several requests as one edit
    s.undo(); s.undo_all()                                       # weights restored bit for bit
    a, b = s.compare(prompt, target, "MEND", "FT")               # the same request through two editors, not applied

Stacked edits are computed on the already-edited model, as a user editing a deployed model would (the paper
trains and evaluates MEND on single edits of the *unedited* model; chapter 06 measures what stacking costs).
Only the edited weights are saved for undo (:meth:`mendlab.edit.Edit.apply_`), never a copy of the model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mendlab import probe
from mendlab.data import Collator, EditExample
from mendlab.edit import Edit, restore
from mendlab.editors.base import MismatchedModelError, check_fingerprint
from mendlab.experiments.evaluate import target_probability
from mendlab.world import World

ROLES = ("edit", "rephrase", "unrelated")


class PlaygroundError(ValueError):
    """A request the playground cannot make; the message is what the widget shows."""


@dataclass
class Check:
    """One prompt looked at before and after a change: greedy answers, and the probability of ``expected`` (the
    edit's target on the prompt and its rephrasings, the prompt's own answer on an unrelated fact)."""

    role: str
    prompt: str
    expected: str
    before: str
    after: str
    p_before: float
    p_after: float

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class EditResult:
    """What one change did: an edit (``editor`` names the editor), a batch, or an undo (``"undo …"``)."""

    editor: str
    requests: list[tuple[str, str]]
    rows: list[Check]
    seconds: float  # computing and applying the change (not the before/after table)

    @property
    def prompt(self) -> str:
        return self.requests[0][0]

    @property
    def target(self) -> str:
        return self.requests[0][1]

    def _of(self, role: str) -> list[Check]:
        return [c for c in self.rows if c.role == role]

    @property
    def success(self) -> bool:
        """Every edited prompt answers its target after the change."""
        return all(c.after == c.expected for c in self._of("edit"))

    @property
    def generalisation(self) -> float | None:
        """The fraction of rephrasings answering the target after the change (None without rephrasings)."""
        rows = self._of("rephrase")
        return sum(c.after == c.expected for c in rows) / len(rows) if rows else None

    @property
    def unrelated_changed(self) -> int:
        return sum(c.changed for c in self._of("unrelated"))

    def frame(self):
        import pandas as pd

        cols = ["role", "prompt", "expected", "before", "after", "p_before", "p_after", "changed"]
        return pd.DataFrame([{c: getattr(row, c) for c in cols} for row in self.rows], columns=cols)


@dataclass
class _Applied:
    result: EditResult
    saved: dict[str, torch.Tensor] = field(repr=False)


class Workbench:
    """Live edits of ``model`` with ``editors`` (name → :class:`~mendlab.editors.Editor`); see the module doc.

    ``world``: suggests rephrasings of a question about one of its subjects and gives the unrelated facts;
    ``unrelated``: (prompt, answer) pairs to watch instead. An editor trained for another model is kept but
    refused with a clear message when used. ``max_tokens``: the longest prompt + target accepted (default: the
    collator's 128 or the model's context, whichever is smaller)."""

    def __init__(self, model, tokenizer, editors: dict, *, world: World | None = None,
                 unrelated: Sequence[tuple[str, str]] | None = None, n_unrelated: int = 4,
                 max_tokens: int | None = None, seed: int = 0):
        if not editors:
            raise PlaygroundError("the playground needs at least one editor")
        self.model, self.tok, self.editors, self.world = model, tokenizer, dict(editors), world
        self.kind = Collator.for_model(model, tokenizer).kind
        if self.kind == "classifier":
            raise PlaygroundError("the playground edits question answering models (decoders, seq2seq), "
                                  "not classifiers")
        context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 128)
        self.max_tokens = max_tokens or min(128, context)
        self.unusable = {name: msg for name, msg in ((n, _mismatch(e, model, n)) for n, e in self.editors.items())
                         if msg}
        self._unrelated = list(unrelated) if unrelated is not None else _world_panel(world, seed)
        self.n_unrelated = n_unrelated
        self.history: list[_Applied] = []
        self.pending: list[tuple[str, str]] = []

    # -- requests ----------------------------------------------------------------------------------------------
    def validate(self, prompt: str, target: str, editor: str | None = None) -> tuple[str, str]:
        """The stripped request, or a :class:`PlaygroundError` saying what is wrong with it."""
        prompt, target = (prompt or "").strip(), (target or "").strip()
        if not prompt:
            raise PlaygroundError("type a prompt to edit, e.g. a question about one of the world's people")
        if not target:
            raise PlaygroundError("type the new answer (the target) the model should give")
        if editor is not None:
            self._editor(editor)
        ids = self.tok(" " + target, add_special_tokens=False)["input_ids"]
        if self.tok.unk_token_id is not None and self.tok.unk_token_id in ids or \
                self.tok.decode(ids, skip_special_tokens=True).strip() != target:
            raise PlaygroundError(f"the tokenizer cannot represent the target {target!r} exactly "
                                  f"(it reads back as {self.tok.decode(ids, skip_special_tokens=True).strip()!r})")
        n = len(self.tok(prompt, add_special_tokens=False)["input_ids"]) + len(ids)
        if n > self.max_tokens:
            raise PlaygroundError(f"prompt and target are {n} tokens; the editor reads at most {self.max_tokens}: "
                                  "shorten them")
        return prompt, target

    def _editor(self, name: str):
        if name not in self.editors:
            raise PlaygroundError(f"no editor {name!r}; choose one of {sorted(self.editors)}")
        if name in self.unusable:
            raise PlaygroundError(self.unusable[name])
        return self.editors[name]

    def suggest_rephrasings(self, prompt: str) -> list[str]:
        """The other question templates of the prompt's relation, when it asks about one of the world's subjects
        in one of its templates; else ``[]`` (the user types rephrasings)."""
        parsed = self.world.parse_question((prompt or "").strip()) if self.world is not None else None
        if parsed is None:
            return []
        subject, relation, template = parsed
        return [q.format(s=subject) for i, q in enumerate(self.world.relation[relation].questions) if i != template]

    def unrelated_for(self, *prompts: str) -> list[tuple[str, str]]:
        """The first ``n_unrelated`` watched facts that are none of ``prompts`` and mention none of their subjects."""
        texts = {p.strip() for p in prompts}
        parsed = [self.world.parse_question(t) for t in texts] if self.world is not None else []
        subjects = {q[0] for q in parsed if q}
        keep = [(p, a) for p, a in self._unrelated if p not in texts and not any(s in p for s in subjects)]
        return keep[: self.n_unrelated]

    def queue(self, prompt: str, target: str) -> int:
        """Add a request to the pending batch; returns how many are pending."""
        self.pending.append(self.validate(prompt, target))
        return len(self.pending)

    # -- changes -----------------------------------------------------------------------------------------------
    def edit(self, prompt: str, target: str, editor: str, rephrasings: Sequence[str] | None = None) -> EditResult:
        """Edit the current model (already edited by earlier edits, if any) and keep the edit applied."""
        return self._change(editor, [self.validate(prompt, target, editor)], rephrasings, keep=True)

    def preview(self, prompt: str, target: str, editor: str, rephrasings: Sequence[str] | None = None
                ) -> EditResult:
        """What the edit would do to the current model; nothing stays applied."""
        return self._change(editor, [self.validate(prompt, target, editor)], rephrasings, keep=False)

    def apply_batch(self, editor: str, rephrasings: Sequence[str] | None = None) -> EditResult:
        """The pending requests as one edit, applied; the queue is emptied. An editor with ``edit_many`` (MEND,
        ENN, KE) edits each request apart and sums the edits (paper §5.3); FT fine-tunes on all of them at once."""
        if not self.pending:
            raise PlaygroundError("no requests are queued: in batch mode, Edit adds a request to the batch")
        self._editor(editor)
        result = self._change(editor, list(self.pending), rephrasings, keep=True)
        self.pending.clear()
        return result

    def compare(self, prompt: str, target: str, a: str, b: str, rephrasings: Sequence[str] | None = None
                ) -> tuple[EditResult, EditResult]:
        """The same request through two editors, each on the current model; neither stays applied."""
        return self.preview(prompt, target, a, rephrasings), self.preview(prompt, target, b, rephrasings)

    def undo(self) -> EditResult | None:
        """Restore the weights from before the last applied edit, bit for bit; the result shows its prompts
        before (edited) and after (restored). None when nothing is applied."""
        if not self.history:
            return None
        last = self.history.pop()
        checks = [(c.role, c.prompt, c.expected) for c in last.result.rows]
        return self._observe_change(f"undo {last.result.editor}", last.result.requests, checks,
                                    lambda: restore(self.model, last.saved))

    def undo_all(self) -> int:
        """Undo every applied edit (last first); returns how many there were."""
        n = len(self.history)
        while self.history:
            restore(self.model, self.history.pop().saved)
        return n

    @property
    def n_applied(self) -> int:
        return len(self.history)

    def close(self) -> None:
        """Undo everything and drop the pending batch: the model is as it was given."""
        self.undo_all()
        self.pending.clear()

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- measuring ---------------------------------------------------------------------------------------------
    def _checks(self, requests, rephrasings) -> list[tuple[str, str, str]]:
        rows = [("edit", p, t) for p, t in requests]
        for p, t in requests:
            phr = self.suggest_rephrasings(p) if rephrasings is None else [r.strip() for r in rephrasings if r.strip()]
            rows += [("rephrase", r, t) for r in phr if r != p]
        unrelated = self.unrelated_for(*(p for p, _ in requests))
        return rows + [("unrelated", p, a) for p, a in unrelated]

    def _look(self, checks, edit: Edit | None = None) -> tuple[list[str], list[float]]:
        words = [max(1, len(expected.split())) for _, _, expected in checks]
        answers = [probe.answer(self.model, self.tok, [p], max_new_tokens=4 + 2 * w, words=w)[0]
                   for (_, p, _), w in zip(checks, words, strict=True)]
        probs = [target_probability(self.model, self.tok, p, a, edit) for _, p, a in checks]
        return answers, probs

    def _change(self, editor: str, requests, rephrasings, keep: bool) -> EditResult:
        ed = self._editor(editor)
        checks = self._checks(requests, rephrasings)
        made: dict = {}

        def change():
            examples = [EditExample(p, t) for p, t in requests]
            with torch.no_grad():
                if len(examples) > 1 and ed.batched:  # each request edited apart, then summed (paper §5.3)
                    made["edit"] = ed.edit_many(self.model, self.tok, examples).detach().aggregate("sum")
                else:  # one request, or an editor that edits the requests together (FT fine-tunes on all)
                    made["edit"] = ed.edit(self.model, self.tok, examples).detach()
            made["saved"] = made["edit"].apply_(self.model)

        try:
            result = self._observe_change(editor, requests, checks, change)
        except BaseException:  # also an interrupted kernel: never leave an edit in place that history lacks
            if "saved" in made:
                restore(self.model, made["saved"])
            raise
        if keep:
            self.history.append(_Applied(result, made["saved"]))
        else:
            restore(self.model, made["saved"])
        return result

    def _observe_change(self, name: str, requests, checks, change: Callable[[], None]) -> EditResult:
        before, p_before = self._look(checks)
        t0 = time.perf_counter()
        change()
        seconds = time.perf_counter() - t0
        after, p_after = self._look(checks)
        rows = [Check(role, p, a, b, c, pb, pa) for (role, p, a), b, c, pb, pa
                in zip(checks, before, after, p_before, p_after, strict=True)]
        return EditResult(name, list(requests), rows, seconds)


def _mismatch(editor, model, name: str) -> str | None:
    """Why ``editor`` cannot edit ``model`` (its base model's fingerprint differs), or None."""
    base = getattr(editor, "base", None)
    if not base:
        return None
    try:
        check_fingerprint(base, model, where=f"editor {name!r}")
    except MismatchedModelError as e:
        return str(e)
    return None


def _world_panel(world: World | None, seed: int) -> list[tuple[str, str]]:
    """True facts of training-split subjects in trained phrasings, one per subject, in a seeded order."""
    if world is None:
        return []
    rng = random.Random(seed)
    subjects = world.subjects_in("train")
    rng.shuffle(subjects)
    out = []
    for i, s in enumerate(subjects[:16]):
        r = world.relations[i % len(world.relations)]
        out.append((r.questions[0].format(s=s), world.facts[s, r.name]))
    return out
