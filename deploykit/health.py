"""The Docker SDK side of a deploy: what runs, which digest, and the health verdict.

Only the low-level ``client.api`` calls are used (``containers``,
``inspect_container``, ``inspect_image``, ``logs``): plain dicts, easy to fake.
``docker_client`` honours ``DOCKER_HOST`` (``unix://``, ``tcp://`` and
``ssh://user@host`` through the system ``ssh`` client) like the docker CLI.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker.errors
from docker.client import DockerClient

from deploykit.actions import Actions, markdown_table
from deploykit.errors import DockerError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
POLL_INTERVAL = 1.0
LOG_TAIL = 40
HEALTH_LOG_TAIL = 5
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CONTAINER_DIR_RE = re.compile(r"containers/([0-9a-f]{64})/")
_CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")

HEALTHY, RUNNING, FAILED, WAITING = "healthy", "running", "failed", "waiting"


def docker_client(env: Mapping[str, str]) -> Any:
    """An SDK client for the engine the docker CLI would talk to."""
    host = env.get("DOCKER_HOST", "")
    try:
        return DockerClient.from_env(environment=dict(env),
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


def running_digest(api: Any, container: Mapping[str, Any], image_name: str) -> str:
    reference = str((container.get("Config") or {}).get("Image") or "")
    known = image_digests(api, str(container.get("Image") or ""), image_name)
    pinned = reference.partition("@")[2]
    ours = reference.startswith((image_name + ":", image_name + "@"))
    if pinned and (pinned in known or (ours and not known)):
        return pinned
    return known[0] if known else ""


def running_services(api: Any, project: str, image_name: str,
                     services: Iterable[str]) -> list[RunningService]:
    """The image of each container of ``services`` (the rollback target)."""
    wanted = set(services)
    return [RunningService(_service(c), str(c["Id"]),
                           str((c.get("Config") or {}).get("Image") or ""),
                           running_digest(api, c, image_name))
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

    def row(self) -> list[str]:
        return [self.service, self.name, self.state, self.health or "-", str(self.restarts),
                self.verdict + (f": {self.reason}" if self.reason else "")]


@dataclass
class HealthReport:
    containers: list[ContainerHealth]

    @property
    def ok(self) -> bool:
        return bool(self.containers) and all(
            c.verdict in (HEALTHY, RUNNING) for c in self.containers)

    @property
    def failed(self) -> list[ContainerHealth]:
        return [c for c in self.containers if c.verdict == FAILED]

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


class HealthWatch:
    """Polls the project's containers until each is healthy/settled, or one fails."""

    def __init__(
        self, api: Any, project: str, *, timeout: float, settle: float,
        interval: float = POLL_INTERVAL, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.project = api, project
        self.timeout, self.settle, self.interval = timeout, settle, interval
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self._baseline: dict[str, tuple[int, str]] = {}  # id -> (restarts, StartedAt)
        self._running_since: dict[str, float] = {}

    def wait(self) -> HealthReport:
        deadline = self.clock() + self.timeout
        while True:
            report = HealthReport([self.judge(c) for c in
                                   project_containers(self.api, self.project)])
            if report.ok or any(c.verdict == FAILED for c in report.containers):
                return report
            if self.clock() >= deadline:
                for container in (c for c in report.containers if c.verdict == WAITING):
                    container.verdict = FAILED
                    container.reason = (f"not {'healthy' if container.health else 'settled'} "
                                        f"after {self.timeout:g} s ({container.state}"
                                        f"{', ' + container.health if container.health else ''})")
                return report
            self.sleep(min(self.interval, max(deadline - self.clock(), 0.0)))

    def judge(self, container: Mapping[str, Any]) -> ContainerHealth:
        state = container.get("State") or {}
        health_state = state.get("Health") or {}
        result = ContainerHealth(
            service=_service(container), name=str(container.get("Name", "")).lstrip("/"),
            container_id=str(container.get("Id", "")), state=str(state.get("Status", "")),
            health=str(health_state.get("Status", "")),
            restarts=int(container.get("RestartCount") or 0),
            health_log=[str(entry.get("Output", "")).strip()
                        for entry in (health_state.get("Log") or [])[-HEALTH_LOG_TAIL:]])
        result.verdict, result.reason = self._verdict(container, result)
        return result

    def _verdict(self, container: Mapping[str, Any], seen: ContainerHealth) -> tuple[str, str]:
        state = container.get("State") or {}
        started = str(state.get("StartedAt") or "")
        restarts, first_started = self._baseline.setdefault(seen.container_id,
                                                            (seen.restarts, started))
        if seen.state in ("exited", "dead"):
            return FAILED, f"exited with code {state.get('ExitCode', '?')}"
        if seen.state == "restarting" or seen.restarts > restarts or started != first_started:
            return FAILED, f"restarting (restart count {seen.restarts})"
        if seen.state != "running":
            return WAITING, ""
        return self._running_verdict(container, seen)

    def _running_verdict(self, container: Mapping[str, Any],
                         seen: ContainerHealth) -> tuple[str, str]:
        if seen.health == "healthy":
            return HEALTHY, ""
        if seen.health == "unhealthy" and self._past_start_period(container):
            return FAILED, "unhealthy"
        if seen.health:
            return WAITING, ""
        since = self._running_since.setdefault(seen.container_id, self.clock())
        return (RUNNING, "") if self.clock() - since >= self.settle else (WAITING, "")

    def _past_start_period(self, container: Mapping[str, Any]) -> bool:
        check = (container.get("Config") or {}).get("Healthcheck") or {}
        start_period = float(check.get("StartPeriod") or 0) / 1e9
        started = _parse_started(str((container.get("State") or {}).get("StartedAt") or ""))
        return started is None or self.wall() - started >= start_period


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
            actions.info(text.rstrip() or "(no output)")
            if container.health_log:
                actions.info("Health log (latest last):")
                for line in container.health_log:
                    actions.info("  " + (line or "(no output)"))
