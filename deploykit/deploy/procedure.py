"""mode=deploy and mode=rollback: one procedure, whatever the engine.

:meth:`Deployment._run` reads as the phases (the gate is the caller's,
:mod:`deploykit.deploy_command`): the engine checked, resolve (the registry), provenance,
validate (the file as the engine will read it), then (dry run: the plan) the lock, record
what runs (the rollback target, ``previous_image``), and the rollout inside the GitHub
deployment: start the new release, its verdict (health, then smoke), restore on failure,
record (history, outputs, summary), report, prune. The engine-specific steps sit behind
:class:`deploykit.deploy.engine.Engine` (:mod:`~deploykit.deploy.compose_engine`,
:mod:`~deploykit.deploy.swarm_engine`); what every engine records is
:class:`deploykit.deploy.report.Report`'s; the collaborators come from
:class:`deploykit.deploy.runtime.Runtime`.
"""

from __future__ import annotations

from deploykit.cancel import Cancelled
from deploykit.deploy.compose_engine import ComposeEngine
from deploykit.deploy.engine import Engine
from deploykit.deploy.release import Release, Running, image_reference
from deploykit.deploy.report import FAILED, Report
from deploykit.deploy.runtime import Runtime
from deploykit.errors import DeployError, DeploykitError
from deploykit.history import HistoryEntry, stack_from_labels
from deploykit.lock import Holder, this_holder
from deploykit.policy import DeployTarget
from deploykit.provenance import check_provenance


def engine_for(runtime: Runtime, report: Report) -> Engine:
    """The engine the ``orchestrator`` input names."""
    if runtime.settings.orchestrator == "swarm":
        # Imported here: a compose deploy loads no Swarm code (start-up cost).
        from deploykit.deploy.swarm_engine import SwarmEngine  # noqa: PLC0415

        return SwarmEngine(runtime, report)
    return ComposeEngine(runtime, report)


class Deployment:
    """One deploy or rollback (``action``) with the collaborators of ``runtime``."""

    def __init__(self, runtime: Runtime, action: str) -> None:
        self.runtime, self.action = runtime, action
        self.settings, self.actions = runtime.settings, runtime.actions
        self.image_name = runtime.image_name
        self.report = Report(runtime, action, started=runtime.clock())
        self.engine = engine_for(runtime, self.report)

    def run(self, gate: DeployTarget) -> None:
        cancel = self.runtime.cancel
        try:
            with cancel.installed(), cancel.interruptible():
                self._run(gate)
        except Cancelled as cancelled:  # before the lock: nothing was changed
            self.report.status(FAILED)
            raise DeployError(f"Cancelled ({cancelled.signal_name}) before anything was "
                              "changed.", title="Deploy cancelled", status=FAILED) from None
        except DeploykitError as exc:
            if "status" not in self.actions.outputs:  # also lock, registry, engine errors
                self.report.status(exc.status if isinstance(exc, DeployError) else FAILED)
            raise

    def _run(self, gate: DeployTarget) -> None:
        engine = self.engine
        engine.check_engine()
        release = self.resolve(gate)  # the registry, after the gate
        check_provenance(self.settings, self.actions, gate.tag, release.digest)  # issue 25
        engine.validate(release)
        if self.settings.dry_run:
            engine.plan(release, self.record())
            return
        self.runtime.history.check_writable()  # before anything changes, not after it
        with engine.lock(self.holder()) as lock:
            previous = self.record()  # what runs now: the rollback target
            with self.runtime.cancel.shielded():
                engine.roll_out(release, previous, lock)

    # -- resolve -------------------------------------------------------------------------
    def resolve(self, gate: DeployTarget) -> Release:
        registry = self.runtime.registry_client(self.settings, self.actions)
        digest = registry.resolve(gate.digest or gate.tag or "")
        release = Release(gate.tag or self._tag_naming(digest), digest)
        if gate.tag and not gate.digest:
            self.actions.info(f"{self.image_name}:{gate.tag} is {digest}.")
        else:
            named = " (the tag that named it in the history)" if release.tag != gate.tag else ""
            self.actions.info(f"Deploying {release.reference(self.image_name)}{named}.")
        return release

    def _tag_naming(self, digest: str) -> str | None:
        """The tag that named ``digest`` when it was last deployed (from the history)."""
        for entry in reversed(self.runtime.history.entries()):
            if entry.digest == digest and entry.tag and entry.image in (
                    "", f"{self.image_name}@{digest}"):
                return entry.tag
        return None

    # -- lock ----------------------------------------------------------------------------
    def holder(self) -> Holder:
        _, project = self.runtime.project()
        container = self.runtime.own_container_info()
        return this_holder(project.name, run_url=self.settings.github.run_url,
                           actor=self.settings.github.actor,
                           container=str(container.get("Id", "")) if container else "",
                           ttl=self.runtime.timeouts.ttl)

    # -- record what runs ----------------------------------------------------------------
    def record(self) -> Running:
        _, project = self.runtime.project()
        previous = self.rollback_target(self.engine.running(), project.name)
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

    def rollback_target(self, running: Running, project: str) -> Running:
        """The last release verified healthy, when the history knows it: containers a
        failed deploy left (``rollback_on_failure: false``) are never the target."""
        if not running.digest:
            return running
        stack = self.runtime.history.releases(self.settings.environment, project)
        if not stack:  # a fresh runner: the releases the engine knows verified
            stack = stack_from_labels(running.labels)
        if not stack or stack[-1].digest == running.digest:
            return running
        verified = stack[-1]
        self.actions.warning(
            f"Running now: {self.image_name}@{running.digest}, which no deploy verified "
            f"(a failed deploy left it). The last verified release, "
            f"{image_reference(self.image_name, verified.tag or None, verified.digest)} "
            f"(deployed {verified.time}), is the rollback target.",
            title="Unverified release running")
        return Running(running.services, verified.digest, verified.tag or None, running.labels)

    # -- mode=rollback without image_tag ---------------------------------------------------
    def previous_release(self) -> Release:
        """The release before the current one (engine labels, history file, GitHub)."""
        _, project = self.runtime.project()
        entry, source = self._previous_release(project.name)
        if entry is None and (found := self._previous_from_github()):
            return found
        if entry is None:
            raise DeployError(
                f"No release before the current one of project {project.name!r} in "
                f"{self.settings.environment} on the engine (container labels) or in the "
                f"history {self.runtime.history.path}.",
                hint="Pass the release to go back to: `image_tag: vX.Y.Z` (or a digest).",
                title="Nothing to roll back to")
        # The labels' and the file's values are text from outside: never a command.
        self.actions.untrusted("", f"Rolling back to {entry.tag or entry.digest} "
                               f"({entry.digest}), deployed {entry.time} (from {source}).")
        return Release(entry.tag or None, entry.digest)

    def _previous_release(self, project: str) -> tuple[HistoryEntry | None, str]:
        """The release below the current one: from the engine (release labels, which
        outlive any runner), else from the history file. Only verified releases are in
        the engine's stack: when what runs is not its top (a failed deploy left it), the
        top is the target."""
        stack, source = self.engine.engine_history()
        if stack and stack[-1].digest != self.engine.running().digest:
            return stack[-1], source
        if len(stack) >= 2:
            return stack[-2], source
        history = self.runtime.history
        entry = history.previous_successful(self.settings.environment, project)
        return entry, f"the history {history.path}"

    def _previous_from_github(self) -> Release | None:
        """Without local history: the newest successful GitHub deployment before the
        current one (from deploykit's payloads)."""
        github = self.runtime.github
        if github is None:
            return None
        running = self.engine.running()
        found = github.previous_successful_deployment(
            self.settings.environment, exclude_digest=running.digest)
        if found is None:
            return None
        self.actions.info(f"No local history: rolling back to {found.tag or found.digest} "
                          f"({found.digest}) from GitHub deployment #{found.id}.")
        return Release(found.tag or None, found.digest)


__all__ = ["Deployment", "Runtime", "engine_for"]
