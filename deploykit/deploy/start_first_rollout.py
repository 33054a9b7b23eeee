"""The compose engine's start-first rollout (``deploy.update_config.order: start-first``).

:class:`StartFirstRollout` is the recreate :class:`~deploykit.deploy.rollout.Rollout` with
another switch. Login, pull, the lock, the records, the smoke test and the digest check are
the recreate rollout's; under the lock it runs:

1. the one-shot services (migrations), as the recreate rollout runs them first;
2. per start-first service, per batch of ``parallelism``: start the new containers beside
   the old ones, their verdict (``settle`` at least ``monitor``), then stop the old ones
   gracefully and remove them (:class:`deploykit.startfirst.StartFirst`);
3. ``docker compose up`` of the whole project as the recreate rollout runs it: the
   start-first services already have their new config hash and ``replicas`` containers,
   so it recreates only the other services (a stop-first ``worker``, a changed ``db``);
4. the verdict of the other services, the smoke test, the digest check.

A failed verdict or a signal during 2 removes the batch's new containers: its old ones never
stopped. The batches that switched already go back start-first (``failure_action:
rollback``) or stay (``pause``). A failure in 3-4, after the switch, sends every switched
service back start-first when ``rollback_on_failure`` says so; the stop-first services are
restored as the recreate rollout restores them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from deploykit.cancel import Cancelled
from deploykit.compose import Compose
from deploykit.containers import service_of
from deploykit.deploy.release import Release, Running
from deploykit.deploy.report import FAILED, ROLLED_BACK
from deploykit.deploy.rollout import _INSPECT_HINT, RestoreFailed, Rollout
from deploykit.errors import DeployError, DeploykitError, OneShotError
from deploykit.history import labels_of_release
from deploykit.settings import ROLLBACK
from deploykit.startfirst import StartedBatch, UpdatePolicy

# A cancel leaves seconds: the new containers get at most this long to stop.
CANCEL_STOP = 2.0


@dataclass(frozen=True)
class Switch:
    """A batch of new containers and the old ones it replaces once it is verified."""

    batch: StartedBatch
    policy: UpdatePolicy
    retire: tuple[str, ...]


class StartFirstRollout(Rollout):
    """A compose rollout in which the ``policies`` services switch start-first."""

    def __init__(self, *args: Any, policies: Sequence[UpdatePolicy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policies = tuple(policies)
        self.steps = self.runtime.start_first_steps(self.api, self.runtime.docker,
                                                    self.project.name)
        self.start_first = {p.service for p in self.policies}
        self.restore_services = tuple(s for s in self.project.image_services
                                      if s not in self.start_first)
        self.waiting: list[Switch] = []  # started, not switched: removed on failure
        self.switched: list[Switch] = []  # batches whose old containers are gone
        self.switched_any = False
        self.switching_done = False  # every batch switched: what fails now is the release's
        self.others_up = False

    # -- the switch ----------------------------------------------------------------
    def up_and_check(self, compose: Compose, target: Release) -> None:
        if self.project.one_shot_services:
            self.phase = "the one-shot services"
            with self.actions.group("docker compose up (one-shot services)"):
                self.one_shots_done = self.guarded_up(lambda give_up_at: compose.up_one_shots(
                    self.project, one_shot_timeout=self.settings.health_timeout,
                    timeout=self.timeouts.up, give_up_at=give_up_at))
        for policy in self.policies:
            self.switch(compose, policy)
        self.switching_done = True
        self.phase = "`docker compose up`"
        with self.actions.group("docker compose up (the other services)"):
            self.others_up = True  # before: an `up` that fails half-way may have recreated some
            self.guarded_up(lambda give_up_at: compose.up_long_running(
                self.project, timeout=self.timeouts.up, give_up_at=give_up_at))
        self.check_release(target, "Health of the other services",
                           include=lambda c: service_of(c) not in self.start_first)

    def switch(self, compose: Compose, policy: UpdatePolicy) -> None:
        """Every batch of ``policy``'s service: beside, verdict, then the old ones go."""
        old = list(self.steps.ids(policy.service))
        batches = policy.batches()
        for number, count in enumerate(batches, 1):
            if number > 1 and policy.delay:
                with self.cancel.interruptible():
                    time.sleep(policy.delay)
            last = number == len(batches)
            retire, old = (old, []) if last else (old[:count], old[count:])
            self.start(compose, policy, count, tuple(retire))
            of = f" (batch {number} of {len(batches)})" if len(batches) > 1 else ""
            self.verdict(f"Health of the new {policy.service} containers{of}", count)
            self.retire(self.waiting[-1])

    def start(self, compose: Compose, policy: UpdatePolicy, count: int,
              retire: tuple[str, ...]) -> None:
        self.phase = f"the start of the new {policy.service} containers"
        self.actions.info(f"Start-first: {policy.service}: starting {count} new "
                          f"container(s) beside the {len(retire)} running.")
        selection = compose.selection(self.project, policy.service)
        batch = self.guarded_up(lambda give_up_at: self.steps.start_new(
            compose, policy, count, timeout=self.timeouts.up, give_up_at=give_up_at,
            selection=selection))
        self.waiting.append(Switch(batch, policy, retire))

    def verdict(self, title: str, count: int) -> None:
        switch = self.waiting[-1]
        new = set(switch.batch.new_ids)
        self.phase = f"the health wait of the new {switch.policy.service} containers"
        with self.cancel.interruptible():
            health = self.check_health(title, include=lambda c: str(c.get("Id")) in new,
                                       settle=switch.policy.settle(self.settings.health_settle))
        if not health.ok or len(health.containers) != count:
            reasons = health.reasons() or "a new container is gone"
            raise DeployError(f"Health check failed: {reasons}.")

    def retire(self, switch: Switch) -> None:
        """The batch is verified: from here on it counts as switched, whatever happens."""
        self.waiting.remove(switch)
        self.switched.append(switch)
        self.switched_any = True
        policy = switch.policy
        self.steps.retire_old(switch.batch, policy, switch.retire)
        signal = policy.stop_signal or "its stop signal"
        self.actions.info(f"Start-first: {policy.service}: {len(switch.batch.new_ids)} new "
                          f"container(s) healthy; {len(switch.retire)} old one(s) stopped "
                          f"({signal}, {policy.stop_grace_period:g} s grace) and removed.")

    # -- failure and cancel ----------------------------------------------------------
    def recover(self, target: Release, previous: Running, failure: DeploykitError) -> None:
        if isinstance(failure, OneShotError):  # before any start-first service was touched
            super().recover(target, previous, failure)
        what = failure.message.rstrip(". ") + "."
        self.undo(target, previous, what, cancelled=False)

    def undo_cancelled(self, target: Release, previous: Running, cancelled: Cancelled) -> None:
        self.cancel.acknowledge()
        what = f"Cancelled ({cancelled.signal_name}) during {self.phase}."
        self.undo(target, previous, what, cancelled=True)

    def undo(self, target: Release, previous: Running, what: str, *,
             cancelled: bool) -> NoReturn:
        """Remove what did not switch; then the switched batches and the stop-first
        services, as their policies say; the records; raise with the status."""
        discarded = self.discard_waiting(CANCEL_STOP if cancelled else None)
        undone = FAILED if self.report.action == ROLLBACK else ROLLED_BACK
        said = [self.kept_serving(previous, discarded)]
        left_on_target = False
        if self.switched or (self.restore_services and self.others_up):
            self.verify_lock(target, previous, "before the rollback")
        if self.switched:
            left_on_target, text = self.switched_back(target, previous, undone, what,
                                                      cancelled)
            said.append(text)
        if previous.digest and not left_on_target:  # the previous release serves again
            self.record_release(Release(previous.tag, previous.digest), labels_of_release(
                previous.labels, previous.digest, self.entry(target, previous, undone)))
        status = FAILED if left_on_target else undone
        if self.restore_services and self.others_up and previous.digest and (
                cancelled or self.settings.rollback_on_failure):
            said.append(self.restore_the_others(target, previous, status, what, cancelled))
        told = " ".join(filter(None, said))
        self.failed(target, previous, status, f"\n\n**{told}**" + self.schema_note())
        raise DeployError(f"{what} {told}", hint=_INSPECT_HINT, status=status,
                          title="Deploy cancelled" if cancelled else
                          "New release failed (the old one kept serving)"
                          if not self.switched_any else "Deploy failed")

    def discard_waiting(self, grace: float | None = None) -> list[Switch]:
        discarded = list(self.waiting)
        for switch in discarded:
            self.steps.discard_new(switch.batch, switch.policy, grace=grace)
            self.waiting.remove(switch)
        return discarded

    def kept_serving(self, previous: Running, discarded: Sequence[Switch]) -> str:
        """What the start-first services did while the release failed."""
        removed = sum(len(s.batch.new_ids) for s in discarded)
        gone = f"; the {removed} new container(s) were removed" if removed else ""
        if self.switched_any:
            return f"Start-first{gone}." if gone else ""
        services = ", ".join(p.service for p in self.policies)
        running = (f"{self.image_name}@{previous.digest}" if previous.digest
                   else "the previous release")
        return (f"Start-first: {services} kept serving {running} throughout (the old "
                f"containers never stopped){gone}.")

    def switched_back(self, target: Release, previous: Running, status: str, what: str,
                      cancelled: bool) -> tuple[bool, str]:
        """Batches that switched already: back to ``previous``, start-first, or left on
        ``target`` (True) as the policies say; and what to say of it."""
        services = ", ".join(dict.fromkeys(s.policy.service for s in self.switched))
        if self.switching_done:  # the release failed after the switch: the deploy's rule
            why = "" if self.settings.rollback_on_failure else "rollback_on_failure: false"
        else:  # a batch failed: the update's rule
            why = "" if all(s.policy.failure_action == "rollback" for s in self.switched) \
                else "failure_action: pause"
        if cancelled or why or not previous.digest:
            self.switched.clear()
            why = "the cancel leaves no time to switch back" if cancelled else (
                why or "there is no earlier release")
            return True, (f"{services} keep(s) running {target.reference(self.image_name)} "
                          f"({why}): deploy a release to finish.")
        back = Release(previous.tag, previous.digest)
        compose = self.compose.with_env(self.runtime.service_env, back.image_env(self.settings))
        try:
            with compose.for_engine(self.mounts) as engine_compose:
                for switch in list(self.switched):
                    self.switch_back(engine_compose, switch)
        except DeploykitError as failure:
            self.discard_waiting()
            self.restore_failed(target, previous, what, RestoreFailed(failure))
        self.mark_verified(back)
        return False, (f"Start-first: {services} went back to {self.image_name}@"
                       f"{previous.digest} the same way, never without a serving container.")

    def switch_back(self, compose: Compose, switch: Switch) -> None:
        self.switched.remove(switch)
        count = len(switch.batch.new_ids)
        self.start(compose, switch.policy, count, switch.batch.new_ids)
        self.verdict(f"Health of {switch.policy.service} switched back", count)
        back = self.waiting.pop()
        self.steps.retire_old(back.batch, back.policy, back.retire)

    def restore_the_others(self, target: Release, previous: Running, status: str,
                           what: str, cancelled: bool) -> str:
        services = ", ".join(self.restore_services or ())
        try:
            back, health = self.restore(
                target, previous, status,
                health_timeout=max(self.cancel.left(), 1.0) if cancelled else None)
        except RestoreFailed as failed:
            self.restore_failed(target, previous, what, failed)
        return f"{services} (stop-first): {self._now_runs(back, health, cancelled)}."

