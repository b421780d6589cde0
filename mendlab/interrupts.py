"""Ctrl-C and ``kill`` (SIGINT, SIGTERM) during a long loop: finish the current step, save, then stop.

:class:`DeferredSignals` turns the first SIGINT or SIGTERM into a flag that the loop reads between steps, so
the loop can write a checkpoint and raise :class:`TrainingInterrupted` with nothing lost beyond the step under
way. A second Ctrl-C is not deferred: it interrupts at once, as Python's default handler would. The handlers
are installed only in the main thread (Python allows no other) and the previous ones are put back on exit.
"""

from __future__ import annotations

import signal
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after a clean checkpoint; running it again resumes."""


class DeferredSignals:
    """``with DeferredSignals() as s: ... if s.received: ...``; ``s.received`` is the signal's name or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step to end
        self.received = signal.Signals(signum).name

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
