"""The engine interface: the steps that differ between orchestrators.

The procedure (:mod:`deploykit.deploy.procedure`) runs the phases; an engine implements
only what its orchestrator does differently: check the engine, read the file as it will
deploy it, read what runs (and the release stack the engine keeps), the plan's rows, the
lock, and the rollout itself (start the new release, wait for its verdict, stop or restore
the last verified one), ending through :class:`deploykit.deploy.report.Report`. An engine
is built from the :class:`~deploykit.deploy.runtime.Runtime` and the run's
:class:`~deploykit.deploy.report.Report`; it never sees the procedure.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from deploykit.deploy.release import Release, Running
from deploykit.history import HistoryEntry
from deploykit.lock import EngineLock, Holder


@runtime_checkable
class Engine(Protocol):
    """What differs between compose and Swarm."""

    def check_engine(self) -> None:
        """Before the registry: can this engine take the deploy?"""

    def validate(self, release: Release) -> None:
        """The file, as the orchestrator will read it with ``release``'s image variables."""

    def running(self) -> Running:
        """What runs now, with its engine-side release labels."""

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        """The release stack the engine keeps (oldest first), and where it was read."""

    def plan(self, release: Release, running: Running) -> None:
        """A dry run: what would change, per service (logged, and the report's tail)."""

    def lock(self, holder: Holder) -> AbstractContextManager[EngineLock]:
        """The project's lock, held while the body runs."""

    def roll_out(self, release: Release, previous: Running, lock: EngineLock) -> None:
        """Start ``release``, wait for its verdict, smoke-test it, restore the last verified
        release on failure, and end through the report; raises :class:`DeployError` with
        the status on failure."""


__all__ = ["Engine"]
