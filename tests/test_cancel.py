"""The cancel guard: when a signal raises, when it is only recorded."""

from __future__ import annotations

import os
import signal

import pytest

from deploykit.cancel import BUDGET, CancelGuard, Cancelled
from tests.conftest import FakeClock


def test_interruptible_raises_at_once_shielded_waits_for_its_end() -> None:
    guard = CancelGuard()
    with guard.installed():
        with pytest.raises(Cancelled) as caught, guard.interruptible():
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the signal did not interrupt")
        assert caught.value.signal_name == "SIGINT"

    guard = CancelGuard()
    reached = []
    with guard.installed():
        with pytest.raises(Cancelled), guard.interruptible():
            with guard.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("the shielded section finished")
            reached.append("never")
    assert reached == ["the shielded section finished"]


def test_a_cancel_is_raised_once_later_signals_are_only_recorded() -> None:
    clock = FakeClock()
    guard = CancelGuard(clock=clock)
    with guard.installed():
        with pytest.raises(Cancelled), guard.interruptible():
            os.kill(os.getpid(), signal.SIGINT)
        clock.now = 3.0
        with guard.interruptible():  # the undoing is never interrupted
            os.kill(os.getpid(), signal.SIGTERM)
    assert (guard.signal_name, guard.later) == ("SIGINT", ["SIGTERM"])
    assert guard.deadline(3.5) == 3.5
    assert guard.left() == BUDGET - 3.0


def test_acknowledged_cancel_never_raises_and_no_signal_means_no_deadline() -> None:
    guard = CancelGuard()
    assert guard.deadline(3.5) is None and guard.left() == BUDGET
    guard.handle(signal.SIGTERM)
    guard.acknowledge()
    with guard.interruptible():
        guard.raise_if_requested()
    assert guard.requested


def test_the_handlers_are_restored() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with CancelGuard().installed() as guard:
        assert signal.getsignal(signal.SIGINT) == guard.handle
    assert {signum: signal.getsignal(signum) for signum in before} == before
