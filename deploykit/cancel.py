"""SIGINT and SIGTERM during a deploy: recorded at once, acted on where it is safe.

GitHub cancels a step with SIGINT, then SIGTERM 7.5 s later, then kills the process
tree 2.5 s after that. deploykit's docker children run in their own session, so the
signal reaches deploykit alone and deploykit decides: inside an *interruptible*
section (waiting for the lock, the pull, the health wait, the smoke test: nothing on
the host changes there) the first signal raises :class:`Cancelled` at once; inside a
*shielded* one (``docker compose up``, a restore, writing the history) it is only
recorded, and raised when the shielded section ends into an interruptible one. Later
signals are recorded and never raised again: the undoing must not be undone.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

BUDGET = 7.0  # seconds after the first signal by which deploykit should have exited
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Cancelled(BaseException):
    """The deploy was cancelled by a signal (never caught by ``except Exception``)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class CancelGuard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.signal_name = ""
        self.first_at: float | None = None
        self.later: list[str] = []
        self._modes: list[bool] = []
        self._raised = False

    @property
    def requested(self) -> bool:
        return self.first_at is not None

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.first_at is None:
            self.signal_name, self.first_at = name, self.clock()
        else:
            self.later.append(name)
        if self._modes and self._modes[-1]:
            self.raise_if_requested()

    def raise_if_requested(self) -> None:
        if self.requested and not self._raised:
            self._raised = True
            raise Cancelled(self.signal_name)

    def acknowledge(self) -> None:
        """The cancel is handled (or came too late to matter): never raise it again."""
        self._raised = True

    def deadline(self, seconds: float) -> float | None:
        """``seconds`` after the first signal; None while none came."""
        return None if self.first_at is None else self.first_at + seconds

    def left(self) -> float:
        """What is left of :data:`BUDGET` (all of it while no signal came)."""
        if self.first_at is None:
            return BUDGET
        return max(self.first_at + BUDGET - self.clock(), 0.0)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        with self._mode(True):
            yield

    @contextmanager
    def shielded(self) -> Iterator[None]:
        with self._mode(False):
            yield

    @contextmanager
    def _mode(self, interruptible: bool) -> Iterator[None]:
        self._modes.append(interruptible)
        try:
            if interruptible:
                self.raise_if_requested()
            yield
        finally:
            self._modes.pop()
        if self._modes and self._modes[-1]:
            self.raise_if_requested()  # a signal that came while shielded

    @contextmanager
    def installed(self) -> Iterator[CancelGuard]:
        """The handlers for SIGINT and SIGTERM (main thread only), restored afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self.handle) for signum in SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
