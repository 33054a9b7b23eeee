"""The Swarm engine of mode=deploy and mode=rollback (``orchestrator: swarm``, docs/swarm.md).

:class:`SwarmEngine` is the procedure's engine (:mod:`deploykit.deploy.procedure`) when the
input is ``swarm``: the phases (gate, resolve, validate, lock, record what runs, roll out)
are the procedure's, the collaborators the runtime's, the records the report's. Its
steps: the manager check (before the registry), ``docker stack config``, the Swarm-wide
lock, what the services run, then
(:class:`SwarmRollout`) ``docker stack deploy``, the watch of the rollout
(:class:`deploykit.swarm.RolloutWatch`), the smoke test, the result recorded. A deploy
Swarm rolled back ends ``rolled_back`` and exits 1; a paused or failing update, or one past
``health_timeout``, is replaced by the last verified release (``rollback_on_failure``) the
same way, by ``docker stack deploy``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

from deploykit.actions import markdown_table
from deploykit.cancel import Cancelled
from deploykit.compose import ComposeProject
from deploykit.containers import RunningService
from deploykit.deploy.release import Release, Running
from deploykit.deploy.report import AS_VERIFIED, DEPLOYED, FAILED, ROLLED_BACK, Report
from deploykit.deploy.runtime import Runtime
from deploykit.errors import ComposeError, DeployError, DeploykitError, LockError
from deploykit.history import (
    HISTORY_LABEL,
    RELEASE_LABEL,
    HistoryEntry,
    labels_of_release,
    next_release_labels,
    stack_from_labels,
)
from deploykit.lock import EngineLock, Holder
from deploykit.settings import DEPLOY
from deploykit.swarm import (
    FAILING,
    PAUSED_OUT,
    RolloutWatch,
    Service,
    Stack,
    SwarmLock,
    Verdict,
    check_manager,
    container_health,
    service_table,
    stack_services,
    swarm_lock,
)

FAILED_TASKS_SHOWN = 3
CANCELLED = "cancelled"  # a Verdict outcome of deploykit's own: the watch was cancelled


def release_labels(services: Mapping[str, Service], project: ComposeProject) -> dict[str, str]:
    """deploykit's release labels of the stack's first image service that has them."""
    for name in project.image_services:
        labels = services[name].labels if name in services else {}
        if RELEASE_LABEL in labels:
            return {key: labels[key] for key in (RELEASE_LABEL, HISTORY_LABEL) if key in labels}
    return {}


class SwarmEngine:
    """The Swarm steps of a deploy behind :class:`deploykit.deploy.engine.Engine`."""

    def __init__(self, runtime: Runtime, report: Report) -> None:
        self.runtime, self.report = runtime, report
        self.settings, self.actions = runtime.settings, runtime.actions
        self.image_name = runtime.image_name
        self._manager_checked = False

    def check_engine(self) -> None:
        """The engine must be a Swarm manager: said before the registry is asked."""
        if not self._manager_checked:
            check_manager(self.runtime.engine.api, self.runtime.environ.get("DOCKER_HOST", ""))
            self._manager_checked = True

    def validate(self, target: Release) -> None:
        _, project = self.runtime.project()
        if project.one_shot_services:
            raise ComposeError(
                f"One-shot service(s) {', '.join(project.one_shot_services)} in "
                f"{project.file}: with orchestrator swarm, deploykit does not run one-shot "
                "services (Swarm restarts a task that exits).",
                hint="Run the migration as its own step, or use `orchestrator: compose`.")
        self.stack(target).config()  # the file as the manager will read it

    def stack(self, target: Release, labels: Mapping[str, str] | None = None) -> Stack:
        _, project = self.runtime.project()
        return Stack(self.runtime.docker, project.directory, project.file, project.name,
                     {**self.runtime.service_env, **target.image_env(self.settings)},
                     {name: dict(labels) for name in project.image_services} if labels else {})

    def services(self) -> dict[str, Service]:
        self.check_engine()
        _, project = self.runtime.project()
        return stack_services(self.runtime.engine.api, project.name)

    def running(self) -> Running:
        _, project = self.runtime.project()
        services = self.services()
        return Running.of([RunningService(name, "", services[name].image,
                                          services[name].digest)
                           for name in project.image_services if name in services],
                          self.image_name, release_labels(services, project))

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        """The labels of the stack's services: in the manager's store, whatever runner
        deploys."""
        _, project = self.runtime.project()
        return (stack_from_labels(release_labels(self.services(), project)),
                "the labels of the stack's services")

    def plan(self, target: Release, running: Running) -> None:
        _, project = self.runtime.project()
        services = self.services()
        rows = []
        for name in project.image_services:
            service = services.get(name)
            change = ("create" if service is None else
                      "unchanged" if service.digest == target.digest else "rolling update")
            rows.append([name, service.digest if service else "-", target.digest,
                         str(service.replicas if service and service.replicas is not None
                             else "-"), service.order if service else "-", change])
        table = markdown_table(["service", "current digest", "target digest", "replicas",
                                "update order", "change"], rows)
        actions = self.actions
        actions.info(f"Plan: `docker stack deploy --with-registry-auth --prune` of stack "
                     f"{project.name} with {target.reference(self.image_name)}."
                     + (f"\n{table}" if actions.in_actions else ""))
        self.report.plan(target, self.report.plan_title(project.name) + " (Swarm)", table)

    @contextmanager
    def lock(self, holder: Holder) -> Iterator[SwarmLock]:
        with swarm_lock(self.runtime.engine, holder,
                        timeout=self.settings.lock_timeout, actions=self.actions) as lock:
            yield lock

    def roll_out(self, target: Release, previous: Running, lock: EngineLock) -> None:
        _, project = self.runtime.project()
        rollout = SwarmRollout(self, project, lock)
        self.report.on_github(project.name, target, previous,
                              lambda: rollout.roll_out(target, previous))


class SwarmRollout:
    """Under the lock: stack deploy, watch, smoke, and the way back."""

    def __init__(self, engine: SwarmEngine, project: ComposeProject,
                 lock: EngineLock) -> None:
        self.engine, self.runtime, self.report = engine, engine.runtime, engine.report
        self.api, self.project, self.lock = engine.runtime.engine.api, project, lock
        self.settings, self.actions = engine.settings, engine.actions
        self.image_name = engine.image_name
        self.services: dict[str, Service] = {}

    def deploy_stack(self, target: Release, title: str, labels: Mapping[str, str]) -> Verdict:
        """``docker stack deploy`` of ``target``, then the watch of its rollout."""
        before = {name: s.update_started for name, s in
                  stack_services(self.api, self.project.name).items()}
        with self.runtime.docker.logged_in(self.settings.registry, self.settings.registry_username,
                                     self.settings.registry_password), \
                self.actions.group(title):
            self.engine.stack(target, labels).deploy(timeout=self.runtime.timeouts.up)
        with self.actions.group(f"Rollout of {target.reference(self.image_name)}"):
            watch = RolloutWatch(self.api, self.project.name, self.project.image_services,
                                 target.digest, before=before,
                                 timeout=self.settings.health_timeout,
                                 progress=self.actions.info, clock=self.runtime.clock)
            try:
                with self.runtime.cancel.interruptible():
                    verdict = watch.wait()
            except Cancelled:  # the update is the manager's: it goes on without the watch
                self.runtime.cancel.acknowledge()
                verdict = Verdict(CANCELLED, tuple(self.project.image_services))
            finally:
                self.services = watch.services
            self.actions.info(service_table(self.services, self.project.image_services))
        return verdict

    def cancelled(self, during: str) -> str:
        return (f"Cancelled ({self.runtime.cancel.signal_name}) during {during}: Swarm goes "
                "on with the update (or rolls it back by its update_config); deploykit did not "
                "verify it.")

    def roll_out(self, target: Release, previous: Running) -> None:
        as_verified = AS_VERIFIED[self.report.action]
        verdict = self.deploy_stack(
            target, f"docker stack deploy {target.reference(self.image_name)}",
            next_release_labels(previous.labels,
                                self.entry(target, previous, as_verified)))
        if verdict.outcome == CANCELLED:
            self.fail(target, previous, FAILED, self.cancelled("the rollout"))
        if verdict.outcome == ROLLED_BACK:
            back = self.verified_back(previous)
            self.fail(target, previous, ROLLED_BACK if back else FAILED,
                      f"Swarm rolled the update of {', '.join(verdict.services)} back"
                      f"{self.update_message(verdict)}.\n{self.what_failed(verdict)}\n"
                      + (back or "The previous release is not verified running."))
        if verdict.outcome != DEPLOYED:
            self.recover(target, previous, self.why(verdict))
        try:
            with self.runtime.cancel.interruptible():
                self.report.smoke()
        except Cancelled as cancelled:
            self.runtime.cancel.acknowledge()
            self.fail(target, previous, FAILED, f"Cancelled ({cancelled.signal_name}) during "
                      f"the smoke test: {target.reference(self.image_name)} runs on every "
                      "replica but was not smoke-tested; nothing was rolled back.")
        except DeploykitError as failure:
            self.recover(target, previous, failure.message)
        self.report.signal_came_late(target)
        self.actions.info(f"Every replica of {', '.join(self.project.image_services)} runs "
                          f"{target.digest}.")
        self.report.finish(self.project.name, target, previous, self.report.success_status,
                           summary=lambda status: self.summary(target, previous, status),
                           subject=f"Stack {self.project.name}")

    def why(self, verdict: Verdict) -> str:
        names = ", ".join(verdict.services)
        if verdict.outcome == PAUSED_OUT:
            return (f"Swarm paused the update of {names}{self.update_message(verdict)}.\n"
                    f"{self.what_failed(verdict)}").strip()
        if verdict.outcome == FAILING:
            return f"Tasks of {names} keep failing.\n{self.what_failed(verdict)}".strip()
        return (f"The rollout of {names} did not finish within health_timeout "
                f"({self.settings.health_timeout} s).\n{self.what_failed(verdict)}").strip()

    def update_message(self, verdict: Verdict) -> str:
        messages = {self.services[n].update_message for n in verdict.services
                    if n in self.services and self.services[n].update_message}
        return f" ({'; '.join(sorted(messages))})" if messages else ""

    def what_failed(self, verdict: Verdict) -> str:
        """Service, task, node, exit code and last log lines of the newest failures."""
        if not verdict.failures:
            return ""
        newest = sorted(verdict.failures, key=lambda f: f[1].timestamp)[-FAILED_TASKS_SHOWN:]
        stack = self.engine.stack(Release(None, ""))
        parts = []
        for service, task in newest:
            lines = stack.task_logs(task.id)
            shown = "".join(f"\n    {line}" for line in lines)
            health = container_health(self.api, task.container_id)
            parts.append(f"Service {service}, {task.describe(health)}"
                         + (f"; last log lines:{shown}" if shown else ""))
        return "\n".join(parts)

    def verified_back(self, previous: Running) -> str:
        """'<image> runs again on every replica' when Swarm's rollback is verified."""
        services = stack_services(self.api, self.project.name)
        self.services = services
        ok = previous.digest and all(
            name in services and services[name].digest == previous.digest
            and len(services[name].running) == services[name].expected
            and all(t.digest == previous.digest for t in services[name].running)
            for name in self.project.image_services)
        return f"{self.image_name}@{previous.digest} runs again on every replica." \
            if ok else ""

    def recover(self, target: Release, previous: Running, what: str) -> None:
        """deploykit's own way back: the last verified release, deployed the same way."""
        if not self.settings.rollback_on_failure or not previous.digest:
            why = ("rollback_on_failure is false" if previous.digest
                   else "there was no previous deployment")
            self.fail(target, previous, FAILED, f"{what}\nNot rolled back ({why}).")
        back = previous.release
        try:
            self.lock.verify()
        except LockError as lost:
            self.fail(target, previous, FAILED, f"{what}\n{lost.message} Not rolled back: "
                      "this deploy restores nothing under another deploy's lock.")
        self.actions.warning(f"{what.splitlines()[0]} Rolling back to "
                             f"{back.reference(self.image_name)}.",
                             title="Deploy failed, rolling back")
        reference = back.reference(self.image_name)
        verdict = self.deploy_stack(back, f"docker stack deploy {reference} (rollback)",
                                    labels_of_release(previous.labels, back.digest))
        if verdict.outcome == CANCELLED:
            self.fail(target, previous, FAILED,
                      f"{what}\n{self.cancelled(f'the rollback to {reference}')}")
        ok = verdict.outcome == DEPLOYED
        status = ROLLED_BACK if ok and self.report.action == DEPLOY else FAILED
        now = (f"{self.image_name}@{back.digest} runs again on every replica."
               if ok else f"The rollback did not converge either: {self.why(verdict)}")
        self.fail(target, previous, status, f"{what}\nRolled back: {now}")

    def fail(self, target: Release, previous: Running, status: str, message: str) -> NoReturn:
        self.report.history(self.project.name, target, previous, status)
        self.report.status(status)  # after the history line: see Report.finish
        self.actions.add_summary(self.summary(target, previous, status))
        title = "Deploy failed and was rolled back" if status == ROLLED_BACK else ""
        raise DeployError(message, status=status, title=title,
                          hint="`docker service ps --no-trunc <service>` and `docker service "
                          "logs <task>` on the manager show more.")

    def entry(self, target: Release, previous: Running, status: str) -> HistoryEntry:
        return self.report.entry(self.project.name, target, previous, status)

    def summary(self, target: Release, previous: Running, status: str) -> str:
        where = [["stack", self.project.name], ["orchestrator", "swarm"]]
        return (self.report.head(target, previous, status, where) + "\n\n#### Services\n\n"
                + service_table(self.services, self.project.image_services))


__all__ = ["SwarmEngine", "SwarmRollout", "release_labels"]
