"""The health verdict of a compose deploy (what runs: :mod:`deploykit.containers`).

Only the low-level ``client.api`` calls are used (``containers``,
``inspect_container``, ``logs``, and ``events`` through :mod:`deploykit.events`): plain
dicts, easy to fake. The verdict waits on the engine's events and inspects a container
again only when one names it.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deploykit.actions import Actions, markdown_table
from deploykit.containers import project_containers, service_of
from deploykit.docker_sdk import docker
from deploykit.errors import DockerError
from deploykit.events import ContainerEvent, EventSource, open_project_events

ONE_SHOT_LABEL = "deploykit.one-shot"
DEPENDS_ON_LABEL = "com.docker.compose.depends_on"
POLL_INTERVAL = 1.0  # without an event stream
SAFETY_POLL = 5.0  # with one: catches an event the stream lost
PROGRESS_EVERY = 5.0
RESTORE_SETTLE = 1.0  # restored containers: a short window (see restore_settle)
CLOCK_SLACK = 0.001  # start times and clocks in float seconds: 1 ms is "now"
UNTIL_MARGIN = 5.0  # the engine ends the event stream this long after the timeout
LOG_TAIL = 40
HEALTH_LOG_TAIL = 5

HEALTHY, RUNNING, COMPLETED = "healthy", "running", "completed"
FAILED, WAITING = "failed", "waiting"


# -- the verdict ---------------------------------------------------------------
@dataclass
class ContainerHealth:
    service: str
    name: str
    container_id: str
    state: str = ""
    health: str = ""
    restarts: int = 0
    verdict: str = WAITING
    reason: str = ""
    health_log: list[str] = field(default_factory=list)
    pending: str = ""  # what a waiting container still has to do, for the progress lines

    def row(self) -> list[str]:
        return [self.service, self.name, self.state, self.health or "-", str(self.restarts),
                self.verdict + (f": {self.reason}" if self.reason else "")]


@dataclass
class HealthReport:
    containers: list[ContainerHealth]

    @property
    def ok(self) -> bool:
        return bool(self.containers) and all(
            c.verdict in (HEALTHY, RUNNING, COMPLETED) for c in self.containers)

    @property
    def failed(self) -> list[ContainerHealth]:
        return [c for c in self.containers if c.verdict == FAILED]

    @property
    def waiting(self) -> list[ContainerHealth]:
        return [c for c in self.containers if c.verdict == WAITING]

    def table(self) -> str:
        return markdown_table(["service", "container", "state", "health", "restarts",
                               "verdict"], [c.row() for c in self.containers])

    def reasons(self) -> str:
        return "; ".join(f"{c.service} ({c.name}) {c.reason}" for c in self.failed) or \
            "no container of the project is running"


def _parse_started(text: str) -> float | None:
    # Docker prints nanoseconds; Python's ISO parser takes at most microseconds.
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text or "")
    if not match or text.startswith("0001-"):
        return None
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp()


def one_shot_services(containers: Iterable[Mapping[str, Any]]) -> set[str]:
    """Services that exit by design: another service waits for them with
    ``condition: service_completed_successfully`` (compose writes a container's
    dependencies into its label, ``migrate:service_completed_successfully:false,...``),
    or their container is labelled ``deploykit.one-shot: "true"``."""
    found: set[str] = set()
    for container in containers:
        labels = (container.get("Config") or {}).get("Labels") or {}
        if str(labels.get(ONE_SHOT_LABEL, "")).strip().lower() in ("true", "1", "yes"):
            found.add(service_of(container))
        for dependency in str(labels.get(DEPENDS_ON_LABEL) or "").split(","):
            service, _, rest = dependency.partition(":")
            if rest.split(":")[0] == "service_completed_successfully":
                found.add(service.strip())
    return found


def restore_settle(settle: float) -> float:
    """The window restored containers must run without a restart on a rollback.

    They were verified (healthy, or running for the full window) when that release was
    deployed minutes ago; on the way back they must prove what `docker compose up --wait`
    proves (healthy with a healthcheck, running without, one-shots exit 0) plus one
    second from their own start, which runs concurrently with the wait for healthy. The
    full window again would only lengthen the outage: if the old release crashes now,
    there is nothing further back to restore.
    """
    return min(settle, RESTORE_SETTLE)


class HealthWatch:
    """Watches the project's containers until each has passed, or one fails.

    A container passes when it is healthy (with a healthcheck) or running (without one)
    and has run for ``settle`` seconds since its own ``State.StartedAt`` without a
    restart; a one-shot service passes when its container exits 0. It fails when it
    exits (a one-shot: non-zero), restarts, is killed for memory, or turns unhealthy
    after its start period; or when ``timeout`` runs out first. The engine's events say
    when to look again; a slow poll catches a missed event, and a fast one stands in
    when the engine gives no event stream.
    """

    def __init__(
        self, api: Any, project: str, *, timeout: float, settle: float,
        interval: float = POLL_INTERVAL, safety_poll: float = SAFETY_POLL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time,
        events: Callable[..., EventSource | None] = open_project_events,
        progress: Callable[[str], None] | None = None,
        progress_every: float = PROGRESS_EVERY, one_shots: Iterable[str] = (),
        include: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.api, self.project = api, project
        # Which of the project's containers to judge (a start-first batch: its new ones).
        self.include = include
        # From the compose file: `up --no-deps` leaves them out of the depends_on labels.
        self.one_shots = frozenset(one_shots)
        self.timeout, self.settle, self.interval = timeout, settle, interval
        self.safety_poll, self.progress_every = safety_poll, progress_every
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self.open_events, self.progress = events, progress
        self._baseline: dict[str, tuple[int, str]] = {}  # id -> (restarts, StartedAt)
        self._first_seen: dict[str, float] = {}  # id -> wall clock (StartedAt unreadable)
        self._oom: set[str] = set()
        self._settles_at: dict[str, float] = {}  # id -> wall clock of its window's end
        self._begin = 0.0

    # -- the loop ----------------------------------------------------------------
    def wait(self) -> HealthReport:
        self._begin = self.clock()
        deadline = self._begin + self.timeout
        source = self.open_events(self.api, self.project, since=self.wall() - 1,
                                  until=self.wall() + self.timeout + UNTIL_MARGIN)
        try:  # subscribed before the first look: no change falls between the two
            return self._watch(source, deadline)
        finally:
            if source is not None:
                source.close()

    def _watch(self, source: EventSource | None, deadline: float) -> HealthReport:
        containers = self._look()
        next_poll = self.clock() + self._poll_every(source)
        next_progress = self._begin + self.progress_every
        while True:
            report = self._report(containers)
            now = self.clock()
            if report.ok or report.failed:
                return report
            if now >= deadline:
                return self._timed_out(report)
            if now >= next_progress:
                self._print_progress(report, now)
                while next_progress <= now:
                    next_progress += self.progress_every
            wake = min(deadline, next_poll, next_progress, self._next_settle_end(now))
            if source is not None and source.alive:
                changes = source.wait(max(wake - now, 0.0))
            else:
                changes = []
                self.sleep(max(min(wake, next_poll) - now, 0.0))
            if source is not None and not source.alive:
                source, next_poll = None, min(next_poll, self.clock() + self.interval)
            if self.clock() >= next_poll:
                containers = self._look()
                next_poll = self.clock() + self._poll_every(source)
            elif changes:
                containers = self._look_again(containers, changes)

    def _poll_every(self, source: EventSource | None) -> float:
        return self.safety_poll if source is not None and source.alive else self.interval

    def _look(self) -> dict[str, dict[str, Any]]:
        return {str(c["Id"]): c for c in project_containers(self.api, self.project)
                if self.include is None or self.include(c)}

    def _look_again(self, containers: dict[str, dict[str, Any]],
                    changes: list[ContainerEvent]) -> dict[str, dict[str, Any]]:
        """Inspect only the containers an event named; list again when the set changed."""
        self._oom.update(e.container_id for e in changes if e.action == "oom")
        if any(e.container_id not in containers or e.action in ("create", "destroy")
               for e in changes):
            return self._look()
        updated = dict(containers)
        for container_id in dict.fromkeys(e.container_id for e in changes):
            try:
                updated[container_id] = dict(self.api.inspect_container(container_id))
            except docker.errors.NotFound:
                return self._look()
            except docker.errors.APIError as exc:
                raise DockerError(f"Cannot inspect container {container_id[:12]} of project "
                                  f"{self.project!r}: {exc.explanation}") from exc
        return updated

    def _report(self, containers: Mapping[str, Mapping[str, Any]]) -> HealthReport:
        self._settles_at.clear()
        ordered = sorted(containers.values(), key=lambda c: (service_of(c), str(c.get("Name"))))
        one_shots = one_shot_services(ordered) | self.one_shots
        return HealthReport([self.judge(c, one_shot=service_of(c) in one_shots)
                             for c in ordered])

    def _next_settle_end(self, now: float) -> float:
        """The monotonic time at which the next settle window ends."""
        if not self._settles_at:
            return math.inf
        return now + max(min(self._settles_at.values()) - self.wall(), 0.0)

    def _timed_out(self, report: HealthReport) -> HealthReport:
        for container in report.waiting:
            container.verdict = FAILED
            container.reason = (f"not {_goal(container)} after {self.timeout:g} s "
                                f"({container.state}"
                                f"{', ' + container.health if container.health else ''})")
        return report

    def _print_progress(self, report: HealthReport, now: float) -> None:
        if self.progress is None:
            return
        per_service = Counter(c.service for c in report.containers)
        for container in report.waiting:
            label = container.service if per_service[container.service] == 1 \
                else container.name
            self.progress(f"{label}: {container.pending}, {now - self._begin:.0f} s of "
                          f"{self.timeout:g} s")

    # -- one container -------------------------------------------------------------
    def judge(self, container: Mapping[str, Any], *, one_shot: bool = False) -> ContainerHealth:
        state = container.get("State") or {}
        health_state = state.get("Health") or {}
        result = ContainerHealth(
            service=service_of(container), name=str(container.get("Name", "")).lstrip("/"),
            container_id=str(container.get("Id", "")), state=str(state.get("Status", "")),
            health=str(health_state.get("Status", "")),
            restarts=int(container.get("RestartCount") or 0),
            health_log=[str(entry.get("Output", "")).strip()
                        for entry in (health_state.get("Log") or [])[-HEALTH_LOG_TAIL:]])
        result.verdict, result.reason = self._verdict(container, result, one_shot)
        if result.verdict == WAITING:
            result.pending = result.pending or ", ".join(
                filter(None, [result.state, result.health]))
        return result

    def _verdict(self, container: Mapping[str, Any], seen: ContainerHealth,
                 one_shot: bool) -> tuple[str, str]:
        state = container.get("State") or {}
        started = str(state.get("StartedAt") or "")
        restarts, first_started = self._baseline.setdefault(seen.container_id,
                                                            (seen.restarts, started))
        oom = seen.container_id in self._oom or bool(state.get("OOMKilled"))
        memory = "killed for lack of memory (OOM), " if oom else ""
        if seen.state in ("exited", "dead"):
            return _exit_verdict(state.get("ExitCode", "?"), one_shot=one_shot, oom=oom)
        if seen.state == "restarting":
            return FAILED, f"{memory}restarting (restart count {seen.restarts})"
        if seen.restarts > restarts or started != first_started:
            return FAILED, f"{memory}restarted (restart count {seen.restarts})"
        if seen.state != "running":
            seen.pending = seen.state + (" (one-shot)" if one_shot else "")
            return WAITING, ""
        if one_shot:
            seen.pending = "running (one-shot, passes when it exits 0)"
            return WAITING, ""
        return self._running_verdict(container, seen)

    def _running_verdict(self, container: Mapping[str, Any],
                         seen: ContainerHealth) -> tuple[str, str]:
        if seen.health == "unhealthy" and self._past_start_period(container):
            return FAILED, "unhealthy"
        if seen.health not in ("", "healthy"):
            seen.pending = seen.health + (" (in its start period)"
                                          if seen.health == "unhealthy" else "")
            return WAITING, ""
        up = self._running_for(container, seen.container_id)
        if up + CLOCK_SLACK >= self.settle:
            return (HEALTHY, "") if seen.health else (RUNNING, "")
        self._settles_at[seen.container_id] = self.wall() + self.settle - up
        seen.pending = (f"{seen.health or seen.state}, settling (up {up:.0f} s of "
                        f"{self.settle:g} s)")
        return WAITING, ""

    def _running_for(self, container: Mapping[str, Any], container_id: str) -> float:
        """Seconds since the container's own start (since we first saw it, when the start
        time is unreadable); never negative, whatever the engine's clock says."""
        now = self.wall()
        started = _parse_started(str((container.get("State") or {}).get("StartedAt") or ""))
        if started is None:
            started = self._first_seen.setdefault(container_id, now)
        return max(now - started, 0.0)

    def _past_start_period(self, container: Mapping[str, Any]) -> bool:
        check = (container.get("Config") or {}).get("Healthcheck") or {}
        start_period = float(check.get("StartPeriod") or 0) / 1e9
        started = _parse_started(str((container.get("State") or {}).get("StartedAt") or ""))
        return started is None or self.wall() - started >= start_period


def _exit_verdict(code: object, *, one_shot: bool, oom: bool) -> tuple[str, str]:
    if one_shot and code == 0 and not oom:
        return COMPLETED, "exited 0 (one-shot)"
    memory = "killed for lack of memory (OOM), " if oom else ""
    return FAILED, f"{memory}exited with code {code}" + (" (one-shot)" if one_shot else "")


def _goal(container: ContainerHealth) -> str:
    if "one-shot" in container.pending:
        return "completed"
    if container.health and container.health != "healthy":
        return "healthy"
    return "settled"


def report_failures(api: Any, report: HealthReport, actions: Actions) -> None:
    """The last log lines and the health log of each failed container, in a log group."""
    for container in report.failed:
        with actions.group(f"Logs of {container.name} ({container.service}): "
                           f"{container.reason}"):
            try:
                logs = api.logs(container.container_id, tail=LOG_TAIL, stdout=True,
                                stderr=True)
                text = logs.decode("utf-8", "replace") if isinstance(logs, bytes) else str(logs)
            except docker.errors.APIError as exc:
                text = f"(logs unavailable: {exc.explanation})"
            lines = [text.rstrip() or "(no output)"]
            if container.health_log:
                lines.append("Health log (latest last):")
                lines.extend("  " + (line or "(no output)") for line in container.health_log)
            actions.untrusted("", "\n".join(lines))  # the image's output: never a command
