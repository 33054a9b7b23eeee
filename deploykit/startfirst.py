"""The engine steps of a start-first compose rollout (Swarm's ``update_config.order``).

A service asks for it with compose's own keys: ``deploy.update_config.order: start-first``.
The steps, called by a rollout strategy in this order:

1. :func:`check` (pure, before anything changes): each image service's update
   policy, and a :class:`~deploykit.errors.ComposeError` naming the service and the fix for
   what cannot run twice at once (a published host port, ``container_name``, host
   networking, a one-shot service, ``failure_action: continue``).
2. :meth:`StartFirst.start_new`: compose's own ``up -d --no-recreate --scale svc=old+k
   svc`` with the new release's image variables starts ``k`` new containers beside
   the old ones, which keep serving. Compose numbers them after the old ones and gives them
   the new config hash, so compose itself sees them as the service's current containers.
3. The verdict (not here): :class:`deploykit.health.HealthWatch` on the project, with
   ``settle`` at least the policy's ``monitor``; :func:`batch_report` keeps the new
   containers' part of its report.
4. :meth:`StartFirst.retire_old` after a good verdict: ``docker stop`` (the service's
   ``stop_signal`` and ``stop_grace_period``) and ``docker rm`` of the old containers. What
   is left is what compose would have made: ``replicas`` containers with the current config
   hash, so a later plain ``docker compose up -d`` recreates nothing.
   Or :meth:`StartFirst.discard_new` after a bad verdict or a cancel: the new containers are
   stopped the same way and removed; the old ones never stopped.

With ``parallelism`` the strategy repeats 2-4 per :meth:`UpdatePolicy.batches` entry,
sleeping ``delay`` in between (``tests/integration/zdt_fixtures.start_first_switch``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploykit.compose import Compose, ComposeProject
from deploykit.containers import SERVICE_LABEL, project_containers
from deploykit.dockercli import DockerCLI
from deploykit.errors import ComposeError, DeployError
from deploykit.health import HealthReport

START_FIRST, STOP_FIRST = "start-first", "stop-first"
FAILURE_ACTIONS = ("pause", "rollback", "continue")
# Swarm's defaults (`docker service create --help`); compose's own stop_grace_period is 10 s.
DEFAULT_PARALLELISM, DEFAULT_MONITOR, DEFAULT_FAILURE_ACTION = 1, 5.0, "pause"
DEFAULT_GRACE = 10.0
NUMBER_LABEL = "com.docker.compose.container-number"
STOP_MARGIN = 30.0  # the docker CLI's own time beyond the grace period
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


@dataclass(frozen=True)
class UpdatePolicy:
    """One image service's ``deploy.update_config`` and replicas, as Swarm defines them."""

    service: str
    replicas: int = 1
    order: str = STOP_FIRST
    parallelism: int = DEFAULT_PARALLELISM  # 0: every replica in one batch
    delay: float = 0.0  # seconds between batches
    monitor: float = DEFAULT_MONITOR  # seconds a new batch must keep running
    failure_action: str = DEFAULT_FAILURE_ACTION
    stop_grace_period: float = DEFAULT_GRACE
    stop_signal: str = ""  # empty: the image's STOPSIGNAL (SIGTERM by default)

    @property
    def start_first(self) -> bool:
        return self.order == START_FIRST

    def batches(self) -> list[int]:
        """How many new containers each batch starts: ``parallelism`` at a time."""
        size = self.replicas if self.parallelism <= 0 else min(self.parallelism,
                                                                self.replicas)
        if size <= 0:
            return []
        full, rest = divmod(self.replicas, size)
        return [size] * full + ([rest] if rest else [])

    def settle(self, settle: float) -> float:
        """The verdict's settle window: the deploy's own, or ``monitor`` when longer."""
        return max(settle, self.monitor)


# -- the pure part: `docker compose config --format json` -------------------------
def go_duration(value: object, *, key: str, service: str) -> float:
    """Seconds of a compose duration (``1m30s``, ``500ms``; compose prints Go's format)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1e9  # a bare number is nanoseconds, as in Go
    text = str(value).strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ComposeError(f"Service {service!r}: `{key}: {text}` is not a duration.",
                           hint=f"Write `{key}` like `10s`, `1m30s` or `500ms`.")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def update_policy(name: str, service: Mapping[str, Any]) -> UpdatePolicy:
    """The update policy of one service of a resolved compose config."""
    deploy = service.get("deploy") or {}
    update = deploy.get("update_config") or {}
    order = str(update.get("order") or STOP_FIRST)
    if order not in (START_FIRST, STOP_FIRST):
        raise ComposeError(f"Service {name!r}: `deploy.update_config.order: {order}` is "
                           "neither start-first nor stop-first.",
                           hint="Write `order: start-first` or `order: stop-first`.")
    failure_action = str(update.get("failure_action") or DEFAULT_FAILURE_ACTION)
    if failure_action not in FAILURE_ACTIONS:
        raise ComposeError(f"Service {name!r}: `deploy.update_config.failure_action: "
                           f"{failure_action}` is not one of {', '.join(FAILURE_ACTIONS)}.",
                           hint="Write `failure_action: rollback` (or pause).")
    return UpdatePolicy(
        service=name, replicas=replicas(service), order=order,
        parallelism=_count(update.get("parallelism"), DEFAULT_PARALLELISM),
        delay=_seconds(update.get("delay"), 0.0, "delay", name),
        monitor=_seconds(update.get("monitor"), DEFAULT_MONITOR, "monitor", name),
        failure_action=failure_action,
        stop_grace_period=_seconds(service.get("stop_grace_period"), DEFAULT_GRACE,
                                   "stop_grace_period", name),
        stop_signal=str(service.get("stop_signal") or ""))


def replicas(service: Mapping[str, Any]) -> int:
    """``deploy.replicas``, else ``scale``, else 1 (what ``docker compose up`` starts)."""
    deploy = service.get("deploy") or {}
    for value in (deploy.get("replicas"), service.get("scale")):
        if value is not None:
            return _count(value, 1)
    return 1


def _count(value: object, default: int) -> int:
    if value is None:
        return default
    return int(str(value))


def _seconds(value: object, default: float, key: str, service: str) -> float:
    return default if value in (None, "") else go_duration(value, key=key, service=service)


def check(config: Mapping[str, Any], project: ComposeProject) -> dict[str, UpdatePolicy]:
    """Every deployed-image service's update policy; raises ComposeError, before anything
    changes, for a start-first service that cannot run twice at once."""
    services = config.get("services") or {}
    policies = {}
    for name in project.on_image or project.image_services:
        policy = update_policy(name, services.get(name) or {})
        if policy.start_first:
            refuse_unrunnable(name, services.get(name) or {}, project)
        policies[name] = policy
    return policies


def refuse_unrunnable(name: str, service: Mapping[str, Any], project: ComposeProject) -> None:
    fix = f"Remove `deploy.update_config.order: start-first` from {name!r}, or "
    if name in project.one_shot_services:
        raise ComposeError(
            f"Service {name!r} is a one-shot (it runs to completion), but asks for "
            "`order: start-first`: there is no old container to keep serving.",
            hint=fix[:-5] + ".")
    published = [port for port in service.get("ports") or []
                 if isinstance(port, Mapping) and port.get("published")]
    if published:
        ports = ", ".join(":".join(filter(None, (str(p.get("host_ip") or ""),
                                                  str(p["published"]))))
                          for p in published)
        raise ComposeError(
            f"Service {name!r} asks for `order: start-first` but publishes host port "
            f"{ports}: the new container cannot bind it while the old one holds it.",
            hint=fix + "put a proxy in front of it (examples/zero-downtime) and publish the "
            "proxy's port instead.")
    if service.get("container_name"):
        raise ComposeError(
            f"Service {name!r} asks for `order: start-first` but sets `container_name: "
            f"{service['container_name']}`: two containers cannot have one name.",
            hint=fix + "remove `container_name` (compose names the containers).")
    if str(service.get("network_mode") or "") == "host":
        raise ComposeError(
            f"Service {name!r} asks for `order: start-first` but uses `network_mode: host`: "
            "the new container cannot bind the ports the old one holds.",
            hint=fix + "give it a compose network behind a proxy.")
    update = (service.get("deploy") or {}).get("update_config") or {}
    if update.get("failure_action") == "continue":
        raise ComposeError(
            f"Service {name!r}: `failure_action: continue` under start-first would stop "
            "the healthy old containers for new ones that failed.",
            hint="Write `failure_action: rollback` (or pause).")


def batch_report(report: HealthReport, batch: StartedBatch) -> HealthReport:
    """The new containers' part of a HealthWatch report on the whole project."""
    return HealthReport([c for c in report.containers if c.container_id in batch.new_ids])


# -- the engine steps ----------------------------------------------------------------
@dataclass(frozen=True)
class StartedBatch:
    """New containers started beside the old ones of one service (full 64-hex IDs)."""

    service: str
    old_ids: tuple[str, ...]
    new_ids: tuple[str, ...]


class StartFirst:
    """The engine steps of a start-first rollout of one compose project.

    ``api`` is the SDK's low-level client (``health.docker_client(env).api``), ``docker``
    the CLI that stops and removes containers. The ``Compose`` given to :meth:`start_new`
    carries the new release's image variables (``Compose.with_env``).
    """

    def __init__(self, api: Any, docker: DockerCLI, project: str) -> None:
        self.api, self.docker, self.project = api, docker, project

    def containers(self, service: str) -> list[dict[str, Any]]:
        """Inspect data of the service's containers (stopped ones too), by number."""
        found = [c for c in project_containers(self.api, self.project)
                 if ((c.get("Config") or {}).get("Labels") or {}).get(SERVICE_LABEL)
                 == service]
        return sorted(found, key=_number)

    def start_new(self, compose: Compose, policy: UpdatePolicy, count: int | None = None, *,
                  timeout: float | None = None,
                  give_up_at: Callable[[], float | None] | None = None,
                  selection: Sequence[str] | None = None) -> StartedBatch:
        """Start ``count`` (default: ``replicas``) containers of the new release beside the
        running ones; the old ones are not touched. Whatever stops it half-way (a failed
        ``up``, a cancel, a timeout) removes the containers it started, then propagates.

        ``selection``: the services ``up`` names (default ``--no-deps <service>``): the
        ones the deploy's own ``up`` names, so that the new containers' config hash is the
        one that ``up`` expects (:meth:`deploykit.compose.Compose.selection`);
        ``--no-recreate`` leaves every selected service's containers as they are."""
        wanted = policy.replicas if count is None else count
        old = self.ids(policy.service)
        scale = ["up", "-d", "--no-build", "--no-recreate", "--scale",
                 f"{policy.service}={len(old) + wanted}",
                 *(selection or ["--no-deps", policy.service])]
        try:
            compose.docker.run(compose.args(*scale), extra_env=compose.env,
                               cwd=str(compose.directory), stream=True, timeout=timeout,
                               give_up_at=give_up_at)
        except BaseException:
            self.discard_new(self._since(policy.service, old), policy)
            raise
        batch = self._since(policy.service, old)
        gone = len(set(old) - set(self.ids(policy.service)))
        if gone or len(batch.new_ids) != wanted:
            self.discard_new(batch, policy)
            raise DeployError(
                f"`docker compose up --scale` of {policy.service!r} did not start {wanted} "
                f"new container(s) beside the {len(old)} running "
                f"(it started {len(batch.new_ids)}, and {gone} old ones are gone).",
                hint="Another deploy or `docker compose` ran on the project at the same "
                "time? See `docker compose ps`.")
        return batch

    def ids(self, service: str) -> tuple[str, ...]:
        """The service's container IDs (stopped ones too), by container number."""
        return tuple(str(c["Id"]) for c in self.containers(service))

    def _since(self, service: str, old: Sequence[str]) -> StartedBatch:
        """The service's containers that are not in ``old``: the ones just started."""
        return StartedBatch(service, tuple(old),
                            tuple(i for i in self.ids(service) if i not in old))

    def retire_old(self, batch: StartedBatch, policy: UpdatePolicy,
                   ids: Sequence[str] | None = None) -> None:
        """Stop the old containers gracefully and remove them.

        Default: every container that ran before ``batch`` (one batch: the whole previous
        release). With several batches, ``batch.old_ids`` holds the earlier batches' new
        containers too: pass ``ids``, the previous release's containers to retire now (as
        many as the batch started; after the last batch, all that are left)."""
        self._stop_and_remove(batch.old_ids if ids is None else ids, policy)

    def discard_new(self, batch: StartedBatch, policy: UpdatePolicy, *,
                    grace: float | None = None) -> None:
        """Stop and remove the new containers; the old ones keep serving. ``grace``: a
        shorter stop than ``stop_grace_period`` (a cancel has seconds left)."""
        self._stop_and_remove(batch.new_ids, policy, grace)

    def _stop_and_remove(self, ids: Iterable[str], policy: UpdatePolicy,
                         grace_limit: float | None = None) -> None:
        targets = list(ids)
        if not targets:
            return
        grace = math.ceil(policy.stop_grace_period if grace_limit is None
                          else min(policy.stop_grace_period, grace_limit))
        signal = ["--signal", policy.stop_signal] if policy.stop_signal else []
        self.docker.run(["stop", "--time", str(grace), *signal, *targets],
                        timeout=grace + STOP_MARGIN)
        self.docker.run(["rm", "--force", *targets])


def _number(container: Mapping[str, Any]) -> int:
    labels = (container.get("Config") or {}).get("Labels") or {}
    number = str(labels.get(NUMBER_LABEL) or "")
    return int(number) if number.isdigit() else 0
