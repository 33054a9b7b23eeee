"""The Docker SDK side of a deploy: what runs, which digest, and the health verdict.

Only the low-level ``client.api`` calls are used (``containers``,
``inspect_container``, ``inspect_image``, ``logs``, and ``events`` through
:mod:`deploykit.events`): plain dicts, easy to fake. The verdict waits on the engine's
events and inspects a container again only when one names it.
``docker_client`` honours ``DOCKER_HOST`` (``unix://``, ``tcp://`` and
``ssh://user@host`` through the system ``ssh`` client) like the docker CLI.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from deploykit.actions import Actions, markdown_table
from deploykit.docker_sdk import docker, enable_ssh
from deploykit.errors import DockerError
from deploykit.events import ContainerEvent, EventSource, open_project_events

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
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
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CONTAINER_DIR_RE = re.compile(r"containers/([0-9a-f]{64})/")
_CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")

HEALTHY, RUNNING, COMPLETED = "healthy", "running", "completed"
FAILED, WAITING = "failed", "waiting"


def docker_client(env: Mapping[str, str]) -> Any:
    """An SDK client for the engine the docker CLI would talk to."""
    host = env.get("DOCKER_HOST", "")
    if host.startswith("ssh://"):
        enable_ssh()
    try:
        return docker.DockerClient.from_env(environment=dict(env),
                                            use_ssh_client=host.startswith("ssh://"))
    except docker.errors.DockerException as exc:
        raise DockerError(f"Cannot reach the Docker engine ({host or 'default socket'}): {exc}",
                          hint="Start the engine, or point DOCKER_HOST at it (e.g. "
                          "`ssh://deploy@host`).") from exc


# -- the container we run in (the action container) ----------------------------
def own_container_candidates(proc: Path = Path("/proc/self"), hostname: str = "",
                             dockerenv: Path = Path("/.dockerenv")) -> list[str]:
    """IDs of the container this process may run in; empty on a plain host.

    Docker bind-mounts ``/etc/hostname`` (and hosts, resolv.conf) from
    ``.../containers/<id>/``; on a host, mountinfo also lists *other*
    containers' mounts, so only those three mount points count.
    """
    found: list[str] = []
    try:
        mountinfo = (proc / "mountinfo").read_text(encoding="utf-8")
    except OSError:
        mountinfo = ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in _CONTAINER_FILES:
            match = _CONTAINER_DIR_RE.search(fields[3])
            if match and match.group(1) not in found:
                found.append(match.group(1))
    if dockerenv.exists() and re.fullmatch(r"[0-9a-f]{12}", hostname):
        found.append(hostname)
    return found


def own_container(api: Any, candidates: Iterable[str]) -> dict[str, Any] | None:
    """The inspect data of the container we run in, when it is on this engine."""
    for candidate in candidates:
        try:
            return dict(api.inspect_container(candidate))
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError:
            return None
    return None


def workspace_mounts(container: Mapping[str, Any] | None, workspace: str) -> dict[str, str]:
    """Bind mounts of our container (destination -> host source) when the workspace is one
    of them; empty when we do not run in a container of this engine with that mount.

    A workspace on a named volume (act, runners in containers) counts too: then volume
    mounts map as well, their ``Source`` being the volume's directory on the engine's host.
    """
    if not container or not workspace:
        return {}
    mounts = container.get("Mounts") or []
    workspace = workspace.rstrip("/") or "/"
    kinds = {str(m.get("Destination")): m.get("Type") for m in mounts}
    accepted = ("bind", "volume") if kinds.get(workspace) == "volume" else ("bind",)
    binds = {str(m.get("Destination")): str(m.get("Source"))
             for m in mounts if m.get("Type") in accepted}
    return binds if workspace in binds else {}


# -- what runs now -----------------------------------------------------------
@dataclass(frozen=True)
class RunningService:
    service: str
    container_id: str
    reference: str  # Config.Image, e.g. registry/repo:tag@sha256:...
    digest: str  # registry digest of the running image ('' when unknown)


def project_containers(api: Any, project: str) -> list[dict[str, Any]]:
    """Inspect data of every container of the project (stopped ones too), by service."""
    try:
        summaries = api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
        inspected = []
        for summary in summaries:
            try:
                inspected.append(dict(api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:
                continue  # removed while we looked (a recreate)
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot list the containers of project {project!r}: "
                          f"{exc.explanation}") from exc
    labels = [(c.get("Config") or {}).get("Labels") or {} for c in inspected]
    return sorted((c for c, lab in zip(inspected, labels, strict=True)
                   if lab.get(ONEOFF_LABEL) != "True"),
                  key=lambda c: (_service(c), str(c.get("Name"))))


def _service(container: Mapping[str, Any]) -> str:
    labels = (container.get("Config") or {}).get("Labels") or {}
    return str(labels.get(SERVICE_LABEL) or container.get("Name", "")).lstrip("/")


def image_digests(api: Any, image_id: str, image_name: str) -> list[str]:
    """Registry digests of a local image for ``image_name`` (``registry/repo``)."""
    try:
        image = api.inspect_image(image_id)
    except docker.errors.NotFound:
        return []
    digests = []
    for repo_digest in image.get("RepoDigests") or []:
        name, _, digest = str(repo_digest).partition("@")
        if name == image_name and digest not in digests:
            digests.append(digest)
    return digests


# compose names the container it creates to replace another `<12 hex of the old ID>_<name>`
# until the old one is removed, then renames it.
_TEMPORARY_NAME = re.compile(r"^/?[0-9a-f]{12}_")


def leftover_containers(api: Any, project: str,
                        services: Iterable[str]) -> list[dict[str, Any]]:
    """Containers of ``services`` an interrupted ``up`` left (a cancel or a kill in the
    middle of a recreate): compose's temporary replacements, and containers created but
    never started. They make the next ``up`` fail ("container name already in use")."""
    wanted = set(services)
    found = []
    for container in api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        labels = container.get("Labels") or {}
        if labels.get(SERVICE_LABEL) not in wanted or labels.get(ONEOFF_LABEL) == "True":
            continue
        names = container.get("Names") or []
        if container.get("State") == "created" or any(_TEMPORARY_NAME.match(str(name))
                                                      for name in names):
            found.append(container)
    return found


def remove_leftovers(api: Any, project: str, services: Iterable[str]) -> list[str]:
    """Remove :func:`leftover_containers` (by ID, forced): the names of those removed."""
    removed = []
    try:
        for container in leftover_containers(api, project, services):
            with suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)
            removed.append(str((container.get("Names") or [container["Id"]])[0]).lstrip("/"))
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot remove the containers an interrupted `docker compose up` "
                          f"left in project {project!r}: {exc.explanation}") from exc
    return removed


def image_present(api: Any, reference: str) -> bool:
    """Whether the engine has ``reference`` (``registry/repo@sha256:...``) locally; an
    engine that cannot say is taken as "no" (the pull then asks the registry)."""
    try:
        api.inspect_image(reference)
    except docker.errors.APIError:
        return False
    return True


def running_digest(api: Any, container: Mapping[str, Any], image_name: str,
                   known_by_image: dict[str, list[str]] | None = None) -> str:
    """The digest ``container`` runs; ``known_by_image`` keeps each image's digests for
    the next container of the same image (an app and its worker: one inspect)."""
    reference = str((container.get("Config") or {}).get("Image") or "")
    image_id = str(container.get("Image") or "")
    cache = {} if known_by_image is None else known_by_image
    if image_id not in cache:
        cache[image_id] = image_digests(api, image_id, image_name)
    known = cache[image_id]
    pinned = reference.partition("@")[2]
    ours = reference.startswith((image_name + ":", image_name + "@"))
    if pinned and (pinned in known or (ours and not known)):
        return pinned
    return known[0] if known else ""


def running_services(api: Any, project: str, image_name: str,
                     services: Iterable[str]) -> list[RunningService]:
    """The image of each container of ``services`` (the rollback target)."""
    wanted = set(services)
    known_by_image: dict[str, list[str]] = {}
    return [RunningService(_service(c), str(c["Id"]),
                           str((c.get("Config") or {}).get("Image") or ""),
                           running_digest(api, c, image_name, known_by_image))
            for c in project_containers(api, project) if _service(c) in wanted]


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
            found.add(_service(container))
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
    ) -> None:
        self.api, self.project = api, project
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
        return {str(c["Id"]): c for c in project_containers(self.api, self.project)}

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
        ordered = sorted(containers.values(), key=lambda c: (_service(c), str(c.get("Name"))))
        one_shots = one_shot_services(ordered) | self.one_shots
        return HealthReport([self.judge(c, one_shot=_service(c) in one_shots)
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
            service=_service(container), name=str(container.get("Name", "")).lstrip("/"),
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
