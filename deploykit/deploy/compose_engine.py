"""The compose engine (``orchestrator: compose``): one engine, ``docker compose``.

:class:`ComposeEngine` reads the project (its services' ``deploy.update_config``: refused
before anything changes when start-first cannot work), plans, locks and picks the rollout:
:class:`~deploykit.deploy.rollout.Rollout` recreates the containers (compose's default);
:class:`~deploykit.deploy.start_first_rollout.StartFirstRollout` starts the new ones beside
the old when a running service asks for ``order: start-first``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from deploykit.actions import markdown_table
from deploykit.containers import workspace_mounts
from deploykit.deploy.release import Release, Running
from deploykit.deploy.report import Report
from deploykit.deploy.rollout import Rollout
from deploykit.deploy.runtime import Runtime
from deploykit.deploy.start_first_rollout import StartFirstRollout
from deploykit.history import HistoryEntry, checked_labels, engine_stack
from deploykit.lock import EngineLock, Holder
from deploykit.startfirst import UpdatePolicy, check


class ComposeEngine:
    """``docker compose`` on one engine: pull, up, health, restore (:class:`Rollout`)."""

    def __init__(self, runtime: Runtime, report: Report) -> None:
        self.runtime, self.report = runtime, report
        self.settings, self.actions = runtime.settings, runtime.actions
        self.image_name = runtime.image_name
        self.mounts: dict[str, str] = {}
        self.start_first: list[UpdatePolicy] = []

    def check_engine(self) -> None:
        """Nothing to check before the registry: compose talks to any engine."""

    def validate(self, release: Release) -> None:
        _, project = self.runtime.project()  # local: `docker compose config` connects nowhere
        # A start-first service that cannot run twice at once is refused here, before
        # anything changes (and in a dry run).
        self.start_first = [p for p in check(project.config, project).values()
                            if p.start_first]
        self.mounts = self._mounts()

    def _mounts(self) -> dict[str, str]:
        """The action container's bind mounts of the workspace (empty on a plain host)."""
        workspace = self.settings.github.workspace
        mounts = workspace_mounts(self.runtime.own_container_info(), workspace)
        if mounts:
            self.actions.info(f"Running in a container: bind mounts under {workspace} are "
                              f"deployed with their host paths.")
        return mounts

    def running(self) -> Running:
        _, project = self.runtime.project()
        api = self.runtime.engine.api
        labels = checked_labels(api, project.name)
        return Running.of(self.runtime.running_services(api, project.name, self.image_name,
                                                        project.image_services),
                          self.image_name, labels)

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        _, project = self.runtime.project()
        return (engine_stack(self.runtime.engine.api, project.name),
                "the release record on the engine")

    @contextmanager
    def lock(self, holder: Holder) -> Iterator[EngineLock]:
        with self.runtime.engine_lock(self.runtime.engine, holder,
                                      timeout=self.settings.lock_timeout,
                                      actions=self.actions) as lock:
            yield lock

    def roll_out(self, release: Release, previous: Running, lock: EngineLock) -> None:
        compose, project = self.runtime.project()
        policies = self.switching_start_first(previous)
        rollout = Rollout(self.runtime, self.report, compose, project=project,
                          mounts=self.mounts, lock=lock) if not policies else \
            StartFirstRollout(self.runtime, self.report, compose, project=project,
                              mounts=self.mounts, lock=lock, policies=policies)
        self.report.on_github(project.name, release, previous,
                              lambda: rollout.run(release, previous))

    def switching_start_first(self, running: Running) -> list[UpdatePolicy]:
        """The start-first services that have containers to keep serving (a first deploy
        has none: compose starts it as usual)."""
        serving = {s.service for s in running.services}
        return [p for p in self.start_first if p.service in serving]

    def plan(self, release: Release, running: Running) -> None:
        _, project = self.runtime.project()
        current_of = {s.service: s for s in running.services}
        start_first = [p.service for p in self.switching_start_first(running)]
        rows = []
        for service in project.image_services:
            current = current_of.get(service)
            if current is None:
                change = "create"
            elif current.digest == release.digest and not self.settings.force_redeploy:
                change = "unchanged"
            elif service in start_first:
                change = "start-first"
            else:
                change = "recreate"
            rows.append([service, current.digest if current else "-", release.digest, change])
        table = markdown_table(["service", "current digest", "target digest", "change"], rows)
        force = " --force-recreate" if self.settings.force_redeploy and not start_first else ""
        switch = (f"start {', '.join(start_first)} beside the running containers "
                  "(start-first), then " if start_first else "")
        self.actions.info(f"Plan: pull {release.reference(self.image_name)}, then {switch}"
                          f"`docker compose up -d --no-build --remove-orphans{force}`."
                          + (f"\n{table}" if self.actions.in_actions else ""))
        self.report.plan(release, self.report.plan_title(project.name), table)
