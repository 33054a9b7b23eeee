"""What every engine's deploy records, written once: the outputs (``digest``, ``image``,
``status``), the history line, the GitHub deployment around the rollout, the smoke test,
the job summary's head, the plan's tail, and the two endings (verified; failed).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from deploykit.actions import markdown_table, markdown_text
from deploykit.cancel import Cancelled
from deploykit.deploy.release import Release, Running
from deploykit.deploy.runtime import Runtime
from deploykit.errors import DeploykitError, GitHubError
from deploykit.github import DeploymentRecord, deployment_ref, environment_url_for, summary_links
from deploykit.history import HistoryEntry, now_iso
from deploykit.settings import DEPLOY, ROLLBACK
from deploykit.status import Status

DEPLOYED, ROLLED_BACK, FAILED, PLANNED = (Status.DEPLOYED, Status.ROLLED_BACK, Status.FAILED,
                                         Status.PLANNED)
# The status a release's labels carry: set when it starts, before the verdict (a release
# that fails is replaced by the previous one, labels included).
AS_VERIFIED = {DEPLOY: DEPLOYED, ROLLBACK: ROLLED_BACK}


class Report:
    """One run's records: ``action`` (deploy or rollback) of ``project``."""

    def __init__(self, runtime: Runtime, action: str, started: float) -> None:
        self.runtime, self.action, self.started = runtime, action, started
        self.settings, self.actions = runtime.settings, runtime.actions
        self.image_name = runtime.image_name
        self.recorded = False  # this run's history line is written

    @property
    def success_status(self) -> Status:
        """How a verified release ends: ``rolled_back`` for a rollback."""
        return ROLLED_BACK if self.action == ROLLBACK else DEPLOYED

    def elapsed(self) -> float:
        return self.runtime.elapsed(self.started)

    # -- outputs -----------------------------------------------------------------------
    def outputs(self, release: Release) -> None:
        self.actions.set_output("digest", release.digest)
        self.actions.set_output("image", f"{self.image_name}@{release.digest}")

    def status(self, status: str) -> None:
        self.actions.set_output("status", status)

    def plan(self, release: Release, title: str, table: str) -> None:
        """The dry run's tail: outputs, ``planned``, the summary table."""
        self.outputs(release)
        self.status(PLANNED)
        self.actions.add_summary(f"### Plan: {self.action} {title}\n\n{table}")

    def plan_title(self, project: str) -> str:
        return f"{markdown_text(project)} to {markdown_text(self.settings.environment)}"

    # -- history -----------------------------------------------------------------------
    def entry(self, project: str, release: Release, previous: Running,
              status: str) -> HistoryEntry:
        image = f"{self.image_name}@{release.digest}"
        return HistoryEntry(
            time=now_iso(), action=self.action, environment=self.settings.environment,
            project=project, tag=release.tag or "", digest=release.digest,
            previous_digest=previous.digest, status=status,
            duration_seconds=self.elapsed(), run_url=self.settings.github.run_url,
            actor=self.settings.github.actor, image=image,
            rolled_back_from=previous.digest if self.action == ROLLBACK else "")

    def history(self, project: str, release: Release, previous: Running, status: str) -> None:
        """One line; a failure to write it is a warning: the status stays the truth."""
        self.recorded = True
        try:
            self.runtime.history.append(self.entry(project, release, previous, status))
        except DeploykitError as exc:
            self.actions.warning(f"{exc.message} The {self.action} is still `{status}`; only "
                                 "its history line is missing.", title=exc.title)

    # -- the GitHub deployment around the rollout --------------------------------------
    def on_github(self, project: str, release: Release, previous: Running,
                  roll_out: Callable[[], None]) -> None:
        """``roll_out`` between the GitHub deployment's start and its finish; every ending
        has its history line."""
        self.outputs(release)
        record = self._start(release)
        try:
            roll_out()
        except (DeploykitError, Cancelled) as failure:
            if not self.recorded:  # e.g. the login failed: every ending has its line
                self.history(project, release, previous, FAILED)
            # The deploy's own error stays the one reported, even if GitHub also fails.
            with suppress(GitHubError):
                self._finish(record, release, success=False, description=failure.message
                             if isinstance(failure, DeploykitError) else
                             f"Cancelled ({failure.signal_name}) before anything was changed")
            raise
        self._finish(record, release, success=True, description=f"{release.label} is live")

    def _start(self, release: Release) -> DeploymentRecord | None:
        github = self.runtime.github
        if github is None:
            return None
        return github.start_deployment(
            environment=self.settings.environment,
            ref=deployment_ref(self.settings, release.tag or ""), image=self.image_name,
            tag=release.tag or "", digest=release.digest,
            is_production=self.settings.is_production,
            description=f"deploykit {self.action}: {release.label}")

    def _finish(self, record: DeploymentRecord | None, release: Release, *, success: bool,
                description: str) -> None:
        github = self.runtime.github
        if github is None or record is None:
            return
        github.finish_deployment(record, success=success,
                                 environment_url=environment_url_for(self.settings),
                                 description=description)
        links = summary_links(deployment=record, release=github.release_for(release.tag or ""))
        if links:
            self.actions.add_summary(links)

    # -- verify ------------------------------------------------------------------------
    def smoke(self) -> None:
        """The smoke test, when ``smoke_url`` is set (the caller decides on signals)."""
        settings = self.settings
        if settings.smoke_url:
            with self.actions.group("Smoke test"):
                self.runtime.smoke_test(settings.smoke_url, status=settings.smoke_status,
                                        contains=settings.smoke_contains,
                                        timeout=settings.smoke_timeout, actions=self.actions)

    def signal_came_late(self, release: Release) -> None:
        """A signal after the release was verified: nothing to undo."""
        cancel = self.runtime.cancel
        if cancel.requested:
            cancel.acknowledge()
            self.actions.info(f"{cancel.signal_name} came after "
                              f"{release.reference(self.image_name)} was verified: the "
                              "deploy is complete, there is nothing to undo.")

    # -- the endings -------------------------------------------------------------------
    def head(self, release: Release, previous: Running, status: str,
             where: list[list[str]]) -> str:
        """The job summary's heading and main table; ``where`` names the project (or the
        stack and orchestrator) between the environment and the image."""
        rows = [["status", status], ["environment", self.settings.environment], *where,
                ["image", release.reference(self.image_name)],
                ["previous image", f"{self.image_name}@{previous.digest}"
                 if previous.digest else "-"],
                ["duration", f"{self.elapsed():.1f} s"]]
        return f"### {self.action.capitalize()}: {status}\n\n" + markdown_table(
            ["", "value"], rows)

    def finish(self, project: str, release: Release, previous: Running, status: str, *,
               summary: Callable[[str], str], subject: str) -> None:
        """The verified ending: history, ``status``, summary, notice, then old images."""
        # The history line before the status output: an output file that fails (a full
        # disk) must not cost the record of a release that runs.
        self.history(project, release, previous, status)
        self.status(status)
        self.actions.add_summary(summary(status))
        self.actions.notice(f"{subject} in {self.settings.environment} runs "
                            f"{release.reference(self.image_name)}.", title=status)
        if status == DEPLOYED:
            self.runtime.prune(self.runtime, project, release)

    def failed(self, project: str, release: Release, previous: Running, status: str,
               summary: str) -> None:
        """A failed ending's records (its ``status`` output comes from the error)."""
        self.history(project, release, previous, status)
        self.actions.add_summary(summary)


__all__ = ["AS_VERIFIED", "DEPLOYED", "FAILED", "PLANNED", "ROLLED_BACK", "Report"]
