"""The Swarm steps of mode=deploy and mode=rollback (``orchestrator: swarm``, docs/swarm.md).

:class:`SwarmOrchestrator` is :class:`deploykit.deploy.Deployment`'s orchestrator when the
input is ``swarm``: the phases (gate, resolve, validate, lock, record what runs, roll out)
and the collaborators are the deployment's. Its steps: the manager check (before the
registry), ``docker stack config``, the Swarm-wide lock, what the services run, then
(:class:`SwarmRollout`) ``docker stack deploy``, the watch of the rollout
(:class:`deploykit.swarm.RolloutWatch`), the smoke test, the result recorded. A deploy
Swarm rolled back ends ``rolled_back`` and exits 1; a paused or failing update, or one past
``health_timeout``, is replaced by the last verified release (``rollback_on_failure``) the
same way, by ``docker stack deploy``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

from deploykit.actions import markdown_table, markdown_text
from deploykit.cancel import Cancelled
from deploykit.compose import ComposeProject
from deploykit.deploy import DEPLOYED, FAILED, PLANNED, ROLLED_BACK, Deployment, Previous, Target
from deploykit.errors import ComposeError, DeployError, DeploykitError, GitHubError, LockError
from deploykit.health import RunningService
from deploykit.history import (
    DEPLOY,
    HISTORY_LABEL,
    RELEASE_LABEL,
    ROLLBACK,
    HistoryEntry,
    labels_of_release,
    next_release_labels,
    stack_from_labels,
)
from deploykit.lock import EngineLock
from deploykit.prune import prune_after_deploy
from deploykit.smoke import smoke_test
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
from deploykit.swarm import (
    ROLLED_BACK as SWARM_ROLLED_BACK,
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


class SwarmOrchestrator:
    """The Swarm steps of a deploy behind :class:`deploykit.deploy.Orchestrator`."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self._manager_checked = False

    def check_engine(self) -> None:
        """The engine must be a Swarm manager: said before the registry is asked."""
        if not self._manager_checked:
            check_manager(self.d.engine.api, self.d.env.get("DOCKER_HOST", ""))
            self._manager_checked = True

    def validate(self, target: Target) -> None:
        _, project = self.d.project()
        if project.one_shot_services:
            raise ComposeError(
                f"One-shot service(s) {', '.join(project.one_shot_services)} in "
                f"{project.file}: with orchestrator swarm, deploykit does not run one-shot "
                "services (Swarm restarts a task that exits).",
                hint="Run the migration as its own step, or use `orchestrator: compose`.")
        self.stack(target).config()  # the file as the manager will read it

    def stack(self, target: Target, labels: Mapping[str, str] | None = None) -> Stack:
        _, project = self.d.project()
        return Stack(self.d.docker, project.directory, project.file, project.name,
                     {**self.d.service_env, **self.d._image_env(target)},
                     {name: dict(labels) for name in project.image_services} if labels else {})

    def services(self) -> dict[str, Service]:
        self.check_engine()
        _, project = self.d.project()
        return stack_services(self.d.engine.api, project.name)

    def running(self) -> Previous:
        _, project = self.d.project()
        services = self.services()
        self.d.running_labels = release_labels(services, project)
        return Previous.of([RunningService(name, "", services[name].image,
                                           services[name].digest)
                            for name in project.image_services if name in services],
                           self.d.image_name)

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        """The labels of the stack's services: in the manager's store, whatever runner
        deploys."""
        _, project = self.d.project()
        return (stack_from_labels(release_labels(self.services(), project)),
                "the labels of the stack's services")

    def plan(self, target: Target) -> None:
        _, project = self.d.project()
        self.d.record()
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
        actions = self.d.actions
        actions.info(f"Plan: `docker stack deploy --with-registry-auth --prune` of stack "
                     f"{project.name} with {target.reference(self.d.image_name)}."
                     + (f"\n{table}" if actions.in_actions else ""))
        self.d._outputs(target)
        actions.set_output("status", PLANNED)
        actions.add_summary(f"### Plan: {self.d.action} {markdown_text(project.name)} to "
                            f"{markdown_text(self.d.settings.environment)} (Swarm)\n\n"
                            f"{table}")

    @contextmanager
    def lock(self, holder_container: str) -> Iterator[SwarmLock]:
        with swarm_lock(self.d.engine, self.d.holder(holder_container),
                        timeout=self.d.settings.lock_timeout, actions=self.d.actions) as lock:
            yield lock

    def roll_out(self, target: Target, previous: Previous, lock: EngineLock) -> None:
        _, project = self.d.project()
        SwarmRollout(self, self.d.engine.api, project, lock).run(target, previous)


class SwarmRollout:
    """Under the lock: stack deploy, watch, smoke, and the way back."""

    def __init__(self, orchestrator: SwarmOrchestrator, api: Any, project: ComposeProject,
                 lock: EngineLock) -> None:
        self.orchestrator, self.d = orchestrator, orchestrator.d
        self.api, self.project, self.lock = api, project, lock
        self.settings, self.actions = self.d.settings, self.d.actions
        self.services: dict[str, Service] = {}

    def run(self, target: Target, previous: Previous) -> None:
        self.d._outputs(target)
        record = self.d.start_github_deployment(target)
        try:
            self.roll_out(target, previous)
        except DeploykitError as failure:
            with suppress(GitHubError):
                self.d.finish_github_deployment(record, target, success=False,
                                                description=failure.message)
            raise
        self.d.finish_github_deployment(record, target, success=True,
                                        description=f"{target.label} is live")

    def deploy_stack(self, target: Target, title: str, labels: Mapping[str, str]) -> Verdict:
        """``docker stack deploy`` of ``target``, then the watch of its rollout."""
        before = {name: s.update_started for name, s in
                  stack_services(self.api, self.project.name).items()}
        with self.d.docker.logged_in(self.settings.registry, self.settings.registry_username,
                                     self.settings.registry_password), \
                self.actions.group(title):
            self.orchestrator.stack(target, labels).deploy(timeout=self.d.timeouts.up)
        with self.actions.group(f"Rollout of {target.reference(self.d.image_name)}"):
            watch = RolloutWatch(self.api, self.project.name, self.project.image_services,
                                 target.digest, before=before,
                                 timeout=self.settings.health_timeout,
                                 progress=self.actions.info)
            try:
                with self.d.cancel.interruptible():
                    verdict = watch.wait()
            except Cancelled:  # the update is the manager's: it goes on without the watch
                self.d.cancel.acknowledge()
                verdict = Verdict(CANCELLED, tuple(self.project.image_services))
            finally:
                self.services = watch.services
            self.actions.info(service_table(self.services, self.project.image_services))
        return verdict

    def cancelled(self, during: str) -> str:
        return (f"Cancelled ({self.d.cancel.signal_name}) during {during}: Swarm goes on with "
                "the update (or rolls it back by its update_config); deploykit did not "
                "verify it.")

    def roll_out(self, target: Target, previous: Previous) -> None:
        as_verified = DEPLOYED if self.d.action == DEPLOY else ROLLED_BACK
        verdict = self.deploy_stack(
            target, f"docker stack deploy {target.reference(self.d.image_name)}",
            next_release_labels(self.d.running_labels,
                                self.entry(target, previous, as_verified)))
        if verdict.outcome == CANCELLED:
            self.fail(target, previous, FAILED, self.cancelled("the rollout"))
        if verdict.outcome == SWARM_ROLLED_BACK:
            back = self.verified_back(previous)
            self.fail(target, previous, ROLLED_BACK if back else FAILED,
                      f"Swarm rolled the update of {', '.join(verdict.services)} back"
                      f"{self.update_message(verdict)}.\n{self.what_failed(verdict)}\n"
                      + (back or "The previous release is not verified running."))
        if verdict.outcome != DEPLOYED:
            self.recover(target, previous, self.why(verdict))
        try:
            if self.settings.smoke_url:
                with self.d.cancel.interruptible(), self.actions.group("Smoke test"):
                    smoke_test(self.settings.smoke_url, status=self.settings.smoke_status,
                               contains=self.settings.smoke_contains,
                               timeout=self.settings.smoke_timeout, actions=self.actions)
        except Cancelled as cancelled:
            self.d.cancel.acknowledge()
            self.fail(target, previous, FAILED, f"Cancelled ({cancelled.signal_name}) during "
                      f"the smoke test: {target.reference(self.d.image_name)} runs on every "
                      "replica but was not smoke-tested; nothing was rolled back.")
        except DeploykitError as failure:
            self.recover(target, previous, failure.message)
        if self.d.cancel.requested:
            self.d.cancel.acknowledge()
            self.actions.info(f"{self.d.cancel.signal_name} came after "
                              f"{target.reference(self.d.image_name)} was verified: the "
                              "deploy is complete, there is nothing to undo.")
        self.actions.info(f"Every replica of {', '.join(self.project.image_services)} runs "
                          f"{target.digest}.")
        status = ROLLED_BACK if self.d.action == ROLLBACK else DEPLOYED
        self.record_history(target, previous, status)  # before the output: see deploy.py
        self.actions.set_output("status", status)
        self.actions.add_summary(self.summary(target, previous, status))
        self.actions.notice(f"Stack {self.project.name} in {self.settings.environment} runs "
                            f"{target.reference(self.d.image_name)}.", title=status)
        if status == DEPLOYED:
            prune_after_deploy(self.d, self.project.name, target)

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
        stack = self.orchestrator.stack(Target(None, ""))
        parts = []
        for service, task in newest:
            lines = stack.task_logs(task.id)
            shown = "".join(f"\n    {line}" for line in lines)
            health = container_health(self.api, task.container_id)
            parts.append(f"Service {service}, {task.describe(health)}"
                         + (f"; last log lines:{shown}" if shown else ""))
        return "\n".join(parts)

    def verified_back(self, previous: Previous) -> str:
        """'<image> runs again on every replica' when Swarm's rollback is verified."""
        services = stack_services(self.api, self.project.name)
        self.services = services
        ok = previous.digest and all(
            name in services and services[name].digest == previous.digest
            and len(services[name].running) == services[name].expected
            and all(t.digest == previous.digest for t in services[name].running)
            for name in self.project.image_services)
        return f"{self.d.image_name}@{previous.digest} runs again on every replica." \
            if ok else ""

    def recover(self, target: Target, previous: Previous, what: str) -> None:
        """deploykit's own way back: the last verified release, deployed the same way."""
        if not self.settings.rollback_on_failure or not previous.digest:
            why = ("rollback_on_failure is false" if previous.digest
                   else "there was no previous deployment")
            self.fail(target, previous, FAILED, f"{what}\nNot rolled back ({why}).")
        back = Target(previous.tag, previous.digest)
        try:
            self.lock.verify()
        except LockError as lost:
            self.fail(target, previous, FAILED, f"{what}\n{lost.message} Not rolled back: "
                      "this deploy restores nothing under another deploy's lock.")
        self.actions.warning(f"{what.splitlines()[0]} Rolling back to "
                             f"{back.reference(self.d.image_name)}.",
                             title="Deploy failed, rolling back")
        reference = back.reference(self.d.image_name)
        verdict = self.deploy_stack(back, f"docker stack deploy {reference} (rollback)",
                                    labels_of_release(self.d.running_labels, back.digest))
        if verdict.outcome == CANCELLED:
            self.fail(target, previous, FAILED,
                      f"{what}\n{self.cancelled(f'the rollback to {reference}')}")
        ok = verdict.outcome == DEPLOYED
        status = ROLLED_BACK if ok and self.d.action == DEPLOY else FAILED
        now = (f"{self.d.image_name}@{back.digest} runs again on every replica."
               if ok else f"The rollback did not converge either: {self.why(verdict)}")
        self.fail(target, previous, status, f"{what}\nRolled back: {now}")

    def fail(self, target: Target, previous: Previous, status: str, message: str) -> NoReturn:
        self.record_history(target, previous, status)  # before the output: see deploy.py
        self.actions.set_output("status", status)
        self.actions.add_summary(self.summary(target, previous, status))
        title = "Deploy failed and was rolled back" if status == ROLLED_BACK else ""
        raise DeployError(message, status=status, title=title,
                          hint="`docker service ps --no-trunc <service>` and `docker service "
                          "logs <task>` on the manager show more.")

    def record_history(self, target: Target, previous: Previous, status: str) -> None:
        self.d.record_history(self.project.name, target, previous, status)

    def entry(self, target: Target, previous: Previous, status: str) -> HistoryEntry:
        return self.d.history_entry(self.project.name, target, previous, status)

    def summary(self, target: Target, previous: Previous, status: str) -> str:
        where = [["stack", self.project.name], ["orchestrator", "swarm"]]
        return (self.d.summary_head(target, previous, status, where) + "\n\n#### Services\n\n"
                + service_table(self.services, self.project.image_services))


__all__ = ["SwarmOrchestrator", "SwarmRollout", "release_labels"]
