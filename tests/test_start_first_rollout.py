"""The start-first rollout (issue 22) with every outside system faked: the order of the
steps, what a failure or a signal undoes, the refusals, the plan.

The fakes are test_deploy's (``world``, ``run``); the engine steps of
:class:`deploykit.startfirst.StartFirst` are replaced through the runtime
(``start_first_steps``) by :class:`FakeSteps`, which records them as calls.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deploykit.compose import ComposeProject
from deploykit.deploy.runtime import Runtime
from deploykit.startfirst import StartedBatch, UpdatePolicy
from tests.test_deploy import (  # noqa: F401 (the fixtures, by name)
    D1,
    D2,
    NAME,
    World,
    history,
    run,
    world,
)

START_FIRST = {"order": "start-first", "failure_action": "rollback", "monitor": "0s"}


def project(app: dict[str, Any] | None = None, *, worker: bool = True,
            one_shots: tuple[str, ...] = ()) -> ComposeProject:
    """``app`` start-first (1 replica), ``worker`` stop-first on the same image, ``db``."""
    services: dict[str, Any] = {"app": app if app is not None else {
        "deploy": {"replicas": 1, "update_config": START_FIRST}}, "db": {}}
    image = ("app", "worker") if worker else ("app",)
    if worker:
        services["worker"] = {}
    for name in one_shots:
        services[name] = {"restart": "no"}
    return ComposeProject(Path("."), Path("compose.yaml"), "shop",
                          tuple(sorted(services)), image, one_shots,
                          (*image, *one_shots), {"services": services})


class FakeSteps:
    """StartFirst's steps as calls: what runs is ``world.running``."""

    def __init__(self, seen: World) -> None:
        self.world, self.started = seen, 0

    def ids(self, service: str) -> tuple[str, ...]:
        return (f"{service}-{self.started}",)

    def start_new(self, compose: Any, policy: UpdatePolicy, count: int, **options: Any
                  ) -> StartedBatch:
        tag = compose.env["IMAGE_TAG"].partition("@")[0]
        self.world.calls.append(f"start {policy.service} {tag} x{count} "
                                f"{' '.join(options['selection'])}")
        old = self.ids(policy.service)
        self.started += 1
        self.world.at("start")
        self.world.next_digest = compose.env["IMAGE_TAG"].partition("@")[2]  # type: ignore[attr-defined]
        return StartedBatch(policy.service, old, self.ids(policy.service))

    def retire_old(self, batch: StartedBatch, policy: UpdatePolicy, ids: Any) -> None:
        self.world.calls.append(f"retire {' '.join(ids)}")
        self.world.running[policy.service] = self.world.next_digest  # type: ignore[attr-defined]

    def discard_new(self, batch: StartedBatch, policy: UpdatePolicy, *,
                    grace: float | None = None) -> None:
        self.world.calls.append(f"discard {' '.join(batch.new_ids)}"
                                + (f" within {grace:g} s" if grace is not None else ""))


@pytest.fixture
def steps(world: World, monkeypatch: pytest.MonkeyPatch) -> FakeSteps:  # noqa: F811
    fake = FakeSteps(world)
    with_fakes = Runtime.create  # test_deploy's (patched by `world`)

    def create(*args: Any, **kwargs: Any) -> Runtime:
        return replace(with_fakes(*args, **kwargs),
                       start_first_steps=lambda api, docker, name: fake)

    monkeypatch.setattr(Runtime, "create", staticmethod(create))
    world.project = project()
    world.running = {"app": D1, "worker": D1}
    return fake


def deploy_calls(seen: World) -> list[str]:
    """The calls under the lock, after the pull."""
    calls = seen.calls
    return calls[calls.index("verify lock") + 1:]


def test_the_new_container_starts_beside_and_the_old_one_goes_once_it_is_healthy(
        world: World, run: Any, steps: FakeSteps, tmp_path: Path) -> None:  # noqa: F811
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert (code, outputs["status"]) == (0, "deployed")
    assert deploy_calls(world) == [
        "start app v2.0.0 x1 app", "health shop", "retire app-0",
        f"up v2.0.0@{D2}", "health shop", "smoke http://x/", "unlock"]
    assert "Start-first: app: 1 new container(s) healthy; 1 old one(s) stopped (its stop " \
           "signal, 10 s grace) and removed." in log
    assert [e.status for e in history(tmp_path)] == ["deployed"]


def test_a_release_that_fails_its_verdict_only_loses_its_new_containers(
        world: World, run: Any, steps: FakeSteps, tmp_path: Path) -> None:  # noqa: F811
    world.health = [False]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    # Nothing else ran: no `up` of the other services, no restore.
    assert deploy_calls(world) == ["start app v2.0.0 x1 app", "health shop", "discard app-1",
                                   "unlock"]
    said = (f"Start-first: app kept serving {NAME}@{D1} throughout (the old containers "
            "never stopped); the 1 new container(s) were removed.")
    assert (f"::error title=New release failed (the old one kept serving)::Health check failed: "
            f"app (shop-app-1) exited with code 3. {said}") in log
    assert said in (tmp_path / "summary").read_text()
    assert world.running == {"app": D1, "worker": D1}
    assert [e.status for e in history(tmp_path)] == ["rolled_back"]


def test_a_failed_smoke_test_after_the_switch_switches_back_start_first(
        world: World, run: Any, steps: FakeSteps) -> None:  # noqa: F811
    world.smoke_fails = True
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert deploy_calls(world) == [
        "start app v2.0.0 x1 app", "health shop", "retire app-0", f"up v2.0.0@{D2}",
        "health shop", "smoke http://x/", "verify lock",
        "start app v x1 app", "health shop", "retire app-1",  # app back, start-first
        "restore worker", f"up v@{D1}", "health shop", "unlock"]  # worker: stop-first
    assert (f"Start-first: app went back to {NAME}@{D1} the same way, never without a "
            "serving container.") in log
    assert world.running == {"app": D1, "worker": D1}


def test_pause_leaves_the_switched_batches_and_reports_failed(
        world: World, run: Any, steps: FakeSteps) -> None:  # noqa: F811
    world.project = project({"deploy": {"replicas": 2, "update_config": {
        **START_FIRST, "parallelism": 1, "failure_action": "pause"}}}, worker=False)
    world.health = [True, False]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert deploy_calls(world) == [
        "start app v2.0.0 x1 app", "health shop", "retire app-0",
        "start app v2.0.0 x1 app", "health shop", "discard app-2", "verify lock", "unlock"]
    assert (f"app keep(s) running {NAME}:v2.0.0@{D2} (failure_action: pause): deploy a "
            "release to finish.") in log


def test_a_signal_in_the_window_removes_the_new_containers_quickly(
        world: World, run: Any, steps: FakeSteps, tmp_path: Path) -> None:  # noqa: F811
    world.signal_at = {"health": signal.SIGTERM}
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert deploy_calls(world) == ["start app v2.0.0 x1 app", "health shop",
                                   "discard app-1 within 2 s", "unlock"]
    assert (f"::error title=Deploy cancelled::Cancelled (SIGTERM) during the health wait of "
            f"the new app containers. Start-first: app kept serving {NAME}@{D1} throughout"
            ) in log
    assert world.running == {"app": D1, "worker": D1}


def test_one_shots_run_first_and_the_selection_matches_the_deploys_up(
        world: World, run: Any, steps: FakeSteps) -> None:  # noqa: F811
    world.project = project(one_shots=("migrate",))
    code, _, _ = run("deploy", image_tag="v2.0.0")
    assert code == 0
    assert deploy_calls(world)[:2] == [f"one-shots v2.0.0@{D2}", "start app v2.0.0 x1 app"]


def test_a_first_deploy_is_a_plain_up(world: World, run: Any, steps: FakeSteps) -> None:  # noqa: F811
    world.running = {}
    code, outputs, _ = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (0, "deployed")
    assert deploy_calls(world) == [f"up v2.0.0@{D2}", "health shop", "unlock"]


def test_the_plan_says_start_first(world: World, run: Any, steps: FakeSteps) -> None:  # noqa: F811
    code, _, log = run("deploy", image_tag="v2.0.0", dry_run="true")
    assert code == 0
    assert f"| app | {D1} | {D2} | start-first |" in log
    assert (f"Plan: pull {NAME}:v2.0.0@{D2}, then start app beside the running containers "
            "(start-first), then `docker compose up -d --no-build --remove-orphans`.") in log
    assert f"| worker | {D1} | {D2} | recreate |" in log


@pytest.mark.parametrize(("app", "said"), [
    ({"ports": [{"target": 8080, "published": "8080", "host_ip": "127.0.0.1"}]},
     "Service 'app' asks for `order: start-first` but publishes host port 127.0.0.1:8080"),
    ({"container_name": "shop-app"},
     "Service 'app' asks for `order: start-first` but sets `container_name: shop-app`"),
])
def test_what_cannot_run_twice_is_refused_before_anything_changes(
        world: World, run: Any, steps: FakeSteps, app: dict[str, Any], said: str) -> None:  # noqa: F811
    world.project = project({**app, "deploy": {"replicas": 1, "update_config": START_FIRST}})
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    [error] = [line for line in log.splitlines() if line.startswith("::error")]
    assert said in error
    assert "lock shop" not in world.calls and not any(
        c.startswith(("pull", "up", "start")) for c in world.calls)
