"""mode=deploy and mode=rollback: gate, resolve, lock, pull + up, health, smoke, verify.

:meth:`Deployment._run` reads as the phases: the engine, resolve, validate, lock, record
what runs, roll out (verify and record the result inside). The orchestrator-specific steps
sit behind :class:`Orchestrator`: :class:`ComposeOrchestrator` here (pull, up, health,
restore: :class:`Rollout`) and :class:`deploykit.swarm_deploy.SwarmOrchestrator`
(``orchestrator: swarm``: stack deploy, the update watch, the rollback). The collaborators
(registry, engine client, docker CLI, GitHub recorder, history) are built once by
:class:`Deployment` and reached through it.

Compose: 1. gate + resolve   2. validate compose   3. lock   4. record what runs now
5. login, pull, up  6. health verdict     7. smoke  8. verify digests
9. on failure after up: restore the last verified release   10. history   12. outputs

SIGINT/SIGTERM (a cancelled workflow) are handled by :mod:`deploykit.cancel`: before
``up`` nothing changed and the deploy stops; during ``up`` the in-flight command may
finish (bounded); after it, an unverified release is replaced by the last verified one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, runtime_checkable

from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.cancel import CancelGuard, Cancelled
from deploykit.compose import (
    Compose,
    ComposeProject,
    ProjectLoad,
    image_environment,
    start_project_load,
)
from deploykit.docker_sdk import docker
from deploykit.dockercli import DockerCLI
from deploykit.errors import (
    DeployError,
    DeploykitError,
    DockerError,
    GitHubError,
    InputError,
    LockError,
    OneShotError,
)
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
    image_present,
    own_container,
    own_container_candidates,
    remove_leftovers,
    report_failures,
    restore_settle,
    running_services,
    workspace_mounts,
)
from deploykit.history import (
    DEPLOY,
    ROLLBACK,
    History,
    HistoryEntry,
    checked_labels,
    engine_stack,
    labels_of_release,
    mark_verified,
    next_release_labels,
    now_iso,
    stack_from_labels,
    state_directory,
)
from deploykit.lock import (
    EngineLock,
    Holder,
    Timeouts,
    create_config_only_network,
    engine_lock,
    this_holder,
)
from deploykit.policy import DeployTarget
from deploykit.provenance import check_provenance
from deploykit.prune import prune_after_deploy
from deploykit.reference import parse_reference
from deploykit.registry import RegistryClient
from deploykit.settings import Settings
from deploykit.smoke import smoke_test
from deploykit.status import Status

DEPLOYED, ROLLED_BACK, FAILED, PLANNED = (Status.DEPLOYED, Status.ROLLED_BACK, Status.FAILED,
                                         Status.PLANNED)
# A cancelled `docker compose up` may run on this long after the signal, then it is
# stopped: with the restore that follows, deploykit exits within GitHub's 7.5 s.
UP_GRACE = 3.5


def image_reference(image_name: str, tag: str | None, digest: str) -> str:
    """``registry/repo:tag@sha256:...``, or ``registry/repo@sha256:...`` with no tag."""
    return f"{image_name}:{tag}@{digest}" if tag else f"{image_name}@{digest}"


@dataclass(frozen=True)
class Target:
    tag: str | None
    digest: str

    @property
    def label(self) -> str:
        return f"{self.tag}@{self.digest}" if self.tag else self.digest

    def reference(self, image_name: str) -> str:
        return image_reference(image_name, self.tag, self.digest)


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

    @property
    def unverified(self) -> str:
        """The digest that runs when it is not the verified release ('' otherwise)."""
        running = Counter(s.digest for s in self.services if s.digest)
        if not running:
            return ""
        digest = running.most_common(1)[0][0]
        return digest if digest != self.digest else ""


def _tag_of(reference: str, image_name: str) -> str | None:
    try:
        parsed = parse_reference(reference)
    except InputError:
        return None
    return parsed.tag if parsed.name == image_name else None


# -- the orchestrator-specific steps -------------------------------------------------
@runtime_checkable
class Orchestrator(Protocol):
    """What differs between compose and Swarm; :class:`Deployment` runs the phases."""

    def check_engine(self) -> None:
        """Before the registry: can this engine take the deploy?"""

    def validate(self, target: Target) -> None:
        """The file, as the orchestrator will read it with ``target``'s image variables."""

    def running(self) -> Previous:
        """What runs now (its engine-side release labels go to the deployment)."""

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        """The release stack the engine keeps (oldest first), and where it was read."""

    def plan(self, target: Target) -> None:
        """A dry run: what would change, per service."""

    def lock(self, holder_container: str) -> AbstractContextManager[EngineLock]:
        """The project's lock, held while the body runs."""

    def roll_out(self, target: Target, previous: Previous, lock: EngineLock) -> None:
        """Roll out, verify, restore on failure and record the result (history, summary,
        the status output); raises :class:`DeployError` with the status on failure."""


def orchestrator_for(deployment: Deployment) -> Orchestrator:
    if deployment.settings.orchestrator == "swarm":
        from deploykit.swarm_deploy import SwarmOrchestrator  # noqa: PLC0415 (import cycle)

        return SwarmOrchestrator(deployment)
    return ComposeOrchestrator(deployment)


# -- the handlers -----------------------------------------------------------------
# -- one run ------------------------------------------------------------------------
class Deployment:
    def __init__(self, settings: Settings, actions: Actions, action: str,
                 env: Mapping[str, str] | None = None, *, docker: DockerCLI | None = None,
                 project: ProjectLoad | None = None) -> None:
        """``docker`` and ``project`` (a compose config already running: see
        :mod:`deploykit.deploy_command`) are made here when not given."""
        self.settings, self.actions, self.action = settings, actions, action
        self.started = time.monotonic()
        self.env = dict(os.environ if env is None else env)
        self.docker = docker or DockerCLI(actions, self.env)
        self._project_load = project
        self.github = GitHubRecorder.from_settings(settings, actions)
        self.image_name = settings.image_name
        self.history = History(state_directory(settings.state_dir), warn=lambda text:
                               actions.warning(text, title="Deploy history"))
        self.timeouts = Timeouts.of(settings.health_timeout, settings.health_settle,
                                    settings.smoke_timeout)
        self.cancel = CancelGuard()
        self.service_env = dict(settings.compose_env)
        actions.mask_env(settings.compose_env)  # what can be a secret; a port stays readable
        self._compose: Compose | None = None
        self._project: ComposeProject | None = None
        self._engine: Any = None
        self._own_container: dict[str, Any] | None = None
        self._own_container_known = False
        self.running_labels: dict[str, str] = {}  # the engine history of what runs now
        self.orchestrator = orchestrator_for(self)

    @property
    def engine(self) -> Any:
        """The Docker SDK client of the target engine, made once (on first use)."""
        if self._engine is None:
            self._engine = docker_client(self.env)
        return self._engine

    # step 2 (local only: `docker compose config` makes no connection)
    def project(self) -> tuple[Compose, ComposeProject]:
        if self._compose is None or self._project is None:
            loading = self._project_load or start_project_load(self.settings, self.docker)
            self._compose, self._project = loading.result()
        return self._compose, self._project

    def previous_release_tag(self) -> str:
        _, project = self.project()
        entry, source = self._previous_release(project)
        if entry is None and (found := self._previous_from_github()):
            return found
        if entry is None:
            raise DeployError(
                f"No release before the current one of project {project.name!r} in "
                f"{self.settings.environment} on the engine (container labels) or in the "
                f"history {self.history.path}.",
                hint="Pass the release to go back to: `image_tag: vX.Y.Z` (or a digest).",
                title="Nothing to roll back to")
        # The labels' and the file's values are text from outside: never a command.
        self.actions.untrusted("", f"Rolling back to {entry.tag or entry.digest} "
                               f"({entry.digest}), deployed {entry.time} (from {source}).")
        return f"{entry.tag}@{entry.digest}" if entry.tag else entry.digest

    def _previous_release(self, project: ComposeProject) -> tuple[HistoryEntry | None, str]:
        """The release below the current one: from the engine (release labels, which
        outlive any runner), else from the history file. Only verified releases are in
        the engine's stack: when what runs is not its top (a failed deploy left it), the
        top is the target."""
        stack, source = self.orchestrator.engine_history()
        if stack and stack[-1].digest != self.orchestrator.running().digest:
            return stack[-1], source
        if len(stack) >= 2:
            return stack[-2], source
        entry = self.history.previous_successful(self.settings.environment, project.name)
        return entry, f"the history {self.history.path}"

    def _previous_from_github(self) -> str:
        """Without local history: the newest successful GitHub deployment before the
        current one (from deploykit's payloads)."""
        if self.github is None:
            return ""
        running = self.orchestrator.running()
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
            with self.cancel.installed(), self.cancel.interruptible():
                self._run(gate)
        except Cancelled as cancelled:  # before the lock: nothing was changed
            self.actions.set_output("status", FAILED)
            raise DeployError(f"Cancelled ({cancelled.signal_name}) before anything was "
                              "changed.", title="Deploy cancelled", status=FAILED) from None
        except DeploykitError as exc:
            if "status" not in self.actions.outputs:  # also lock, registry, engine errors
                self.actions.set_output("status", exc.status if isinstance(exc, DeployError)
                                        else FAILED)
            raise

    def _run(self, gate: DeployTarget) -> None:
        orchestrator = self.orchestrator
        orchestrator.check_engine()
        target = self.resolve(gate)  # the registry, after the gate
        check_provenance(self.settings, self.actions, gate.tag, target.digest)  # issue 25
        orchestrator.validate(target)
        if self.settings.dry_run:
            orchestrator.plan(target)
            return
        self.history.check_writable()  # before anything changes, not after the release
        with orchestrator.lock(self.container_id) as lock:
            previous = self.record()  # what runs now: the rollback target
            with self.cancel.shielded():
                orchestrator.roll_out(target, previous, lock)

    def holder(self, container: str) -> Holder:
        _, project = self.project()
        return this_holder(project.name, run_url=self.settings.github.run_url,
                           actor=self.settings.github.actor, container=container,
                           ttl=self.timeouts.ttl)

    def resolve(self, gate: DeployTarget) -> Target:
        registry = RegistryClient(self.settings.registry, self.settings.image_repo,
                                  self.settings.registry_username,
                                  self.settings.registry_password, on_retry=self.actions.info)
        digest = registry.resolve(gate.digest or gate.tag or "")
        target = Target(gate.tag or self._tag_naming(digest), digest)
        if gate.tag and not gate.digest:
            self.actions.info(f"{self.image_name}:{gate.tag} is {digest}.")
        else:
            named = " (the tag that named it in the history)" if target.tag != gate.tag else ""
            self.actions.info(f"Deploying {target.reference(self.image_name)}{named}.")
        return target

    def _tag_naming(self, digest: str) -> str | None:
        """The tag that named ``digest`` when it was last deployed (from the history)."""
        for entry in reversed(self.history.entries()):
            if entry.digest == digest and entry.tag and entry.image in (
                    "", f"{self.image_name}@{digest}"):
                return entry.tag
        return None

    def _image_env(self, target: Target) -> dict[str, str]:
        return image_environment(self.settings.registry, self.settings.image_repo,
                                 target.tag, target.digest)

    @property
    def own_container(self) -> dict[str, Any] | None:
        """The container we run in, on this engine (the action container), or None."""
        if not self._own_container_known:
            self._own_container = own_container(self.engine.api, own_container_candidates(
                hostname=os.environ.get("HOSTNAME", "")))
            self._own_container_known = True
        return self._own_container

    @property
    def container_id(self) -> str:
        container = self.own_container
        return str(container.get("Id", "")) if container else ""

    def record(self) -> Previous:
        _, project = self.project()
        previous = self.rollback_target(self.orchestrator.running(), project)
        if previous.digest:
            self.actions.set_output("previous_image", f"{self.image_name}@{previous.digest}")
            if not previous.unverified:
                self.actions.info(f"Running now: {self.image_name}@{previous.digest}.")
        elif previous.services:
            self.actions.set_output("previous_image", previous.services[0].reference)
        else:
            self.actions.set_output("previous_image", "")
            self.actions.info(f"Nothing of project {project.name!r} runs yet.")
        return previous

    def rollback_target(self, running: Previous, project: ComposeProject) -> Previous:
        """The last release verified healthy, when the history knows it: containers a
        failed deploy left (``rollback_on_failure: false``) are never the target."""
        if not running.digest:
            return running
        stack = self.history.releases(self.settings.environment, project.name)
        if not stack:  # a fresh runner: the releases the engine knows verified
            stack = stack_from_labels(self.running_labels)
        if not stack or stack[-1].digest == running.digest:
            return running
        verified = stack[-1]
        self.actions.warning(
            f"Running now: {self.image_name}@{running.digest}, which no deploy verified "
            f"(a failed deploy left it). The last verified release, "
            f"{image_reference(self.image_name, verified.tag or None, verified.digest)} "
            f"(deployed {verified.time}), is the rollback target.",
            title="Unverified release running")
        return Previous(running.services, verified.digest, verified.tag or None)

    def _outputs(self, target: Target) -> None:
        self.actions.set_output("digest", target.digest)
        self.actions.set_output("image", f"{self.image_name}@{target.digest}")

    def record_history(self, project: str, target: Target, previous: Previous,
                       status: str) -> None:
        """One line; a failure to write it is a warning: the status stays the truth."""
        try:
            self.history.append(self.history_entry(project, target, previous, status))
        except DeploykitError as exc:
            self.actions.warning(f"{exc.message} The {self.action} is still `{status}`; only "
                                 "its history line is missing.", title=exc.title)

    def history_entry(self, project: str, target: Target, previous: Previous,
                      status: str) -> HistoryEntry:
        return HistoryEntry(
            time=now_iso(), action=self.action, environment=self.settings.environment,
            project=project, tag=target.tag or "", digest=target.digest,
            previous_digest=previous.digest, status=status,
            duration_seconds=self.elapsed(), run_url=self.settings.github.run_url,
            actor=self.settings.github.actor, image=f"{self.image_name}@{target.digest}",
            rolled_back_from=previous.digest if self.action == ROLLBACK else "")

    def summary_head(self, target: Target, previous: Previous, status: str,
                     where: list[list[str]]) -> str:
        """The job summary's heading and main table; ``where`` names the project (or the
        stack and orchestrator) between the environment and the image."""
        rows = [["status", status], ["environment", self.settings.environment], *where,
                ["image", target.reference(self.image_name)],
                ["previous image", f"{self.image_name}@{previous.digest}"
                 if previous.digest else "-"],
                ["duration", f"{self.elapsed():.1f} s"]]
        return f"### {self.action.capitalize()}: {status}\n\n" + markdown_table(
            ["", "value"], rows)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)


class ComposeOrchestrator:
    """``docker compose`` on one engine: pull, up, health, restore (:class:`Rollout`)."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.mounts: dict[str, str] = {}

    def check_engine(self) -> None:
        """Nothing to check before the registry: compose talks to any engine."""

    def validate(self, target: Target) -> None:
        self.d.project()  # local only: `docker compose config` connects nowhere
        self.mounts = self._mounts()

    def _mounts(self) -> dict[str, str]:
        """The action container's bind mounts of the workspace (empty on a plain host)."""
        workspace = self.d.settings.github.workspace
        mounts = workspace_mounts(self.d.own_container, workspace)
        if mounts:
            self.d.actions.info(f"Running in a container: bind mounts under {workspace} are "
                                f"deployed with their host paths.")
        return mounts

    def running(self) -> Previous:
        _, project = self.d.project()
        api = self.d.engine.api
        self.d.running_labels = checked_labels(api, project.name)
        return Previous.of(running_services(api, project.name, self.d.image_name,
                                            project.image_services), self.d.image_name)

    def engine_history(self) -> tuple[list[HistoryEntry], str]:
        _, project = self.d.project()
        return (engine_stack(self.d.engine.api, project.name),
                "the labels of the running containers")

    @contextmanager
    def lock(self, holder_container: str) -> Iterator[EngineLock]:
        with engine_lock(self.d.engine, self.d.holder(holder_container),
                         timeout=self.d.settings.lock_timeout, actions=self.d.actions) as lock:
            yield lock

    def roll_out(self, target: Target, previous: Previous, lock: EngineLock) -> None:
        compose, project = self.d.project()
        Rollout(self.d, self.d.engine.api, compose, project=project, mounts=self.mounts,
                lock=lock).run(target, previous)

    def plan(self, target: Target) -> None:
        _, project = self.d.project()
        previous = self.d.record()
        running = {s.service: s for s in previous.services}
        rows = []
        for service in project.image_services:
            current = running.get(service)
            if current is None:
                change = "create"
            elif current.digest == target.digest and not self.d.settings.force_redeploy:
                change = "unchanged"
            else:
                change = "recreate"
            rows.append([service, current.digest if current else "-", target.digest, change])
        table = markdown_table(["service", "current digest", "target digest", "change"], rows)
        force = " --force-recreate" if self.d.settings.force_redeploy else ""
        self.d.actions.info(f"Plan: pull {target.reference(self.d.image_name)}, then "
                            f"`docker compose up -d --no-build --remove-orphans{force}`."
                            + (f"\n{table}" if self.d.actions.in_actions else ""))
        self.d._outputs(target)
        self.d.actions.set_output("status", PLANNED)
        self.d.actions.add_summary(f"### Plan: {self.d.action} {markdown_text(project.name)} to "
                                 f"{markdown_text(self.d.settings.environment)}\n\n{table}")


class Rollout:
    """Steps 5-10 under the lock (shielded from signals except where noted)."""

    def __init__(self, deployment: Deployment, api: Any, compose: Compose, *,
                 project: ComposeProject, mounts: dict[str, str], lock: EngineLock) -> None:
        self.d, self.api, self.compose, self.project = deployment, api, compose, project
        self.mounts, self.lock = mounts, lock
        self.settings, self.actions = deployment.settings, deployment.actions
        self.cancel, self.timeouts = deployment.cancel, deployment.timeouts
        self.health_reports: list[tuple[str, HealthReport]] = []
        self.one_shots_done: tuple[str, ...] = ()
        self.phase = "the login"
        self.recorded = False  # this run's history line is written

    def run(self, target: Target, previous: Previous) -> None:
        self.d._outputs(target)
        record = self.d.start_github_deployment(target)
        try:
            self._rollout(target, previous)
        except (DeploykitError, Cancelled) as failure:
            if not self.recorded:  # e.g. the login failed: every ending has its line
                self.record_history(target, previous, FAILED)
            # The deploy's own error stays the one reported, even if GitHub also fails.
            with suppress(GitHubError):
                self.d.finish_github_deployment(
                    record, target, success=False, description=failure.message
                    if isinstance(failure, DeploykitError) else
                    f"Cancelled ({failure.signal_name}) before anything was changed")
            raise
        self.d.finish_github_deployment(record, target, success=True,
                                        description=f"{target.label} is live")

    def _rollout(self, target: Target, previous: Previous) -> None:
        with self.logged_in():
            compose = self.compose.with_env(self.d.service_env, self.d._image_env(target))
            compose = compose.with_labels(self.project.image_services, next_release_labels(
                self.d.running_labels, self.entry(target, previous, _AS_VERIFIED[self.d.action])))
            with compose.for_engine(self.mounts) as engine_compose:
                self.pull(engine_compose, target, previous)
                # Outside the handler below: a deploy that lost its lock touches nothing.
                self.verify_lock(target, previous, "before `docker compose up`")
                try:
                    self.up_and_check(engine_compose, target)
                except Cancelled as cancelled:
                    self.undo_cancelled(target, previous, cancelled)
                except DeploykitError as failure:
                    self.recover(target, previous, failure)
        status = ROLLED_BACK if self.d.action == ROLLBACK else DEPLOYED
        self.finish(target, previous, status)

    @contextmanager
    def logged_in(self) -> Iterator[None]:
        with ExitStack() as stack:
            with self.cancel.interruptible():  # nothing on the host changes in a login
                stack.enter_context(self.d.docker.logged_in(
                    self.settings.registry, self.settings.registry_username,
                    self.settings.registry_password))
            yield

    def pull(self, compose: Compose, target: Target, previous: Previous) -> None:
        self.phase = "the pull"
        try:
            with self.cancel.interruptible(), \
                    self.actions.group(f"Pull {target.reference(self.d.image_name)}"):
                self.pull_what_is_missing(compose, target)
        except Cancelled as cancelled:  # the pull is stopped; nothing on the host changed
            self.record_history(target, previous, FAILED)
            raise DeployError(f"Cancelled ({cancelled.signal_name}) during the pull: nothing "
                              f"was changed{self._still_runs(previous)}.",
                              title="Deploy cancelled", status=FAILED) from None
        except DeploykitError as failure:  # nothing on the host changed yet
            self.record_history(target, previous, FAILED)
            raise DeployError(f"Pull failed, nothing was changed: {failure.message}",
                              hint=failure.hint or "Check the registry credentials and "
                              "that the image exists for this host's platform.") from failure

    def pull_what_is_missing(self, compose: Compose, target: Target) -> None:
        """A digest names one content: when the engine has it already (a redeploy, a
        rollback), the services of the deployed image have nothing to pull, and only the
        other services are (as `docker compose pull` would: their tags may have moved)."""
        reference = f"{self.d.image_name}@{target.digest}"
        if not image_present(self.api, reference):
            compose.pull(timeout=self.timeouts.pull)
            return
        others = self.project.other_services
        self.actions.info(f"{reference} is on this engine already: "
                          + (f"pulling only {', '.join(others)}." if others else
                             "nothing to pull."))
        if others:
            compose.pull(others, timeout=self.timeouts.pull)

    def _still_runs(self, previous: Previous) -> str:
        return f"; {self.d.image_name}@{previous.digest} still runs" if previous.digest else ""

    def verify_lock(self, target: Target, previous: Previous, when: str) -> None:
        try:
            self.lock.verify()
        except LockError as lost:
            self.record_history(target, previous, FAILED)
            raise LockError(f"{lost.message} Stopped {when}: this deploy changes nothing and "
                            "restores nothing under another deploy's lock.",
                            hint=lost.hint) from lost

    def up_and_check(self, compose: Compose, target: Target) -> None:
        self.phase = "`docker compose up`"
        with self.actions.group("docker compose up"):
            try:  # a signal lets the in-flight `up` finish, for UP_GRACE seconds at most
                self.one_shots_done = compose.up_release(
                    self.project, force_recreate=self.settings.force_redeploy,
                    one_shot_timeout=self.settings.health_timeout,
                    timeout=self.timeouts.up,
                    give_up_at=lambda: self.cancel.deadline(UP_GRACE))
            except DockerError:
                self.cancel.raise_if_requested()  # it was stopped because of the signal
                raise
        with self.cancel.interruptible():  # nothing changes from here on: stop at once
            self.phase = "the health wait"
            health = self.check_health("Health of the new containers")
            if not health.ok:
                raise DeployError(f"Health check failed: {health.reasons()}.")
            if self.settings.smoke_url:
                self.phase = "the smoke test"
                with self.actions.group("Smoke test"):
                    smoke_test(self.settings.smoke_url, status=self.settings.smoke_status,
                               contains=self.settings.smoke_contains,
                               timeout=self.settings.smoke_timeout, actions=self.actions)
            self.phase = "the digest check"
            self.verify(target)

    def check_health(self, title: str, *, restored: bool = False,
                     timeout: float | None = None) -> HealthReport:
        settle = self.settings.health_settle
        with self.actions.group(title):
            report = HealthWatch(self.api, self.project.name,
                                 timeout=timeout or self.settings.health_timeout,
                                 settle=restore_settle(settle) if restored else settle,
                                 progress=self.actions.info,
                                 one_shots=self.project.one_shot_services).wait()
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

    def restore(self, target: Target, previous: Previous, status: str, *,
                health_timeout: float | None = None) -> tuple[Target, HealthReport | None]:
        """Bring the last verified release back (normally still on the host: no pull).
        Its labels record the deploy being undone (``target``, ending ``status``). The
        health report is None when a signal cut its wait short; a restore that cannot
        run raises :class:`RestoreFailed`."""
        back = Target(previous.tag, previous.digest)
        compose = self.compose.with_env(self.d.service_env, self.d._image_env(back)) \
            .with_labels(self.project.image_services,
                         labels_of_release(self.d.running_labels, previous.digest,
                                           self.entry(target, previous, status)))
        try:
            with compose.for_engine(self.mounts) as engine_compose, \
                    self.actions.group(f"Restore {back.reference(self.d.image_name)}"):
                self.bring_back(engine_compose, back)
        except DeploykitError as failure:
            raise RestoreFailed(failure) from failure
        self.mark_verified(back)  # the last verified release runs again, whatever its health
        try:
            with self.cancel.interruptible():
                health = self.check_health("Health after the rollback", restored=True,
                                           timeout=health_timeout)
        except Cancelled as cancelled:
            self.actions.warning(f"{cancelled.signal_name}: stopped waiting for the health "
                                 f"of the restored {back.reference(self.d.image_name)}.",
                                 title="Deploy cancelled")
            return back, None
        except DeploykitError as failure:
            raise RestoreFailed(failure) from failure
        return back, health

    def bring_back(self, compose: Compose, back: Target) -> None:
        """The restore's ``up``. What an interrupted ``up`` left (compose's temporary
        containers of a recreate, containers created and never started) is removed
        first, and once more before a second try when the first one fails."""
        for attempt in (1, 2):
            removed = remove_leftovers(self.api, self.project.name, self.project.image_services)
            if removed:
                self.actions.info(f"Removed what the interrupted `docker compose up` left: "
                                  f"{', '.join(removed)}.")
            try:
                compose.restore(self.project, timeout=self.timeouts.up)
                return
            except DockerError as failure:
                present = image_present(self.api, f"{self.d.image_name}@{back.digest}")
                if attempt == 2 or not present:
                    raise
                self.actions.warning(f"{failure.message.splitlines()[0]} Trying once more.",
                                     title="Restore failed")

    def mark_verified(self, release: Target) -> None:
        """On the engine: ``release`` runs verified (the labels, set before the verdict,
        cannot say it). A failure is a warning: the deploy's status stays the truth."""
        try:
            mark_verified(self.api, self.project.name, release.digest,
                          create_config_only_network)
        except docker.errors.DockerException as exc:
            self.actions.warning(f"Could not record on the engine that {release.label} was "
                                 f"verified ({exc}): `mode: rollback` from another runner may "
                                 "skip it.", title="Engine history")

    def _running_now(self) -> str:
        """What runs now, per service, for an error that must say it."""
        try:
            running = running_services(self.api, self.project.name, self.d.image_name,
                                       self.project.image_services)
        except DeploykitError:
            return "unknown (the engine did not answer)"
        shown = [f"{s.service}: {self.d.image_name}@{s.digest}" if s.digest
                 else f"{s.service}: {s.reference}" for s in running]
        missing = sorted(set(self.project.image_services) - {s.service for s in running})
        shown += [f"{name}: no container" for name in missing]
        return "; ".join(shown) or "nothing"

    def restore_failed(self, target: Target, previous: Previous, what: str,
                       failed: RestoreFailed) -> NoReturn:
        """The restore could not run: say what runs and what to do; history, summary."""
        self.record_history(target, previous, FAILED)
        self.actions.add_summary(self.summary(target, previous, FAILED))
        back = f"{self.d.image_name}@{previous.digest}"
        missing = not image_present(self.api, back)
        why = ("its image is no longer on this engine and could not be pulled"
               if missing else "it could not be brought back")
        detail = failed.failure.message.strip()
        raise DeployError(
            f"{what} The restore of {back} failed too ({why}): {detail}\n"
            f"Running now (not verified): {self._running_now()}.",
            hint=(f"Push {back} to the registry again and deploy it (`image_tag`), or deploy "
                  "a fixed release; " if missing else
                  "Deploy a verified release again (`image_tag`), or a fixed one; ")
            + f"`docker compose -p {self.project.name} ps -a` shows the containers.",
            status=FAILED, title="Deploy failed and the restore failed") from failed.failure

    def _now_runs(self, back: Target, health: HealthReport | None, cancelled: bool) -> str:
        name = f"{self.d.image_name}@{back.digest}"
        if health is None:
            return f"{name} was restored; the cancel came before its health was confirmed"
        if health.ok:
            return f"{name} runs again and is healthy"
        if cancelled:
            return (f"{name} was restored; its health was not confirmed within the time a "
                    f"cancel leaves: {health.reasons()}")
        return f"{name} was restored but is not healthy either: {health.reasons()}"

    def recover(self, target: Target, previous: Previous, failure: DeploykitError) -> None:
        """Step 9: bring back the last verified release."""
        what = failure.message.rstrip(". ") + "."
        if isinstance(failure, OneShotError):  # it failed before anything was replaced
            self.record_history(target, previous, FAILED)
            self.actions.add_summary(self.summary(target, previous, FAILED))
            raise failure
        if not self.settings.rollback_on_failure or not previous.digest:
            self.record_history(target, previous, FAILED)
            self.actions.add_summary(self.summary(target, previous, FAILED))
            why = ("rollback_on_failure is false" if previous.digest
                   else "there was no previous deployment")
            raise DeployError(f"{what} Not rolled back ({why}): the failing containers are "
                              "left for inspection.", hint=_INSPECT_HINT, status=FAILED) \
                from failure
        self.verify_lock(target, previous, "before the rollback")
        self.actions.warning(f"{what} Rolling back to {self.d.image_name}@{previous.digest}.",
                             title="Deploy failed, rolling back")
        undone = FAILED if self.d.action == ROLLBACK else ROLLED_BACK
        try:
            back, health = self.restore(target, previous, undone)
        except RestoreFailed as failed:
            self.restore_failed(target, previous, what, failed)
        healthy = health is None or health.ok
        status = FAILED if self.d.action == ROLLBACK or not healthy else ROLLED_BACK
        self.record_history(target, previous, status)
        self.actions.add_summary(self.summary(target, previous, status) + self.schema_note())
        raise DeployError(f"{what} Rolled back: {self._now_runs(back, health, False)}.",
                          hint=_INSPECT_HINT, status=status,
                          title="Deploy failed and was rolled back") from failure

    def undo_cancelled(self, target: Target, previous: Previous, cancelled: Cancelled) -> None:
        """A signal before the new release was verified: the last verified one comes back
        (whatever `rollback_on_failure` says: a cancelled deploy is not wanted)."""
        self.cancel.acknowledge()
        what = f"Cancelled ({cancelled.signal_name}) during {self.phase}"
        reference = target.reference(self.d.image_name)
        if not previous.digest:
            self.record_history(target, previous, FAILED)
            self.actions.add_summary(self.summary(target, previous, FAILED))
            raise DeployError(f"{what}: {reference} was not verified, and no verified "
                              "release ran before it: it is left as it is.",
                              hint=_INSPECT_HINT, status=FAILED, title="Deploy cancelled")
        self.verify_lock(target, previous, "before the rollback")
        self.actions.warning(f"{what}: {reference} was not verified. Rolling back to "
                             f"{self.d.image_name}@{previous.digest}.", title="Deploy cancelled")
        status = FAILED if self.d.action == ROLLBACK else ROLLED_BACK
        try:
            back, health = self.restore(target, previous, status,
                                        health_timeout=max(self.cancel.left(), 1.0))
        except RestoreFailed as failed:
            self.restore_failed(target, previous, f"{what}.", failed)
        self.record_history(target, previous, status)
        self.actions.add_summary(self.summary(target, previous, status))
        raise DeployError(f"{what}. Rolled back: {self._now_runs(back, health, True)}.",
                          hint=_INSPECT_HINT, status=status,
                          title="Deploy cancelled and rolled back")

    def schema_note(self) -> str:
        """Rolling the code back does not roll back what the failed release's one-shot
        services (its migrations) did: said in the log and in the summary."""
        if not self.one_shots_done:
            return ""
        note = (f"The one-shot service(s) {', '.join(self.one_shots_done)} completed in the "
                "failed release: its migrations ran, and the schema is not rolled back with "
                "the code. The restored release runs against the new schema (see "
                "expand/contract migrations in docs/django.md).")
        self.actions.warning(note, title="The schema is not rolled back")
        return f"\n\n**Note:** {note}"

    def finish(self, target: Target, previous: Previous, status: str) -> None:
        if self.cancel.requested:
            self.cancel.acknowledge()
            self.actions.info(f"{self.cancel.signal_name} came after "
                              f"{target.reference(self.d.image_name)} was verified: the "
                              "deploy is complete, there is nothing to undo.")
        self.mark_verified(target)
        # The history line before the status output: an output file that fails (a full
        # disk) must not cost the record of a release that runs.
        self.record_history(target, previous, status)
        self.actions.set_output("status", status)
        self.actions.add_summary(self.summary(target, previous, status))
        self.actions.notice(f"{self.project.name} in {self.settings.environment} runs "
                            f"{target.reference(self.d.image_name)}.", title=status)
        if status == DEPLOYED:
            prune_after_deploy(self.d, self.project.name, target)

    def record_history(self, target: Target, previous: Previous, status: str) -> None:
        self.recorded = True
        self.d.record_history(self.project.name, target, previous, status)

    def entry(self, target: Target, previous: Previous, status: str) -> HistoryEntry:
        return self.d.history_entry(self.project.name, target, previous, status)

    def summary(self, target: Target, previous: Previous, status: str) -> str:
        text = self.d.summary_head(target, previous, status, [["project", self.project.name]])
        for title, report in self.health_reports:
            text += f"\n\n#### {title}\n\n" + report.table()
        return text


class RestoreFailed(Exception):
    """The restore's ``up`` (or its health wait) raised: ``failure``."""

    def __init__(self, failure: DeploykitError) -> None:
        super().__init__(failure.message)
        self.failure = failure


# The status a release's labels carry: set at `up`, before the verdict (a release that
# fails is replaced by the previous one, labels included).
_AS_VERIFIED = {DEPLOY: DEPLOYED, ROLLBACK: ROLLED_BACK}
_INSPECT_HINT = ("See the log group with the failing container's logs and health log; "
                 "`docker compose ps` and `docker logs <container>` on the host show more.")
