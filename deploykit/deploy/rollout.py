"""The recreate rollout of the compose engine (``order: stop-first``, compose's default).

Its steps under the lock (:class:`Rollout`): login, pull what the engine lacks, the lock
checked, ``docker compose up``, the health verdict, the smoke test, the digest check, and
on failure (or a signal before the release was verified) the restore of the last verified
release. The records (history, GitHub, outputs, summary) are the
:class:`~deploykit.deploy.report.Report`'s. :mod:`~deploykit.deploy.start_first_rollout`
changes only the switch.

SIGINT/SIGTERM (a cancelled workflow) are handled by :mod:`deploykit.cancel`: before
``up`` nothing changed and the deploy stops; during ``up`` the in-flight command may
finish (bounded); after it, an unverified release is replaced by the last verified one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, NoReturn, TypeVar

from deploykit.cancel import Cancelled
from deploykit.compose import Compose, ComposeProject
from deploykit.containers import image_present, remove_leftovers
from deploykit.deploy.release import Release, Running
from deploykit.deploy.report import AS_VERIFIED, FAILED, ROLLED_BACK, Report
from deploykit.deploy.runtime import Runtime
from deploykit.docker_sdk import docker
from deploykit.errors import DeployError, DeploykitError, DockerError, LockError, OneShotError
from deploykit.health import HealthReport, restore_settle
from deploykit.history import (
    HistoryEntry,
    labels_of_release,
    mark_verified,
    next_release_labels,
    write_record,
)
from deploykit.lock import EngineLock
from deploykit.settings import ROLLBACK

# A cancelled `docker compose up` may run on this long after the signal, then it is
# stopped: with the restore that follows, deploykit exits within GitHub's 7.5 s.
UP_GRACE = 3.5
T = TypeVar("T")


class Rollout:
    """Steps 5-10 under the lock (shielded from signals except where noted)."""

    def __init__(self, runtime: Runtime, report: Report, compose: Compose, *,
                 project: ComposeProject, mounts: dict[str, str], lock: EngineLock) -> None:
        self.runtime, self.report, self.compose, self.project = runtime, report, compose, project
        self.api = runtime.engine.api
        self.mounts, self.lock = mounts, lock
        self.settings, self.actions = runtime.settings, runtime.actions
        self.image_name = runtime.image_name
        self.cancel, self.timeouts = runtime.cancel, runtime.timeouts
        self.health_reports: list[tuple[str, HealthReport]] = []
        self.one_shots_done: tuple[str, ...] = ()
        self.phase = "the login"
        # The restore's `up`: None, the image's services (a start-first rollout: fewer).
        self.restore_services: tuple[str, ...] | None = None

    def run(self, target: Release, previous: Running) -> None:
        with self.logged_in():
            compose = self.compose.with_env(self.runtime.service_env,
                                            target.image_env(self.settings))
            labels = next_release_labels(previous.labels, self.entry(
                target, previous, AS_VERIFIED[self.report.action]))
            with compose.for_engine(self.mounts) as engine_compose:
                self.pull(engine_compose, target, previous)
                # Outside the handler below: a deploy that lost its lock touches nothing.
                self.verify_lock(target, previous, "before `docker compose up`")
                self.record_release(target, labels)
                try:
                    self.up_and_check(engine_compose, target)
                except Cancelled as cancelled:
                    self.undo_cancelled(target, previous, cancelled)
                except DeploykitError as failure:
                    self.recover(target, previous, failure)
        self.finish(target, previous, self.report.success_status)

    @contextmanager
    def logged_in(self) -> Iterator[None]:
        with ExitStack() as stack:
            with self.cancel.interruptible():  # nothing on the host changes in a login
                stack.enter_context(self.runtime.docker.logged_in(
                    self.settings.registry, self.settings.registry_username,
                    self.settings.registry_password))
            yield

    def pull(self, compose: Compose, target: Release, previous: Running) -> None:
        self.phase = "the pull"
        try:
            with self.cancel.interruptible(), \
                    self.actions.group(f"Pull {target.reference(self.image_name)}"):
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

    def pull_what_is_missing(self, compose: Compose, target: Release) -> None:
        """A digest names one content: when the engine has it already (a redeploy, a
        rollback), the services of the deployed image have nothing to pull, and only the
        other services are (as `docker compose pull` would: their tags may have moved)."""
        reference = f"{self.image_name}@{target.digest}"
        if not image_present(self.api, reference):
            compose.pull(timeout=self.timeouts.pull)
            return
        others = self.project.other_services
        self.actions.info(f"{reference} is on this engine already: "
                          + (f"pulling only {', '.join(others)}." if others else
                             "nothing to pull."))
        if others:
            compose.pull(others, timeout=self.timeouts.pull)

    def _still_runs(self, previous: Running) -> str:
        return f"; {self.image_name}@{previous.digest} still runs" if previous.digest else ""

    def verify_lock(self, target: Release, previous: Running, when: str) -> None:
        try:
            self.lock.verify()
        except LockError as lost:
            self.record_history(target, previous, FAILED)
            raise LockError(f"{lost.message} Stopped {when}: this deploy changes nothing and "
                            "restores nothing under another deploy's lock.",
                            hint=lost.hint) from lost

    def up_and_check(self, compose: Compose, target: Release) -> None:
        self.phase = "`docker compose up`"
        with self.actions.group("docker compose up"):
            self.one_shots_done = self.guarded_up(lambda give_up_at: compose.up_release(
                self.project, force_recreate=self.settings.force_redeploy,
                one_shot_timeout=self.settings.health_timeout, timeout=self.timeouts.up,
                give_up_at=give_up_at))
        self.check_release(target, "Health of the new containers")

    def guarded_up(self, up: Callable[[Callable[[], float | None]], T]) -> T:
        """A compose ``up`` that a signal lets finish for UP_GRACE seconds at most."""
        try:
            return up(lambda: self.cancel.deadline(UP_GRACE))
        except DockerError:
            self.cancel.raise_if_requested()  # it was stopped because of the signal
            raise

    def check_release(self, target: Release, title: str,
                      include: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
        """The verdict (of the ``include`` containers), the smoke test, the digest check."""
        with self.cancel.interruptible():  # nothing changes from here on: stop at once
            self.phase = "the health wait"
            health = self.check_health(title, include=include)
            if not health.ok:
                raise DeployError(f"Health check failed: {health.reasons()}.")
            if self.settings.smoke_url:
                self.phase = "the smoke test"
                self.report.smoke()
            self.phase = "the digest check"
            self.verify(target)

    def check_health(self, title: str, *, restored: bool = False,
                     timeout: float | None = None, settle: float | None = None,
                     include: Callable[[Mapping[str, Any]], bool] | None = None
                     ) -> HealthReport:
        """The verdict on the project's containers (``include``: only those)."""
        settle = self.settings.health_settle if settle is None else settle
        with self.actions.group(title):
            report: HealthReport = self.runtime.health_watch(self.api, self.project.name,
                timeout=timeout or self.settings.health_timeout,
                settle=restore_settle(settle) if restored else settle,
                progress=self.actions.info, one_shots=self.project.one_shot_services,
                clock=self.runtime.clock, include=include).wait()
            self.actions.info(report.table())
        self.health_reports.append((title, report))
        if not report.ok:
            self.runtime.report_failures(self.api, report, self.actions)
        return report

    def verify(self, target: Release) -> None:
        running = self.runtime.running_services(self.api, self.project.name, self.image_name,
                                   self.project.image_services)
        wrong = [s for s in running if s.digest != target.digest]
        missing = set(self.project.image_services) - {s.service for s in running}
        if wrong or missing or not running:
            shown = ", ".join(f"{s.service} runs {s.digest or s.reference}" for s in wrong)
            shown += "".join(f", {name} has no container" for name in sorted(missing))
            raise DeployError(f"Digest check failed: expected {target.digest}; "
                              f"{shown.strip(', ')}.")
        self.actions.info(f"Every service of {self.image_name} runs {target.digest}.")

    def restore(self, target: Release, previous: Running, status: str, *,
                health_timeout: float | None = None) -> tuple[Release, HealthReport | None]:
        """Bring the last verified release back (normally still on the host: no pull).
        Its labels record the deploy being undone (``target``, ending ``status``). The
        health report is None when a signal cut its wait short; a restore that cannot
        run raises :class:`RestoreFailed`."""
        back = Release(previous.tag, previous.digest)
        compose = self.compose.with_env(self.runtime.service_env, back.image_env(self.settings))
        try:
            with compose.for_engine(self.mounts) as engine_compose, \
                    self.actions.group(f"Restore {back.reference(self.image_name)}"):
                self.bring_back(engine_compose, back)
        except DeploykitError as failure:
            raise RestoreFailed(failure) from failure
        # Once it runs again: a record never names what does not run.
        self.record_release(back, labels_of_release(previous.labels, previous.digest,
                                                    self.entry(target, previous, status)))
        self.mark_verified(back)  # the last verified release runs again, whatever its health
        try:
            with self.cancel.interruptible():
                health = self.check_health("Health after the rollback", restored=True,
                                           timeout=health_timeout)
        except Cancelled as cancelled:
            self.actions.warning(f"{cancelled.signal_name}: stopped waiting for the health "
                                 f"of the restored {back.reference(self.image_name)}.",
                                 title="Deploy cancelled")
            return back, None
        except DeploykitError as failure:
            raise RestoreFailed(failure) from failure
        return back, health

    def bring_back(self, compose: Compose, back: Release) -> None:
        """The restore's ``up``. What an interrupted ``up`` left (compose's temporary
        containers of a recreate, containers created and never started) is removed
        first, and once more before a second try when the first one fails."""
        for attempt in (1, 2):
            removed = remove_leftovers(self.api, self.project.name, self.project.image_services)
            if removed:
                self.actions.info(f"Removed what the interrupted `docker compose up` left: "
                                  f"{', '.join(removed)}.")
            try:
                compose.restore(self.project, services=self.restore_services,
                                timeout=self.timeouts.up)
                return
            except DockerError as failure:
                present = image_present(self.api, f"{self.image_name}@{back.digest}")
                if attempt == 2 or not present:
                    raise
                self.actions.warning(f"{failure.message.splitlines()[0]} Trying once more.",
                                     title="Restore failed")

    def record_release(self, release: Release, labels: Mapping[str, str]) -> None:
        """On the engine, before the ``up`` that starts ``release``: its history labels
        (:func:`deploykit.history.write_record`). A failure is a warning, as for
        :meth:`mark_verified`."""
        try:
            write_record(self.api, self.project.name, labels, self.runtime.mark_network)
        except docker.errors.DockerException as exc:
            self.actions.warning(f"Could not record {release.label} on the engine ({exc}): "
                                 "`mode: rollback` from another runner may not find it.",
                                 title="Engine history")

    def mark_verified(self, release: Release) -> None:
        """On the engine: ``release`` runs verified (the labels, set before the verdict,
        cannot say it). A failure is a warning: the deploy's status stays the truth."""
        try:
            mark_verified(self.api, self.project.name, release.digest,
                          self.runtime.mark_network)
        except docker.errors.DockerException as exc:
            self.actions.warning(f"Could not record on the engine that {release.label} was "
                                 f"verified ({exc}): `mode: rollback` from another runner may "
                                 "skip it.", title="Engine history")

    def _running_now(self) -> str:
        """What runs now, per service, for an error that must say it."""
        try:
            running = self.runtime.running_services(self.api, self.project.name, self.image_name,
                                       self.project.image_services)
        except DeploykitError:
            return "unknown (the engine did not answer)"
        shown = [f"{s.service}: {self.image_name}@{s.digest}" if s.digest
                 else f"{s.service}: {s.reference}" for s in running]
        missing = sorted(set(self.project.image_services) - {s.service for s in running})
        shown += [f"{name}: no container" for name in missing]
        return "; ".join(shown) or "nothing"

    def restore_failed(self, target: Release, previous: Running, what: str,
                       failed: RestoreFailed) -> NoReturn:
        """The restore could not run: say what runs and what to do; history, summary."""
        self.failed(target, previous, FAILED)
        back = f"{self.image_name}@{previous.digest}"
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

    def _now_runs(self, back: Release, health: HealthReport | None, cancelled: bool) -> str:
        name = f"{self.image_name}@{back.digest}"
        if health is None:
            return f"{name} was restored; the cancel came before its health was confirmed"
        if health.ok:
            return f"{name} runs again and is healthy"
        if cancelled:
            return (f"{name} was restored; its health was not confirmed within the time a "
                    f"cancel leaves: {health.reasons()}")
        return f"{name} was restored but is not healthy either: {health.reasons()}"

    def recover(self, target: Release, previous: Running, failure: DeploykitError) -> None:
        """Step 9: bring back the last verified release."""
        what = failure.message.rstrip(". ") + "."
        if isinstance(failure, OneShotError):  # it failed before anything was replaced
            self.failed(target, previous, FAILED)
            raise failure
        if not self.settings.rollback_on_failure or not previous.digest:
            self.failed(target, previous, FAILED)
            why = ("rollback_on_failure is false" if previous.digest
                   else "there was no previous deployment")
            raise DeployError(f"{what} Not rolled back ({why}): the failing containers are "
                              "left for inspection.", hint=_INSPECT_HINT, status=FAILED) \
                from failure
        self.verify_lock(target, previous, "before the rollback")
        self.actions.warning(f"{what} Rolling back to {self.image_name}@{previous.digest}.",
                             title="Deploy failed, rolling back")
        undone = FAILED if self.report.action == ROLLBACK else ROLLED_BACK
        try:
            back, health = self.restore(target, previous, undone)
        except RestoreFailed as failed:
            self.restore_failed(target, previous, what, failed)
        healthy = health is None or health.ok
        status = FAILED if self.report.action == ROLLBACK or not healthy else ROLLED_BACK
        self.failed(target, previous, status, self.schema_note())
        raise DeployError(f"{what} Rolled back: {self._now_runs(back, health, False)}.",
                          hint=_INSPECT_HINT, status=status,
                          title="Deploy failed and was rolled back") from failure

    def undo_cancelled(self, target: Release, previous: Running, cancelled: Cancelled) -> None:
        """A signal before the new release was verified: the last verified one comes back
        (whatever `rollback_on_failure` says: a cancelled deploy is not wanted)."""
        self.cancel.acknowledge()
        what = f"Cancelled ({cancelled.signal_name}) during {self.phase}"
        reference = target.reference(self.image_name)
        if not previous.digest:
            self.failed(target, previous, FAILED)
            raise DeployError(f"{what}: {reference} was not verified, and no verified "
                              "release ran before it: it is left as it is.",
                              hint=_INSPECT_HINT, status=FAILED, title="Deploy cancelled")
        self.verify_lock(target, previous, "before the rollback")
        self.actions.warning(f"{what}: {reference} was not verified. Rolling back to "
                             f"{self.image_name}@{previous.digest}.", title="Deploy cancelled")
        status = FAILED if self.report.action == ROLLBACK else ROLLED_BACK
        try:
            back, health = self.restore(target, previous, status,
                                        health_timeout=max(self.cancel.left(), 1.0))
        except RestoreFailed as failed:
            self.restore_failed(target, previous, f"{what}.", failed)
        self.failed(target, previous, status)
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

    def finish(self, target: Release, previous: Running, status: str) -> None:
        self.report.signal_came_late(target)
        self.mark_verified(target)
        self.report.finish(self.project.name, target, previous, status,
                           summary=lambda status: self.summary(target, previous, status),
                           subject=self.project.name)

    def record_history(self, target: Release, previous: Running, status: str) -> None:
        self.report.history(self.project.name, target, previous, status)

    def failed(self, target: Release, previous: Running, status: str, note: str = "") -> None:
        self.report.failed(self.project.name, target, previous, status,
                           self.summary(target, previous, status) + note)

    def entry(self, target: Release, previous: Running, status: str) -> HistoryEntry:
        return self.report.entry(self.project.name, target, previous, status)

    def summary(self, target: Release, previous: Running, status: str) -> str:
        text = self.report.head(target, previous, status, [["project", self.project.name]])
        for title, report in self.health_reports:
            text += f"\n\n#### {title}\n\n" + report.table()
        return text


class RestoreFailed(Exception):
    """The restore's ``up`` (or its health wait) raised: ``failure``."""

    def __init__(self, failure: DeploykitError) -> None:
        super().__init__(failure.message)
        self.failure = failure


_INSPECT_HINT = ("See the log group with the failing container's logs and health log; "
                 "`docker compose ps` and `docker logs <container>` on the host show more.")
