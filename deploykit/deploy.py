"""mode=deploy and mode=rollback: gate, resolve, lock, pull + up, health, smoke, verify.

1. gate + resolve   2. validate compose   3. lock   4. record what runs now
5. login, pull, up  6. health verdict     7. smoke  8. verify digests
9. on failure after up: restore the recorded images   10. history   12. outputs
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.compose import Compose, ComposeProject, compose_for, image_environment
from deploykit.dockercli import DockerCLI
from deploykit.errors import DeployError, DeploykitError, GitHubError, InputError
from deploykit.github import (
    DeploymentRecord,
    GitHubRecorder,
    deployment_ref,
    environment_url_for,
    summary_links,
)
from deploykit.health import (
    HealthReport,
    HealthWatch,
    RunningService,
    docker_client,
    own_container,
    own_container_candidates,
    report_failures,
    restore_settle,
    running_services,
    workspace_mounts,
)
from deploykit.history import DEPLOY, ROLLBACK, History, HistoryEntry, now_iso, state_directory
from deploykit.lock import EngineLock, engine_lock, lock_ttl, this_holder
from deploykit.policy import DeployTarget, check_deploy_target
from deploykit.registry import RegistryClient, parse_reference
from deploykit.settings import Settings
from deploykit.smoke import smoke_test

DEPLOYED, ROLLED_BACK, FAILED, PLANNED = "deployed", "rolled_back", "failed", "planned"


@dataclass(frozen=True)
class Target:
    tag: str | None
    digest: str

    @property
    def label(self) -> str:
        return f"{self.tag}@{self.digest}" if self.tag else self.digest


@dataclass
class Previous:
    """What ran before the deploy: the rollback target (known without any history)."""

    services: list[RunningService] = field(default_factory=list)
    digest: str = ""
    tag: str | None = None

    @classmethod
    def of(cls, services: list[RunningService], image_name: str) -> Previous:
        digests = Counter(s.digest for s in services if s.digest)
        if not digests:
            return cls(services)
        digest = digests.most_common(1)[0][0]
        reference = next(s.reference for s in services if s.digest == digest)
        return cls(services, digest, _tag_of(reference, image_name))


def _tag_of(reference: str, image_name: str) -> str | None:
    try:
        parsed = parse_reference(reference)
    except InputError:
        return None
    return parsed.tag if parsed.name == image_name else None


# -- the handlers -----------------------------------------------------------------
def deploy(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit deploy`` and mode=deploy."""
    target = check_deploy_target(environment=settings.environment,
                                 image_tag=settings.image_tag,
                                 production_environments=settings.production_environments)
    Deployment(settings, actions, DEPLOY, env=getattr(args, "env", None)).run(target)


def rollback(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit rollback``: the previous successful release, or `image_tag`."""
    deployment = Deployment(settings, actions, ROLLBACK, env=getattr(args, "env", None))
    image_tag = settings.image_tag or deployment.previous_release_tag()
    target = check_deploy_target(environment=settings.environment, image_tag=image_tag,
                                 production_environments=settings.production_environments)
    deployment.run(target)


# -- one run ------------------------------------------------------------------------
class Deployment:
    def __init__(self, settings: Settings, actions: Actions, action: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings, self.actions, self.action = settings, actions, action
        self.started = time.monotonic()
        self.env = dict(os.environ if env is None else env)
        self.docker = DockerCLI(actions, self.env)
        self.github = GitHubRecorder.from_settings(settings, actions)
        self.image_name = settings.image_name
        self.history = History(state_directory(settings.state_dir))
        self.service_env = dict(settings.compose_env)
        for value in self.service_env.values():
            actions.mask(value)
        self._compose: Compose | None = None
        self._project: ComposeProject | None = None

    # step 2 (local only: `docker compose config` makes no connection)
    def project(self) -> tuple[Compose, ComposeProject]:
        if self._compose is None or self._project is None:
            compose = compose_for(self.settings, self.docker)
            project = compose.load()
            self._compose, self._project = replace(compose, name=project.name), project
        return self._compose, self._project

    def previous_release_tag(self) -> str:
        _, project = self.project()
        entry = self.history.previous_successful(self.settings.environment, project.name)
        if entry is None and (found := self._previous_from_github()):
            return found
        if entry is None:
            raise DeployError(
                f"No release before the current one of project {project.name!r} in "
                f"{self.settings.environment} in the history {self.history.path}.",
                hint="Pass the release to go back to: `image_tag: vX.Y.Z` (or a digest).",
                title="Nothing to roll back to")
        self.actions.info(f"Rolling back to {entry.tag or entry.digest} ({entry.digest}), "
                          f"deployed {entry.time}.")
        return f"{entry.tag}@{entry.digest}" if entry.tag else entry.digest

    def _previous_from_github(self) -> str:
        """Without local history: the newest successful GitHub deployment before the
        current one (from deploykit's payloads)."""
        if self.github is None:
            return ""
        _, project = self.project()
        client = docker_client(self.env)
        running = Previous.of(running_services(client.api, project.name, self.image_name,
                                               project.image_services), self.image_name)
        found = self.github.previous_successful_deployment(
            self.settings.environment, exclude_digest=running.digest)
        if found is None:
            return ""
        self.actions.info(f"No local history: rolling back to {found.tag or found.digest} "
                          f"({found.digest}) from GitHub deployment #{found.id}.")
        return f"{found.tag}@{found.digest}" if found.tag else found.digest

    def start_github_deployment(self, target: Target) -> DeploymentRecord | None:
        if self.github is None:
            return None
        return self.github.start_deployment(
            environment=self.settings.environment,
            ref=deployment_ref(self.settings, target.tag or ""), image=self.image_name,
            tag=target.tag or "", digest=target.digest,
            is_production=self.settings.is_production,
            description=f"deploykit {self.action}: {target.label}")

    def finish_github_deployment(
        self, record: DeploymentRecord | None, target: Target, *, success: bool,
        description: str,
    ) -> None:
        if self.github is None or record is None:
            return
        self.github.finish_deployment(record, success=success,
                                      environment_url=environment_url_for(self.settings),
                                      description=description)
        links = summary_links(deployment=record,
                              release=self.github.release_for(target.tag or ""))
        if links:
            self.actions.add_summary(links)

    def run(self, gate: DeployTarget) -> None:
        try:
            self._run(gate)
        except DeploykitError as exc:
            if "status" not in self.actions.outputs:  # also lock, registry, engine errors
                self.actions.set_output("status", exc.status if isinstance(exc, DeployError)
                                        else FAILED)
            raise

    def _run(self, gate: DeployTarget) -> None:
        with _terminate_as_interrupt():
            target = self.resolve(gate)  # step 1: the registry, after the gate
            compose, project = self.project()  # step 2
            compose.with_env(self.service_env, self._image_env(target)).config()
            client = docker_client(self.env)
            container_id, mounts = self._engine_context(client.api)
            if self.settings.dry_run:
                self.plan(client.api, project, target)
                return
            holder = this_holder(
                project.name, run_url=self.settings.github.run_url,
                actor=self.settings.github.actor, container=container_id,
                ttl=lock_ttl(self.settings.health_timeout, self.settings.health_settle,
                             self.settings.smoke_timeout))
            with engine_lock(client, holder, timeout=self.settings.lock_timeout,
                             actions=self.actions) as lock:  # step 3
                previous = self.record(client.api, project)  # step 4
                Rollout(self, client.api, compose, project=project, mounts=mounts,
                        lock=lock).run(target, previous)

    def resolve(self, gate: DeployTarget) -> Target:
        registry = RegistryClient(self.settings.registry, self.settings.image_repo,
                                  self.settings.registry_username,
                                  self.settings.registry_password)
        digest = registry.resolve(gate.digest or gate.tag or "")
        self.actions.info(f"{self.image_name}:{gate} is {digest}.")
        return Target(gate.tag, digest)

    def _image_env(self, target: Target) -> dict[str, str]:
        return image_environment(self.settings.registry, self.settings.image_repo,
                                 target.tag, target.digest)

    def _engine_context(self, api: Any) -> tuple[str, dict[str, str]]:
        """The ID of the container we run in (on this engine), and its bind mounts when
        it mounts the workspace (the action container); empty on a plain host."""
        workspace = self.settings.github.workspace
        container = own_container(api, own_container_candidates(
            hostname=os.environ.get("HOSTNAME", "")))
        mounts = workspace_mounts(container, workspace)
        if mounts:
            self.actions.info(f"Running in a container: bind mounts under {workspace} are "
                              f"deployed with their host paths.")
        return (str(container.get("Id", "")) if container else ""), mounts

    def record(self, api: Any, project: ComposeProject) -> Previous:
        previous = Previous.of(running_services(api, project.name, self.image_name,
                                                project.image_services), self.image_name)
        if previous.digest:
            self.actions.set_output("previous_image", f"{self.image_name}@{previous.digest}")
            self.actions.info(f"Running now: {self.image_name}@{previous.digest}.")
        elif previous.services:
            self.actions.set_output("previous_image", previous.services[0].reference)
        else:
            self.actions.set_output("previous_image", "")
            self.actions.info(f"Nothing of project {project.name!r} runs yet.")
        return previous

    def plan(self, api: Any, project: ComposeProject, target: Target) -> None:
        previous = self.record(api, project)
        running = {s.service: s for s in previous.services}
        rows = []
        for service in project.image_services:
            current = running.get(service)
            if current is None:
                change = "create"
            elif current.digest == target.digest and not self.settings.force_redeploy:
                change = "unchanged"
            else:
                change = "recreate"
            rows.append([service, current.digest if current else "-", target.digest, change])
        table = markdown_table(["service", "current digest", "target digest", "change"], rows)
        force = " --force-recreate" if self.settings.force_redeploy else ""
        self.actions.info(f"Plan: pull {self.image_name}:{target.label}, then `docker compose "
                          f"up -d --no-build --remove-orphans{force}`."
                          + (f"\n{table}" if self.actions.in_actions else ""))
        self._outputs(target)
        self.actions.set_output("status", PLANNED)
        self.actions.add_summary(f"### Plan: {self.action} {markdown_text(project.name)} to "
                                 f"{markdown_text(self.settings.environment)}\n\n{table}")

    def _outputs(self, target: Target) -> None:
        self.actions.set_output("digest", target.digest)
        self.actions.set_output("image", f"{self.image_name}@{target.digest}")

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)


class Rollout:
    """Steps 5-10 under the lock."""

    def __init__(self, deployment: Deployment, api: Any, compose: Compose, *,
                 project: ComposeProject, mounts: dict[str, str], lock: EngineLock) -> None:
        self.d, self.api, self.compose, self.project = deployment, api, compose, project
        self.mounts, self.lock = mounts, lock
        self.settings, self.actions = deployment.settings, deployment.actions
        self.health_reports: list[tuple[str, HealthReport]] = []

    def run(self, target: Target, previous: Previous) -> None:
        self.d._outputs(target)
        record = self.d.start_github_deployment(target)
        try:
            self._rollout(target, previous)
        except DeploykitError as failure:
            # The deploy's own error stays the one reported, even if GitHub also fails.
            with suppress(GitHubError):
                self.d.finish_github_deployment(record, target, success=False,
                                                description=failure.message)
            raise
        self.d.finish_github_deployment(record, target, success=True,
                                        description=f"{target.label} is live")

    def _rollout(self, target: Target, previous: Previous) -> None:
        with self.d.docker.logged_in(self.settings.registry, self.settings.registry_username,
                                     self.settings.registry_password):
            compose = self.compose.with_env(self.d.service_env, self.d._image_env(target))
            with compose.for_engine(self.mounts) as engine_compose:
                self.pull(engine_compose, target, previous)
                try:
                    self.lock.verify()
                    self.up_and_check(engine_compose, target)
                except DeploykitError as failure:
                    self.recover(target, previous, failure)
        status = ROLLED_BACK if self.d.action == ROLLBACK else DEPLOYED
        self.finish(target, previous, status)

    def pull(self, compose: Compose, target: Target, previous: Previous) -> None:
        try:
            with self.actions.group(f"Pull {self.d.image_name}:{target.label}"):
                compose.pull()
        except DeploykitError as failure:  # nothing on the host changed yet
            self.record_history(target, previous, FAILED)
            raise DeployError(f"Pull failed, nothing was changed: {failure.message}",
                              hint=failure.hint or "Check the registry credentials and "
                              "that the image exists for this host's platform.") from failure

    def up_and_check(self, compose: Compose, target: Target) -> None:
        with self.actions.group("docker compose up"):
            compose.up(force_recreate=self.settings.force_redeploy)
        health = self.check_health("Health of the new containers")
        if not health.ok:
            raise DeployError(f"Health check failed: {health.reasons()}.")
        if self.settings.smoke_url:
            with self.actions.group("Smoke test"):
                smoke_test(self.settings.smoke_url, status=self.settings.smoke_status,
                           contains=self.settings.smoke_contains,
                           timeout=self.settings.smoke_timeout, actions=self.actions)
        self.verify(target)

    def check_health(self, title: str, *, restored: bool = False) -> HealthReport:
        settle = self.settings.health_settle
        with self.actions.group(title):
            report = HealthWatch(self.api, self.project.name,
                                 timeout=self.settings.health_timeout,
                                 settle=restore_settle(settle) if restored else settle,
                                 progress=self.actions.info).wait()
            self.actions.info(report.table())
        self.health_reports.append((title, report))
        if not report.ok:
            report_failures(self.api, report, self.actions)
        return report

    def verify(self, target: Target) -> None:
        running = running_services(self.api, self.project.name, self.d.image_name,
                                   self.project.image_services)
        wrong = [s for s in running if s.digest != target.digest]
        missing = set(self.project.image_services) - {s.service for s in running}
        if wrong or missing or not running:
            shown = ", ".join(f"{s.service} runs {s.digest or s.reference}" for s in wrong)
            shown += "".join(f", {name} has no container" for name in sorted(missing))
            raise DeployError(f"Digest check failed: expected {target.digest}; "
                              f"{shown.strip(', ')}.")
        self.actions.info(f"Every service of {self.d.image_name} runs {target.digest}.")

    def recover(self, target: Target, previous: Previous, failure: DeploykitError) -> None:
        """Step 9: bring back what ran before (it is on the host: no pull)."""
        what = failure.message.rstrip(". ") + "."
        if not self.settings.rollback_on_failure or not previous.digest:
            self.record_history(target, previous, FAILED)
            self.actions.add_summary(self.summary(target, previous, FAILED))
            why = ("rollback_on_failure is false" if previous.digest
                   else "there was no previous deployment")
            raise DeployError(f"{what} Not rolled back ({why}): the failing containers are "
                              "left for inspection.", hint=_INSPECT_HINT, status=FAILED) \
                from failure
        back = Target(previous.tag, previous.digest)
        self.actions.warning(f"{what} Rolling back to {self.d.image_name}@{back.digest}.",
                             title="Deploy failed, rolling back")
        compose = self.compose.with_env(self.d.service_env, self.d._image_env(back))
        with compose.for_engine(self.mounts) as engine_compose, \
                self.actions.group(f"Restore {self.d.image_name}:{back.label}"):
            engine_compose.up()
        health = self.check_health("Health after the rollback", restored=True)
        status = FAILED if self.d.action == ROLLBACK or not health.ok else ROLLED_BACK
        self.record_history(target, previous, status)
        self.actions.add_summary(self.summary(target, previous, status))
        now_runs = (f"{self.d.image_name}@{back.digest} runs again and is healthy"
                    if health.ok else
                    f"{self.d.image_name}@{back.digest} was restored but is not healthy either: "
                    f"{health.reasons()}")
        raise DeployError(f"{what} Rolled back: {now_runs}.", hint=_INSPECT_HINT,
                          status=status, title="Deploy failed and was rolled back") from failure

    def finish(self, target: Target, previous: Previous, status: str) -> None:
        self.actions.set_output("status", status)
        self.record_history(target, previous, status)
        self.actions.add_summary(self.summary(target, previous, status))
        self.actions.notice(f"{self.project.name} in {self.settings.environment} runs "
                            f"{self.d.image_name}:{target.label}.", title=status)

    def record_history(self, target: Target, previous: Previous, status: str) -> None:
        rolled_back_from = previous.digest if self.d.action == ROLLBACK else ""
        self.d.history.append(HistoryEntry(
            time=now_iso(), action=self.d.action, environment=self.settings.environment,
            project=self.project.name, tag=target.tag or "", digest=target.digest,
            previous_digest=previous.digest, status=status,
            duration_seconds=self.d.elapsed(), run_url=self.settings.github.run_url,
            actor=self.settings.github.actor, image=f"{self.d.image_name}@{target.digest}",
            rolled_back_from=rolled_back_from))

    def summary(self, target: Target, previous: Previous, status: str) -> str:
        rows = [["status", status], ["environment", self.settings.environment],
                ["project", self.project.name],
                ["image", f"{self.d.image_name}:{target.label}"],
                ["previous image", f"{self.d.image_name}@{previous.digest}"
                 if previous.digest else "-"],
                ["duration", f"{self.d.elapsed():.1f} s"]]
        text = f"### {self.d.action.capitalize()}: {status}\n\n" + markdown_table(
            ["", "value"], rows)
        for title, report in self.health_reports:
            text += f"\n\n#### {title}\n\n" + report.table()
        return text


_INSPECT_HINT = ("See the log group with the failing container's logs and health log; "
                 "`docker compose ps` and `docker logs <container>` on the host show more.")


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled workflow) unwinds like Ctrl-C, so the lock is released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
