"""Docker Swarm (``orchestrator: swarm``): raw calls and the rollout's truthful verdict.

``docker stack deploy`` returns 0 as soon as the manager accepted the new specs, even
when Swarm then rolls the update back (docker/cli#6752). deploykit deploys the stack
(``--with-registry-auth --prune``, ``IMAGE_TAG=<tag>@sha256:...`` so every node runs
one digest) and then watches each service through the SDK: ``UpdateStatus`` (updating,
completed, paused, rollback_started, rollback_completed) and its tasks (desired vs
current state, the digest in ``Spec.ContainerSpec.Image``, exit codes). With a
healthcheck a Swarm task stays ``starting`` until it is healthy, so ``running`` here
means healthy.

The lock is a Swarm config object ``deploykit-lock-<stack>``: the manager's raft store
creates a name once (a second create answers 409), so it holds across every manager
and node; its labels and stale rules are those of :mod:`deploykit.lock`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.actions import Actions, markdown_table
from deploykit.docker_sdk import docker
from deploykit.dockercli import DockerCLI
from deploykit.errors import ComposeError, DockerError, InputError
from deploykit.lock import LABEL_PREFIX, EngineLock, Holder
from deploykit.reference import pinned_digest
from deploykit.status import Status

STACK_LABEL = "com.docker.stack.namespace"
LOG_TAIL = 5
FAIL_FAST = 3  # failed tasks of the target digest, with no update of Swarm's own to judge
POLL_INTERVAL = 1.0
# UpdateStatus.State values (docker/api/types/swarm)
UPDATING, COMPLETED, PAUSED = "updating", "completed", "paused"
ROLLBACK_STARTED, ROLLBACK_COMPLETED, ROLLBACK_PAUSED = (
    "rollback_started", "rollback_completed", "rollback_paused")
_IN_PROGRESS = (UPDATING, ROLLBACK_STARTED)
_ENDED_TASK = ("failed", "rejected", "shutdown", "complete", "orphaned", "remove")


def digest_of(image: str) -> str:
    return pinned_digest(image)


# -- the engine must be a manager -------------------------------------------------
def check_manager(api: Any, host: str = "") -> None:
    """Raise before anything changes when the engine cannot deploy a stack."""
    info = api.info()
    swarm = info.get("Swarm") or {}
    where = host or "the local engine"
    if swarm.get("LocalNodeState") != "active":
        raise InputError("orchestrator", f"is swarm, but {where} is not in a Swarm "
                         f"(state {swarm.get('LocalNodeState') or 'unknown'!s}).",
                         hint="Run `docker swarm init` on the manager (docs/swarm.md), point "
                         "DOCKER_HOST at a manager, or use `orchestrator: compose`.")
    if not swarm.get("ControlAvailable"):
        raise InputError("orchestrator", f"is swarm, but {where} is a Swarm worker, not a "
                         "manager: stacks are deployed through a manager.",
                         hint="Point DOCKER_HOST at a manager node (`docker node ls` there "
                         "lists them), or promote this node.")


# -- the stack CLI -----------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    """One stack from one compose file; ``env`` reaches the CLI through its process
    environment (compose_env and the three image variables)."""

    docker: DockerCLI
    directory: Path
    file: Path
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    # service -> labels on the service (deploykit's release history), by an override file
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def _run(self, *args: str, stream: bool = False, timeout: float | None = None) -> str:
        result = self.docker.run(["stack", *args], extra_env=self.env, cwd=str(self.directory),
                                 stream=stream, timeout=timeout)
        return result.stdout

    def config(self) -> str:
        """``docker stack config``: the file as Swarm reads it (nothing is sent)."""
        try:
            return self._run("config", "-c", str(self.file))
        except DockerError as exc:
            detail = exc.message.partition("\n")[2] or exc.message
            raise ComposeError(f"`docker stack config` rejected {self.file}:\n{detail}",
                               hint="Run `docker stack config -c <file>` to see the "
                               "error.") from exc

    def deploy(self, *, timeout: float | None = None) -> None:
        """Send the specs; returns once the manager accepted them (``--detach``)."""
        with service_label_override(self.labels) as override:
            extra = ["--compose-file", str(override)] if override else []
            self._run("deploy", "--with-registry-auth", "--prune", "--detach=true",
                      "--compose-file", str(self.file), *extra, self.name, stream=True,
                      timeout=timeout)

    def task_logs(self, task_id: str, tail: int = LOG_TAIL) -> list[str]:
        """The last lines of one task, from whichever node ran it."""
        try:
            result = self.docker.run(["service", "logs", "--raw", "--no-trunc", "--tail",
                                      str(tail), task_id], check=False, timeout=30)
        except DockerError:
            return []
        text = result.stdout + result.stderr
        return [line for line in text.splitlines() if line.strip()][-tail:]


@contextmanager
def service_label_override(labels: Mapping[str, Mapping[str, str]]) -> Iterator[Path | None]:
    """A second compose file adding ``deploy.labels`` (service labels: changing them
    replaces no task) for one ``docker stack deploy``; ``$`` doubled against
    interpolation. Private directory, removed afterwards."""
    if not labels:
        yield None
        return
    document = {"services": {service: {"deploy": {"labels": {
        key: value.replace("$", "$$") for key, value in pairs.items()}}}
        for service, pairs in labels.items()}}
    directory = Path(tempfile.mkdtemp(prefix="deploykit-stack-labels-"))
    path = directory / "stack.deploykit-labels.json"
    try:
        path.write_text(json.dumps(document), encoding="utf-8")
        yield path
    finally:
        path.unlink(missing_ok=True)
        directory.rmdir()


# -- what runs: services and tasks through the SDK ----------------------------------
@dataclass(frozen=True)
class Task:
    id: str
    slot: int
    node: str
    desired: str
    state: str
    image: str
    error: str = ""
    exit_code: int | None = None
    timestamp: str = ""
    container_id: str = ""

    @property
    def digest(self) -> str:
        return digest_of(self.image)

    @property
    def running(self) -> bool:
        return self.desired == "running" and self.state == "running"

    @property
    def failed(self) -> bool:
        """It ended by itself: a task Swarm stops ends ``shutdown``; ``complete`` is a
        service's container that exited (also after a failed healthcheck killed it)."""
        return self.state in ("failed", "rejected", "complete") or (
            self.state in _ENDED_TASK and self.exit_code not in (None, 0))

    def describe(self, health: str = "") -> str:
        code = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        error = f": {self.error}" if self.error else ""
        health = f"; {health}" if health else ""
        return f"task {self.id[:12]} (slot {self.slot}) on node {self.node}: " \
               f"{self.state}{error}{code}{health}"


@dataclass(frozen=True)
class Service:
    name: str  # as in the compose file
    full_name: str  # <stack>_<name>
    id: str
    image: str  # the spec's
    replicas: int | None  # None: global
    update_state: str
    update_started: str
    update_message: str
    order: str
    tasks: tuple[Task, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.image)

    @property
    def running(self) -> list[Task]:
        return [t for t in self.tasks if t.running]

    @property
    def expected(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return len([t for t in self.tasks if t.desired == "running"])


def container_health(api: Any, container_id: str) -> str:
    """'unhealthy: <last probe output>' when the task's container is on this engine."""
    if not container_id:
        return ""
    try:
        state = api.inspect_container(container_id).get("State") or {}
    except docker.errors.APIError:
        return ""  # on another node, or removed
    health = state.get("Health") or {}
    if health.get("Status") != "unhealthy":
        return ""
    probes = health.get("Log") or []
    if not probes:
        return ""  # it exited before its first probe: the exit code says why
    output = " ".join(str(probes[-1].get("Output") or "").split())[:200]
    return f"unhealthy (last probe exit {probes[-1].get('ExitCode')}: {output or 'no output'})"


def _node_names(api: Any) -> dict[str, str]:
    try:
        return {str(n["ID"]): str((n.get("Description") or {}).get("Hostname") or n["ID"])
                for n in api.nodes()}
    except docker.errors.APIError:
        return {}


def _task(raw: Mapping[str, Any], nodes: Mapping[str, str]) -> Task:
    status = raw.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    code = container.get("ExitCode")
    spec = ((raw.get("Spec") or {}).get("ContainerSpec") or {})
    node = str(raw.get("NodeID") or "")
    return Task(id=str(raw.get("ID") or ""), slot=int(raw.get("Slot") or 0),
                node=nodes.get(node, node[:12] or "(not scheduled)"),
                desired=str(raw.get("DesiredState") or ""), state=str(status.get("State") or ""),
                image=str(spec.get("Image") or ""), error=str(status.get("Err") or ""),
                exit_code=int(code) if isinstance(code, int) else None,
                timestamp=str(status.get("Timestamp") or ""),
                container_id=str(container.get("ContainerID") or ""))


def _service(raw: Mapping[str, Any], stack: str, tasks: Sequence[Task]) -> Service:
    spec = raw.get("Spec") or {}
    full_name = str(spec.get("Name") or "")
    mode = spec.get("Mode") or {}
    replicated = mode.get("Replicated")
    update = raw.get("UpdateStatus") or {}
    return Service(
        name=full_name.removeprefix(f"{stack}_"), full_name=full_name, id=str(raw.get("ID")),
        image=str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image")
                  or ""),
        replicas=int(replicated.get("Replicas") or 0) if replicated is not None else None,
        update_state=str(update.get("State") or ""),
        update_started=str(update.get("StartedAt") or ""),
        update_message=str(update.get("Message") or ""),
        order=str((spec.get("UpdateConfig") or {}).get("Order") or "stop-first"),
        tasks=tuple(sorted(tasks, key=lambda t: (t.slot, t.timestamp))),
        labels={str(k): str(v) for k, v in (spec.get("Labels") or {}).items()})


def stack_services(api: Any, stack: str) -> dict[str, Service]:
    """name in the compose file -> the service and its tasks."""
    try:
        raws = api.services(filters={"label": f"{STACK_LABEL}={stack}"})
        nodes = _node_names(api)
        found = {}
        for raw in raws:
            tasks = [_task(t, nodes) for t in api.tasks(filters={"service": raw["ID"]})]
            service = _service(raw, stack, tasks)
            found[service.name] = service
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot read the services of stack {stack}: {exc.explanation}",
                          hint="The engine must be a Swarm manager.") from exc
    return found


# -- the verdict (pure) -----------------------------------------------------------
# A rollout that converged ends as the run does (the one `Status` vocabulary); the other
# outcomes are the watch's own.
DEPLOYED, ROLLED_BACK = Status.DEPLOYED, Status.ROLLED_BACK
PAUSED_OUT, FAILING, WAITING = "paused", "failing", "waiting"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # deployed | rolled_back | paused | failing | waiting
    services: tuple[str, ...] = ()  # the ones that decided it
    failures: tuple[tuple[str, Task], ...] = ()  # (service, task) of the target digest

    @property
    def done(self) -> bool:
        return self.outcome != WAITING


def judge(services: Mapping[str, Service], names: Sequence[str], digest: str,
          before: Mapping[str, str]) -> Verdict:
    """Where the rollout of ``names`` to ``digest`` stands.

    ``before`` maps a service to its ``UpdateStatus.StartedAt`` before the deploy: an
    update state left by an earlier deploy is not this one's."""
    outcomes = {}
    failures: list[tuple[str, Task]] = []
    for name in names:
        service = services.get(name)
        if service is None:
            outcomes[name] = WAITING
            continue
        state = service.update_state if service.update_started != before.get(name) else ""
        target_failed = [t for t in service.tasks if t.digest == digest and t.failed]
        failures += [(name, t) for t in target_failed]
        outcomes[name] = _service_outcome(service, state, digest, len(target_failed))
    ordered = (PAUSED_OUT, FAILING, WAITING, ROLLED_BACK, DEPLOYED)
    if not outcomes:
        return Verdict(WAITING)
    for outcome in ordered:
        decided = tuple(n for n, o in outcomes.items() if o == outcome)
        if decided and (outcome != WAITING or not any(
                o in (PAUSED_OUT, FAILING) for o in outcomes.values())):
            return Verdict(outcome, decided, tuple(failures))
    return Verdict(WAITING)  # pragma: no cover - every outcome is in `ordered`


def _service_outcome(service: Service, state: str, digest: str, failed: int) -> str:
    if state in (PAUSED, ROLLBACK_PAUSED):
        return PAUSED_OUT
    if state in _IN_PROGRESS:
        return WAITING
    converged = _converged(service)
    if state == ROLLBACK_COMPLETED:
        return ROLLED_BACK if converged else WAITING
    if converged and service.digest == digest:
        return DEPLOYED
    # No update of Swarm's own to watch (a new service): a crash loop is judged here.
    return FAILING if failed >= FAIL_FAST else WAITING


def _converged(service: Service) -> bool:
    """Every desired task runs the spec's image, as many as the spec asks for."""
    desired = [t for t in service.tasks if t.desired == "running"]
    return (len(service.running) == service.expected == len(desired)
            and all(t.image == service.image for t in desired))


def progress_line(service: Service, digest: str = "") -> str:
    """``digest``: count only the failed tasks of that release (older ones stay listed)."""
    running = service.running
    digests = sorted({t.digest[7:19] for t in running if t.digest})
    failed = len([t for t in service.tasks if t.failed and t.digest == (digest or t.digest)])
    state = service.update_state or "no update"
    return (f"{service.name}: {state}, {len(running)}/{service.expected} running "
            f"({', '.join(digests) or '-'})" + (f", {failed} failed task(s)" if failed else ""))


class RolloutWatch:
    """Poll the services until a verdict or the deadline; one line per change."""

    def __init__(self, api: Any, stack: str, names: Sequence[str], digest: str, *,
                 before: Mapping[str, str], timeout: float,
                 progress: Callable[[str], None],
                 read: Callable[[Any, str], dict[str, Service]] = stack_services,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 interval: float = POLL_INTERVAL) -> None:
        self.api, self.stack, self.names, self.digest = api, stack, names, digest
        self.before, self.timeout, self.progress = before, timeout, progress
        self.read, self.clock, self.sleep, self.interval = read, clock, sleep, interval
        self.services: dict[str, Service] = {}

    def wait(self) -> Verdict:
        self.progress(f"Watching {', '.join(self.names)} of stack {self.stack} until every "
                      f"replica runs {self.digest} (up to {self.timeout:g} s).")
        deadline = self.clock() + self.timeout
        shown: dict[str, str] = {}
        while True:
            self.services = self.read(self.api, self.stack)
            for name in self.names:
                if name in self.services:
                    line = progress_line(self.services[name], self.digest)
                    if shown.get(name) != line:
                        self.progress(line)
                        shown[name] = line
            verdict = judge(self.services, self.names, self.digest, self.before)
            if verdict.done or self.clock() >= deadline:
                return verdict
            self.sleep(min(self.interval, max(deadline - self.clock(), 0.0)))


def service_table(services: Mapping[str, Service], names: Sequence[str]) -> str:
    rows = []
    for name in names:
        service = services.get(name)
        if service is None:
            rows.append([name, "-", "-", "-", "-"])
            continue
        rows.append([name, f"{len(service.running)}/{service.expected}",
                     service.digest or service.image, service.update_state or "-",
                     service.order])
    return markdown_table(["service", "replicas running", "digest", "update state", "order"],
                          rows)


# -- the Swarm-wide lock ---------------------------------------------------------
class SwarmLock(EngineLock):
    """:class:`EngineLock` on a Swarm config object instead of a local network."""

    remove_command = "docker config rm"

    def _try_create(self) -> bool:
        try:
            created = self.client.api.create_config(
                self.name, b"deploykit deploy lock\n",
                labels={**self.holder.labels(), LABEL_PREFIX.rstrip("."): "true"})
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return False
            raise DockerError(f"Cannot create the lock {self.name}: {exc.explanation}") from exc
        self.lock_id = str(created.get("ID") or created.get("Id") or "")
        return True

    def _current(self) -> tuple[str, Holder] | None:
        try:
            found = self.client.api.inspect_config(self.name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise DockerError(f"Cannot read the lock {self.name}: {exc.explanation}") from exc
        labels = (found.get("Spec") or {}).get("Labels") or {}
        return str(found.get("ID") or ""), Holder.from_labels(labels)

    def _remove(self, config_id: str) -> None:
        try:
            self.client.api.remove_config(config_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise DockerError(f"Cannot remove the lock {self.name}: {exc.explanation}") from exc


@contextmanager
def swarm_lock(client: Any, holder: Holder, *, timeout: float,
               actions: Actions) -> Iterator[SwarmLock]:
    lock = SwarmLock(client, holder, timeout=timeout, actions=actions)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


__all__ = ["RolloutWatch", "Service", "Stack", "SwarmLock", "Task", "Verdict", "check_manager",
           "judge", "service_table", "stack_services", "swarm_lock"]
