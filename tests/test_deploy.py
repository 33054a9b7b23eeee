"""The deploy orchestration with every outside system faked (no daemon, no registry)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker.errors
import pytest

import deploykit.commands.deploy_run as deploy_command
from deploykit.actions import Actions
from deploykit.cancel import CancelGuard
from deploykit.cli import main
from deploykit.compose import ComposeProject
from deploykit.containers import RunningService
from deploykit.deploy.rollout import UP_GRACE
from deploykit.deploy.runtime import Runtime
from deploykit.dockercli import DockerCLI
from deploykit.errors import (
    DeployError,
    DeploykitError,
    DockerError,
    LockError,
    OneShotError,
    UnauthorizedError,
)
from deploykit.health import ContainerHealth, HealthReport
from deploykit.history import History, HistoryEntry, stack_from_labels, trail_from_labels
from tests.conftest import parse_github_output

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
NAME = "127.0.0.1:5000/org/app"
TAGS = {"v1.0.0": D1, "v2.0.0": D2, "v3.0.0": D3, "staging-latest": D2}


@dataclass
class World:
    """What the fakes saw and what they answer."""

    calls: list[str] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)  # service -> digest
    health: list[bool] = field(default_factory=list)  # one verdict per health run
    pull_fails: bool = False
    smoke_fails: bool = False
    signal_at: dict[str, int] = field(default_factory=dict)  # phase -> signal sent there
    timeouts: list[tuple[str, float | None]] = field(default_factory=list)
    give_up_at: list[float | None] = field(default_factory=list)
    lock_lost: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # deploykit's, on the containers
    images: set[str] = field(default_factory=set)  # `registry/repo@digest` on the engine
    verified: list[str] = field(default_factory=list)  # the engine's verified markers
    leftovers: list[str] = field(default_factory=list)  # names an interrupted `up` left
    restore_fails: list[Exception] = field(default_factory=list)  # per restore `up`
    pruned: list[str] = field(default_factory=list)  # the digests pruning ran after
    # What a test makes a fake do instead (handed in through the runtime):
    project: ComposeProject | None = None  # what `docker compose config` reads
    up_release: Any = None  # (compose, project, **options) -> one-shots done
    after_up: Any = None  # (compose) after each `up`
    lock_held: str = ""  # the engine lock is refused with this message
    login: Any = None  # (registry, username, password) in place of `docker login`
    history_fails: bool = False  # the history file cannot be written
    smoke: Any = None  # (urls) in place of the smoke test
    github: Any = None  # the GitHub recorder (None: no token)

    def at(self, phase: str) -> None:
        """A phase runs: send ourselves the signal planned for it (once)."""
        if phase in self.signal_at:
            os.kill(os.getpid(), self.signal_at.pop(phase))


@dataclass(frozen=True)
class FakeCompose:
    world: World
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def load(self, service_env: dict[str, str]) -> ComposeProject:
        self.world.calls.append("compose config")
        return self.world.project or ComposeProject(
            Path("."), Path("compose.yaml"), "shop", ("app", "db", "worker"), ("app", "worker"))

    def config(self) -> dict[str, Any]:
        self.world.calls.append(f"compose config {self.env['IMAGE_TAG']}")
        return {}

    def with_env(self, service_env: dict[str, str], image_env: dict[str, str]) -> FakeCompose:
        return replace(self, env={**service_env, **image_env})

    @contextmanager
    def for_engine(self, mounts: dict[str, str]) -> Iterator[FakeCompose]:
        yield self

    def pull(self, services: tuple[str, ...] = (), *, timeout: float | None = None) -> None:
        self.world.calls.append(f"pull {self.env['IMAGE_TAG']}"
                                + "".join(f" {service}" for service in services))
        self.world.timeouts.append(("pull", timeout))
        self.world.at("pull")
        if self.world.pull_fails:
            raise DockerError("`docker compose pull` failed:\nmanifest unknown")

    def up(self, *, force_recreate: bool = False, timeout: float | None = None,
           give_up_at: Any = None) -> None:
        self.world.calls.append(f"up {self.env['IMAGE_TAG']}"
                                + (" --force-recreate" if force_recreate else ""))
        self.world.timeouts.append(("up", timeout))
        digest = self.env["IMAGE_TAG"].partition("@")[2]
        self.world.running = {"app": digest, "worker": digest}
        self.world.at("up")
        if give_up_at is not None:
            self.world.give_up_at.append(give_up_at())
        if self.world.after_up:
            self.world.after_up(self)

    def up_release(self, project: ComposeProject, *, one_shot_timeout: float = 0,
                   **options: Any) -> tuple[str, ...]:
        if self.world.up_release:
            done: tuple[str, ...] = self.world.up_release(self, project, **options)
            return done
        self.up(**options)
        return ()

    def up_one_shots(self, project: ComposeProject, **options: Any) -> tuple[str, ...]:
        if project.one_shot_services:
            self.world.calls.append(f"one-shots {self.env['IMAGE_TAG']}")
        return project.one_shot_services

    def up_long_running(self, project: ComposeProject, **options: Any) -> None:
        self.up(**options)

    @staticmethod
    def selection(project: ComposeProject, service: str | None = None) -> list[str]:
        return [service] if service else []

    def restore(self, project: ComposeProject, *, services: Any = None,
                **options: Any) -> None:
        if self.world.restore_fails:
            self.world.calls.append(f"restore fails {self.env['IMAGE_TAG']}")
            raise self.world.restore_fails.pop(0)
        if services is not None:
            self.world.calls.append(f"restore {' '.join(services)}")
        self.up(**options)


class FakeWatch:
    world: World

    def __init__(self, api: Any, project: str, *, timeout: float, settle: float,
                 **options: Any) -> None:
        self.world.calls.append(f"health {project}")
        self.world.timeouts.append(("health", timeout))

    def wait(self) -> HealthReport:
        self.world.at("health")
        ok = self.world.health.pop(0) if self.world.health else True
        app = ContainerHealth("app", "shop-app-1", "a", "running" if ok else "exited",
                              verdict="healthy" if ok else "failed",
                              reason="" if ok else "exited with code 3")
        return HealthReport([app])


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    world = World()

    class Registry:
        def __init__(self, registry: str, repository: str, username: str, password: str,
                     on_retry: Any = None) -> None:
            world.calls.append(f"registry {registry}/{repository}")

        def resolve(self, reference: str) -> str:
            world.calls.append(f"resolve {reference}")
            return TAGS.get(reference, reference)

    class Api:
        def inspect_image(self, reference: str) -> dict[str, Any]:
            if reference not in world.images:
                raise docker.errors.ImageNotFound(f"No such image: {reference}")
            return {"Id": "sha256:local"}

        def containers(self, all: bool, filters: dict[str, Any]) -> list[dict[str, Any]]:
            labels = {**world.labels, "com.docker.compose.project": "shop"}
            left = [{"Id": name, "Names": [f"/{name}"], "State": "created",
                     "Labels": {"com.docker.compose.project": "shop",
                                "com.docker.compose.service": "app"}}
                    for name in world.leftovers]
            return ([{"Labels": labels, "State": "running", "Created": 1}] if world.labels
                    else []) + left

        def remove_container(self, container: str, force: bool) -> None:
            world.calls.append(f"remove {container}")
            world.leftovers.remove(container)

        def networks(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
            if not filters["label"][0].startswith("deploykit.verified.project="):
                return []  # the release record: `world.labels`, read as container labels
            return [{"Id": f"net-{n}", "Created": f"{n:04d}",
                     "Labels": {"deploykit.verified": digest}}
                    for n, digest in enumerate(world.verified)]

        def remove_network(self, network: str) -> None:
            world.verified[int(network.removeprefix("net-"))] = ""

    class Client:
        api = Api()

    def client(env: Any) -> Client:
        world.calls.append("engine")
        return Client()

    def verify(self: Any) -> None:
        world.calls.append("verify lock")
        if world.lock_lost:
            raise LockError("The lock deploykit-lock-shop was taken over while this deploy ran.")

    @contextmanager
    def lock(client: Any, holder: Any, *, timeout: float, actions: Any) -> Iterator[Any]:
        if world.lock_held:
            raise LockError(world.lock_held)
        world.calls.append(f"lock {holder.project}")
        try:
            yield type("Lock", (), {"verify": verify})()
        finally:
            world.calls.append("unlock")

    def running(api: Any, project: str, image_name: str, services: Any) -> list[Any]:
        return [RunningService(s, f"id-{s}", f"{image_name}:v@{d}", d)
                for s, d in sorted(world.running.items())]

    def smoke(urls: Any, **kwargs: Any) -> list[Any]:
        if world.smoke:
            return list(world.smoke(urls))
        world.calls.append(f"smoke {' '.join(urls)}")
        world.at("smoke")
        if world.smoke_fails:
            raise DeployError("Smoke test: http://x/ answered 500, expected 200 (retried for 1 s).")
        return []

    def mark(api: Any, name: str, labels: dict[str, str]) -> str:
        if "deploykit.verified" not in labels:  # the release record, before an `up`
            world.labels = {key: value for key, value in labels.items()
                            if key in ("deploykit.release", "deploykit.history")}
            return "record"
        world.verified.append(labels["deploykit.verified"])
        return f"net-{len(world.verified) - 1}"

    class WorldDocker(DockerCLI):
        def login(self, registry: str, username: str, password: str) -> None:
            if world.login:
                world.login(registry, username, password)
            else:
                super().login(registry, username, password)

        @contextmanager
        def logged_in(self, registry: str, username: str, password: str) -> Iterator[None]:
            with super().logged_in(registry, username, password):
                yield
            world.at("logout")

    class WorldHistory(History):
        def append(self, entry: HistoryEntry) -> None:
            if world.history_fails:
                raise DeploykitError(f"Cannot write the deploy history {self.path}: No space "
                                     "left on device.", title="History not writable")
            super().append(entry)

    create = Runtime.create

    def with_fakes(settings: Any, actions: Actions, env: Any = None, *, docker: Any = None,
                   project: Any = None) -> Runtime:
        runtime = create(settings, actions, env, docker=WorldDocker(actions, env),
                         project=project)
        return replace(
            runtime, github=world.github,
            history=WorldHistory(runtime.history.directory, runtime.history.warn),
            registry_client=lambda settings, actions: Registry(
                settings.registry, settings.image_repo, "", ""),
            engine_client=client, engine_lock=lock,
            own_container=lambda api, candidates: None, running_services=running,
            health_watch=FakeWatch, report_failures=lambda api, report, actions: None,
            smoke_test=smoke, mark_network=mark,
            prune=lambda runtime, project, release: world.pruned.append(release.digest))

    FakeWatch.world = world
    monkeypatch.setattr(Runtime, "create", staticmethod(with_fakes))
    # The config where the deploy takes its result, so the calls the tests assert keep
    # one order (the thread has its own test).
    monkeypatch.setattr(deploy_command, "start_project_load",
                        lambda settings, docker: LoadWhenAsked(world, settings))
    return world


class LoadWhenAsked:
    """In place of the background `docker compose config`."""

    def __init__(self, world: World, settings: Any) -> None:
        self.world, self.settings = world, settings

    def result(self) -> Any:
        compose = FakeCompose(self.world)
        project = compose.load(dict(self.settings.compose_env))
        return replace(compose, name=project.name), project


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def runner(command: str, *flags: str, **inputs: str) -> tuple[int, dict[str, str], str]:
        output = tmp_path / "github_output"
        output.write_text("")
        (tmp_path / "compose.yaml").touch()  # the workspace's project (checked before all)
        env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
               "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "GITHUB_REPOSITORY": "org/app",
               "GITHUB_RUN_ID": "42", "GITHUB_ACTOR": "ana", "GITHUB_WORKSPACE": str(tmp_path),
               "INPUT_REGISTRY": "127.0.0.1:5000", "INPUT_STATE_DIR": str(tmp_path / "state"),
               "INPUT_ENVIRONMENT": "staging", "INPUT_HEALTH_SETTLE": "0"}
        env.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
        code = main([command, *flags], env=env)
        return code, parse_github_output(output.read_text()), capsys.readouterr().out

    return runner


def history(tmp_path: Path) -> list[HistoryEntry]:
    return History(tmp_path / "state").entries()


@pytest.mark.parametrize(("others", "pulled", "said"), [
    ((), [], "nothing to pull."),
    (("db", "redis"), [f"pull v2.0.0@{D2} db redis"], "pulling only db, redis."),
])
def test_a_digest_the_engine_has_is_not_pulled_again(
        world: World, run: Any, monkeypatch: pytest.MonkeyPatch, others: tuple[str, ...],
        pulled: list[str], said: str) -> None:
    """A redeploy or a rollback: the services of the deployed image have nothing to pull;
    the other services are pulled as `docker compose pull` would (their tags may move)."""
    world.images = {f"{NAME}@{D2}"}
    project = ComposeProject(Path("."), Path("compose.yaml"), "shop",
                             tuple(sorted(("app", "worker", *others))), ("app", "worker"))
    world.project = project
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (0, "deployed"), log
    assert [call for call in world.calls if call.startswith("pull")] == pulled
    assert f"{NAME}@{D2} is on this engine already: {said}" in log


def test_deploy_happy_path(world: World, run: Any, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/",
                             compose_env="DATABASE_URL=postgres://u:pw@db/x")
    assert code == 0
    assert world.calls == [
        "registry 127.0.0.1:5000/org/app", "resolve v2.0.0", "compose config",
        "engine", "lock shop", f"pull v2.0.0@{D2}",
        "verify lock", f"up v2.0.0@{D2}", "health shop", "smoke http://x/", "unlock"]
    assert {k: outputs[k] for k in ("digest", "image", "previous_image", "status")} == {
        "digest": D2, "image": f"{NAME}@{D2}", "previous_image": f"{NAME}@{D1}",
        "status": "deployed"}
    [entry] = history(tmp_path)
    assert (entry.action, entry.tag, entry.digest, entry.previous_digest, entry.status,
            entry.project, entry.run_url) == (
        "deploy", "v2.0.0", D2, D1, "deployed", "shop",
        "https://github.com/org/app/actions/runs/42")
    summary = (tmp_path / "summary").read_text()
    assert "| status | deployed |" in summary
    assert "| app | shop-app-1 | running | - | 0 | healthy |" in summary
    assert "::add-mask::postgres://u:pw@db/x" in log


def test_production_latest_is_refused_before_any_connection(world: World, run: Any) -> None:
    code, outputs, log = run("deploy", environment="production", image_tag="latest")
    assert code == 1
    assert world.calls == []
    assert "Refusing to deploy `latest` to production environment production" in log
    assert "digest" not in outputs


def test_errors_after_the_gate_report_status_failed(world: World, run: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    world.lock_held = "Another deploy of project 'shop' holds the lock."
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert "Another deploy of project 'shop' holds the lock." in log


def test_a_failed_one_shot_replaced_nothing_and_is_not_rolled_back(
        world: World, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: `migrate` exits 1 before app and worker are replaced."""
    world.running = {"app": D1, "worker": D1}

    def failing(self: FakeCompose, project: ComposeProject, **options: Any) -> tuple[str, ...]:
        world.calls.append(f"migrate {self.env['IMAGE_TAG']}")
        raise OneShotError("One-shot service migrate (shop-migrate-1) exited with code 1. "
                           "Nothing else was replaced.")

    world.up_release = failing
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert world.calls[world.calls.index(f"migrate v2.0.0@{D2}"):] == \
        [f"migrate v2.0.0@{D2}", "unlock"]  # no health wait, no restore
    assert world.running == {"app": D1, "worker": D1}
    assert "exited with code 1. Nothing else was replaced." in log
    assert "Rolling back" not in log
    assert [(e.status, e.digest) for e in history(tmp_path)] == [("failed", D2)]
    assert "| status | failed |" in (tmp_path / "summary").read_text()


def test_a_rollback_after_a_migration_says_the_schema_stays(
        world: World, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False, True]

    def migrated(self: FakeCompose, project: ComposeProject, **options: Any) -> tuple[str, ...]:
        self.up(**options)
        return ("migrate",)

    world.up_release = migrated
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    note = ("The one-shot service(s) migrate completed in the failed release: its migrations "
            "ran, and the schema is not rolled back with the code.")
    assert "::warning title=The schema is not rolled back::" + note in log
    assert "**Note:** " + note in (tmp_path / "summary").read_text()


def test_a_rollback_without_one_shots_has_no_schema_note(world: World, run: Any,
                                                          tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False, True]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert "schema" not in log and "schema" not in (tmp_path / "summary").read_text()


def test_force_redeploy_recreates(world: World, run: Any) -> None:
    code, _, _ = run("deploy", image_tag="v2.0.0", force_redeploy="true")
    assert code == 0
    assert f"up v2.0.0@{D2} --force-recreate" in world.calls


def test_failed_health_rolls_back_to_what_ran(world: World, run: Any, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False, True]
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert code == 1
    assert world.calls[world.calls.index(f"up v2.0.0@{D2}"):] == [
        f"up v2.0.0@{D2}", "health shop", "verify lock", f"up v@{D1}", "health shop",
        "unlock"]
    assert outputs["status"] == "rolled_back"
    assert outputs["previous_image"] == f"{NAME}@{D1}"
    assert ("Health check failed: app (shop-app-1) exited with code 3. Rolled back: "
            f"{NAME}@{D1} runs again and is healthy.") in log
    assert [(e.status, e.digest, e.previous_digest) for e in history(tmp_path)] == \
        [("rolled_back", D2, D1)]
    summary = (tmp_path / "summary").read_text()
    assert "#### Health of the new containers" in summary
    assert "#### Health after the rollback" in summary


def test_failed_smoke_test_rolls_back(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    world.smoke_fails = True
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert "Smoke test: http://x/ answered 500" in log


def test_failure_without_previous_deployment_leaves_the_containers(
        world: World, run: Any, tmp_path: Path) -> None:
    world.health = [False]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert world.calls.count("health shop") == 1
    assert not any(call.startswith("up v@") for call in world.calls)
    assert "Not rolled back (there was no previous deployment): the failing containers are " \
           "left for inspection." in log
    assert [e.status for e in history(tmp_path)] == ["failed"]


def test_rollback_on_failure_false_keeps_the_failure(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False]
    code, outputs, log = run("deploy", image_tag="v2.0.0", rollback_on_failure="false")
    assert (code, outputs["status"]) == (1, "failed")
    assert "Not rolled back (rollback_on_failure is false)" in log


def test_pull_failure_changes_nothing(world: World, run: Any, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.pull_fails = True
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert not any(call.startswith("up ") for call in world.calls)
    assert world.calls[-1] == "unlock"
    assert "Pull failed, nothing was changed" in log
    assert [e.status for e in history(tmp_path)] == ["failed"]


def test_dry_run_plans_without_lock_or_change(world: World, run: Any, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D2}
    code, outputs, _ = run("deploy", image_tag="v2.0.0", dry_run="true")
    assert code == 0
    assert outputs["status"] == "planned"
    assert outputs["digest"] == D2
    assert not any(c.startswith(("lock", "pull", "up")) for c in world.calls)
    summary = (tmp_path / "summary").read_text()
    assert f"| app | {D1} | {D2} | recreate |" in summary
    assert f"| worker | {D2} | {D2} | unchanged |" in summary
    assert history(tmp_path) == []


def test_digest_mismatch_after_up_fails(world: World, run: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    world.running = {"app": D1, "worker": D1}
    def worker_keeps_old(compose: FakeCompose) -> None:
        if compose.env["IMAGE_TAG"].endswith(D2):
            world.running["worker"] = D3

    world.after_up = worker_keeps_old
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert f"Digest check failed: expected {D2}; worker runs {D3}." in log


def test_rollback_twice_walks_the_history(world: World, run: Any, tmp_path: Path) -> None:
    for tag in ("v1.0.0", "v2.0.0", "v3.0.0"):
        assert run("deploy", image_tag=tag)[0] == 0
    code, outputs, _ = run("rollback")
    assert (code, outputs["status"], outputs["digest"]) == (0, "rolled_back", D2)
    assert world.calls[-5:] == [f"pull v2.0.0@{D2}", "verify lock", f"up v2.0.0@{D2}",
                                "health shop", "unlock"]
    code, outputs, _ = run("rollback")
    assert (code, outputs["digest"]) == (0, D1)
    entries = history(tmp_path)
    assert [(e.action, e.tag, e.rolled_back_from) for e in entries[-2:]] == [
        ("rollback", "v2.0.0", D3), ("rollback", "v1.0.0", D2)]
    code, outputs, log = run("rollback")
    assert code == 1
    assert "No release before the current one of project 'shop' in staging" in log


def test_rollback_goes_through_the_production_gate(world: World, run: Any,
                                                   tmp_path: Path) -> None:
    state = History(tmp_path / "state")
    for tag, digest in (("staging-latest", D1), ("v2.0.0", D2)):
        state.append(HistoryEntry("2026-01-01T00:00:00Z", "deploy", "production", "shop", tag,
                                  digest, "", "deployed", 1.0))
    code, _, log = run("rollback", environment="production")
    assert code == 1
    assert "Refusing to deploy `staging-latest@" in log
    assert not any(call.startswith(("lock", "up")) for call in world.calls)


def test_rollback_to_a_given_tag(world: World, run: Any) -> None:
    world.running = {"app": D3, "worker": D3}
    code, outputs, _ = run("rollback", image_tag="v1.0.0")
    assert (code, outputs["digest"], outputs["previous_image"]) == (0, D1, f"{NAME}@{D3}")


def test_history_command_reads_what_deploys_wrote(world: World, run: Any) -> None:
    run("deploy", image_tag="v1.0.0")
    code, _, log = run("history")
    assert code == 0
    assert "v1.0.0" in log and "deployed" in log


def test_signal_handlers_are_restored() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with CancelGuard().installed():
        assert all(signal.getsignal(signum) is not handler for signum, handler in before.items())
    assert {signum: signal.getsignal(signum) for signum in before} == before



# -- GitHub deployments (the recorder itself is tested in test_github.py) -----------------
@dataclass
class FakeRecorder:
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    previous: Any = None

    def start_deployment(self, **kwargs: Any) -> Any:
        self.calls.append(("start", kwargs))
        return type("Record", (), {"id": 7, "environment": kwargs["environment"],
                                   "html_url": "https://github.com/org/app/deployments"})()

    def finish_deployment(self, record: Any, **kwargs: Any) -> None:
        self.calls.append(("finish", record.id, kwargs))

    def release_for(self, tag: str) -> Any:
        return None

    def previous_successful_deployment(self, environment: str, exclude_digest: str) -> Any:
        self.calls.append(("previous", environment, exclude_digest))
        return self.previous


@pytest.fixture
def recorder(world: World) -> FakeRecorder:
    world.github = FakeRecorder()
    return world.github


def test_deploy_is_recorded_as_a_github_deployment(
        world: World, run: Any, recorder: FakeRecorder, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    code, _, _ = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert code == 0
    assert recorder.calls == [
        ("start", {"environment": "staging", "ref": "v2.0.0", "image": NAME,
                   "tag": "v2.0.0", "digest": D2, "is_production": False,
                   "description": f"deploykit deploy: v2.0.0@{D2}"}),
        ("finish", 7, {"success": True, "environment_url": "http://x/",
                       "description": f"v2.0.0@{D2} is live"}),
    ]
    assert ("- GitHub deployment: [#7 to `staging`](https://github.com/org/app/deployments)"
            in (tmp_path / "summary").read_text())


def test_rolled_back_deploy_marks_the_github_deployment_failed(
        world: World, run: Any, recorder: FakeRecorder) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False, True]
    code, outputs, _ = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    [finish] = [call for call in recorder.calls if call[0] == "finish"]
    assert finish[2]["success"] is False
    assert finish[2]["description"].startswith(
        "Health check failed: app (shop-app-1) exited with code 3. Rolled back:")


def test_a_cancel_during_the_login_closes_the_github_deployment(
        world: World, run: Any, recorder: FakeRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    def cancelled_login(registry: str, username: str, password: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    world.login = cancelled_login
    code, outputs, _ = run("deploy", image_tag="v2.0.0", registry_password="pw")
    assert (code, outputs["status"]) == (1, "failed")
    [finish] = [call for call in recorder.calls if call[0] == "finish"]
    assert (finish[2]["success"], finish[2]["description"]) == (
        False, "Cancelled (SIGINT) before anything was changed")


def test_rollback_without_history_asks_github(
        world: World, run: Any, recorder: FakeRecorder) -> None:
    world.running = {"app": D3, "worker": D3}
    recorder.previous = type("Prev", (), {"id": 5, "tag": "v1.0.0", "digest": D1})()
    code, outputs, log = run("rollback")
    assert (code, outputs["digest"]) == (0, D1)
    assert ("previous", "staging", D3) in recorder.calls
    assert f"No local history: rolling back to v1.0.0 ({D1}) from GitHub deployment #5." in log


# -- cancel (SIGINT/SIGTERM), lost lock, history, rollback target --------------------------
def test_signal_during_the_pull_stops_it_and_changes_nothing(world: World, run: Any,
                                                              tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.signal_at = {"pull": signal.SIGINT}
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert not any(call.startswith("up ") for call in world.calls)
    assert world.calls[-1] == "unlock"
    assert (f"::error title=Deploy cancelled::Cancelled (SIGINT) during the pull: nothing was "
            f"changed; {NAME}@{D1} still runs.") in log
    assert [(e.status, e.digest) for e in history(tmp_path)] == [("failed", D2)]


def test_signal_during_the_login_stops_before_anything(world: World, run: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    world.running = {"app": D1, "worker": D1}

    def hanging_login(registry: str, username: str, password: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # a registry that does not answer

    world.login = hanging_login
    started = time.monotonic()
    code, outputs, log = run("deploy", image_tag="v2.0.0", registry_password="pw")
    assert time.monotonic() - started < 10
    assert (code, outputs["status"]) == (1, "failed")
    assert "Cancelled (SIGTERM) before anything was changed." in log
    assert not any(call.startswith(("pull", "up")) for call in world.calls)
    assert world.calls[-1] == "unlock"


def test_a_failed_login_under_the_lock_writes_its_history_line(
        world: World, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: every ending past the lock has its history line and its status."""
    def refused(registry: str, username: str, password: str) -> None:
        raise UnauthorizedError("docker login to 127.0.0.1:5000 as ana failed: denied")

    world.login = refused
    code, outputs, _ = run("deploy", image_tag="v2.0.0", registry_password="pw")
    assert (code, outputs["status"]) == (1, "failed")
    assert [(e.tag, e.status) for e in history(tmp_path)] == [("v2.0.0", "failed")]


@pytest.mark.parametrize(("phase", "signum", "during"), [
    ("up", signal.SIGTERM, "`docker compose up`"),
    ("health", signal.SIGINT, "the health wait"),
    ("smoke", signal.SIGTERM, "the smoke test"),
])
def test_signal_after_up_restores_the_verified_release(
        world: World, run: Any, tmp_path: Path, phase: str, signum: int, during: str) -> None:
    world.running = {"app": D1, "worker": D1}
    world.signal_at = {phase: signum}
    code, outputs, log = run("deploy", image_tag="v2.0.0", smoke_url="http://x/")
    assert (code, outputs["status"]) == (1, "rolled_back")
    after_up = world.calls[world.calls.index(f"up v2.0.0@{D2}") + 1:]
    assert after_up[-4:] == ["verify lock", f"up v@{D1}", "health shop", "unlock"]
    assert world.running == {"app": D1, "worker": D1}
    name = signal.Signals(signum).name
    assert (f"::error title=Deploy cancelled and rolled back::Cancelled ({name}) during "
            f"{during}. Rolled back: {NAME}@{D1} runs again and is healthy.") in log
    assert [(e.status, e.digest, e.previous_digest) for e in history(tmp_path)] == \
        [("rolled_back", D2, D1)]
    restore_health = world.timeouts[-1]
    assert restore_health[0] == "health" and restore_health[1] <= 7.0  # type: ignore[operator]


def test_an_in_flight_up_gets_a_bounded_grace(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    world.signal_at = {"up": signal.SIGINT}
    run("deploy", image_tag="v2.0.0")
    [moment] = world.give_up_at
    assert moment is not None and moment - time.monotonic() <= UP_GRACE


def test_without_signal_every_docker_step_has_its_timeout(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    run("deploy", image_tag="v2.0.0", health_timeout="30")
    assert world.timeouts == [("pull", 900), ("up", 150), ("health", 30)]
    assert world.give_up_at == [None]


def test_signal_with_no_verified_release_before_leaves_the_new_one(world: World, run: Any,
                                                                    tmp_path: Path) -> None:
    world.signal_at = {"health": signal.SIGINT}
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert (f"Cancelled (SIGINT) during the health wait: {NAME}:v2.0.0@{D2} was not verified, "
            "and no verified release ran before it: it is left as it is.") in log
    assert [e.status for e in history(tmp_path)] == ["failed"]


def test_a_cancel_restores_even_with_rollback_on_failure_false(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    world.signal_at = {"health": signal.SIGTERM}
    code, outputs, _ = run("deploy", image_tag="v2.0.0", rollback_on_failure="false")
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert world.running == {"app": D1, "worker": D1}


def test_a_signal_during_the_rollback_lets_the_restore_finish(world: World, run: Any,
                                                              tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False]

    original_up = FakeCompose.up

    def up(self: FakeCompose, **kwargs: Any) -> None:
        if self.env["IMAGE_TAG"].endswith(D1):  # the restore: SIGINT while it runs
            world.signal_at["up"] = signal.SIGINT
        original_up(self, **kwargs)

    FakeCompose.up = up  # type: ignore[method-assign]
    try:
        code, outputs, log = run("deploy", image_tag="v2.0.0")
    finally:
        FakeCompose.up = original_up  # type: ignore[method-assign]
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert world.running == {"app": D1, "worker": D1}
    assert f"{NAME}@{D1} was restored; the cancel came before its health was confirmed" in log
    assert [e.status for e in history(tmp_path)] == ["rolled_back"]


def test_a_signal_after_verification_keeps_the_release(world: World, run: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    world.running = {"app": D1, "worker": D1}
    world.signal_at = {"logout": signal.SIGTERM}  # after the verdict, before the records
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (0, "deployed")
    assert (f"SIGTERM came after {NAME}:v2.0.0@{D2} was verified: the deploy is complete, "
            "there is nothing to undo.") in log


def test_a_lost_lock_stops_before_up_and_restores_nothing(world: World, run: Any,
                                                          tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.lock_lost = True
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed")
    assert world.calls[-3:] == [f"pull v2.0.0@{D2}", "verify lock", "unlock"]
    assert ("::error title=Deploy lock held::The lock deploykit-lock-shop was taken over while "
            "this deploy ran. Stopped before `docker compose up`: this deploy changes nothing "
            "and restores nothing under another deploy's lock.") in log
    assert [e.status for e in history(tmp_path)] == ["failed"]


def test_a_lock_lost_during_the_health_wait_restores_nothing(world: World, run: Any) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = [False]
    original = FakeWatch.wait

    def wait(self: FakeWatch) -> HealthReport:
        world.lock_lost = True  # a competitor took the lock over meanwhile
        return original(self)

    FakeWatch.wait = wait  # type: ignore[method-assign]
    try:
        code, outputs, log = run("deploy", image_tag="v2.0.0")
    finally:
        FakeWatch.wait = original  # type: ignore[method-assign]
    assert (code, outputs["status"]) == (1, "failed")
    assert not any(call.startswith("up v@") for call in world.calls)
    assert "Stopped before the rollback" in log


def test_an_unwritable_state_dir_fails_before_anything(world: World, run: Any,
                                                        tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    code, outputs, log = run("deploy", image_tag="v2.0.0",
                             state_dir=str(tmp_path / "blocker" / "state"))
    assert (code, outputs["status"]) == (1, "failed")
    assert not any(call.startswith(("lock", "pull", "up")) for call in world.calls)
    assert "::Input 'state_dir': the deploy history " \
           f"{tmp_path / 'blocker' / 'state' / 'history.jsonl'} is not writable (" in log


@pytest.mark.parametrize(("health", "code", "status", "visible"), [
    ([True], 0, "deployed", "runs 127.0.0.1:5000/org/app:v2.0.0@"),
    ([False, True], 1, "rolled_back", "Health check failed: app (shop-app-1) exited with code 3"),
])
def test_a_history_that_fails_late_keeps_the_true_status(
        world: World, run: Any, monkeypatch: pytest.MonkeyPatch, health: list[bool],
        code: int, status: str, visible: str) -> None:
    world.running = {"app": D1, "worker": D1}
    world.health = health

    world.history_fails = True
    got, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (got, outputs["status"]) == (code, status)
    assert visible in log
    assert f"No space left on device. The deploy is still `{status}`; only its history line " \
           "is missing." in log


def test_containers_of_a_failed_deploy_are_never_the_rollback_target(
        world: World, run: Any, tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    assert run("deploy", image_tag="v1.0.0")[0] == 0
    world.health = [False]
    code, outputs, _ = run("deploy", image_tag="v2.0.0", rollback_on_failure="false")
    assert (code, outputs["status"], world.running["app"]) == (1, "failed", D2)

    world.health = [False, True]
    code, outputs, log = run("deploy", image_tag="v3.0.0")
    assert outputs["previous_image"] == f"{NAME}@{D1}"
    assert f"Running now: {NAME}@{D2}, which no deploy verified" in log
    assert f"Running now: {NAME}@{D2}." not in log
    assert (code, outputs["status"]) == (1, "rolled_back")
    assert f"up v1.0.0@{D1}" in world.calls
    assert world.running == {"app": D1, "worker": D1}
    assert history(tmp_path)[-1].previous_digest == D1


def test_a_bare_digest_is_a_valid_reference_with_a_meaningful_tag(world: World, run: Any,
                                                                  tmp_path: Path) -> None:
    code, outputs, log = run("deploy", image_tag=D3)
    assert code == 0, log
    assert f"up sha256-333333333333@{D3}" in world.calls
    assert f"Deploying {NAME}@{D3}." in log
    assert f"{NAME}:sha256:" not in log and "pinned" not in log
    assert outputs["image"] == f"{NAME}@{D3}"

    assert run("deploy", image_tag="v3.0.0")[0] == 0  # the history now knows v3.0.0 = D3
    code, _, log = run("deploy", image_tag=D3, force_redeploy="true")
    assert f"up v3.0.0@{D3} --force-recreate" in world.calls
    assert f"Deploying {NAME}:v3.0.0@{D3} (the tag that named it in the history)." in log


def _release(world: World) -> tuple[str, list[str]]:
    """The tag in the containers' release label, and the tags of the verified releases
    below it (the stack the trail of events gives)."""
    release = json.loads(world.labels["deploykit.release"])
    stack = stack_from_labels(world.labels)
    return release["tag"], [entry.tag for entry in stack[:-1]]


def _trail(world: World) -> list[tuple[str, str, str]]:
    """The events the labels carry: (action, tag, status)."""
    return [(entry.action, entry.tag, entry.status)
            for entry in trail_from_labels(world.labels)]


def test_rollback_reads_the_engine_when_no_history_file_survived(
    world: World, run: Any, tmp_path: Path,
) -> None:
    """Issue 14: every run in a new action container, so a new empty state_dir each time."""
    fresh = iter(str(tmp_path / f"fresh-{n}") for n in range(10))
    for tag in ("v1.0.0", "v2.0.0", "v3.0.0"):
        assert run("deploy", image_tag=tag, state_dir=next(fresh))[0] == 0
    assert _release(world) == ("v3.0.0", ["v1.0.0", "v2.0.0"])
    code, outputs, log = run("rollback", state_dir=next(fresh))
    assert (code, outputs["status"], outputs["digest"]) == (0, "rolled_back", D2)
    assert f"Rolling back to v2.0.0 ({D2}), deployed " in log
    assert "(from the release record on the engine)." in log
    assert _release(world) == ("v2.0.0", ["v1.0.0"])
    code, outputs, _ = run("rollback", state_dir=next(fresh))
    assert (code, outputs["digest"]) == (0, D1)
    assert _release(world) == ("v1.0.0", [])
    # Issue 20: the labels keep the whole trail, rollbacks included.
    assert _trail(world) == [("deploy", "v1.0.0", "deployed"), ("deploy", "v2.0.0", "deployed"),
                             ("deploy", "v3.0.0", "deployed"),
                             ("rollback", "v2.0.0", "rolled_back"),
                             ("rollback", "v1.0.0", "rolled_back")]
    code, outputs, log = run("rollback", state_dir=next(fresh))
    assert code == 1
    assert "No release before the current one of project 'shop' in staging on the engine" in log


def test_a_redeploy_of_the_same_release_keeps_its_labels(world: World, run: Any) -> None:
    """Labels that changed would make compose recreate containers that did not change."""
    assert run("deploy", image_tag="v1.0.0")[0] == 0
    first = dict(world.labels)
    assert run("deploy", image_tag="v1.0.0")[0] == 0
    assert world.labels == first


def test_a_failed_deploy_restores_the_previous_labels(world: World, run: Any) -> None:
    assert run("deploy", image_tag="v1.0.0")[0] == 0
    first = dict(world.labels)
    world.health = [False, True]
    code, outputs, _ = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back")
    # The release is v1's, as it ran; the trail also records the deploy that failed.
    assert world.labels["deploykit.release"] == first["deploykit.release"]
    assert _trail(world) == [("deploy", "v1.0.0", "deployed"),
                             ("deploy", "v2.0.0", "rolled_back")]
    assert _release(world) == ("v1.0.0", [])


# -- issue 20: the restore path and the records -----------------------------------------
def test_a_restore_clears_what_an_interrupted_up_left(world: World, run: Any,
                                                      tmp_path: Path) -> None:
    world.running = {"app": D1, "worker": D1}
    world.images = {f"{NAME}@{D1}"}
    world.health = [False, True]
    world.leftovers = ["0123456789ab_shop-app-1"]
    world.restore_fails = [DockerError("`docker compose up` failed for project shop:\n"
                                       "Conflict. The container name is already in use")]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "rolled_back"), log
    assert world.calls[world.calls.index(f"up v2.0.0@{D2}"):] == [
        f"up v2.0.0@{D2}", "health shop", "verify lock", "remove 0123456789ab_shop-app-1",
        f"restore fails v@{D1}", f"up v@{D1}", "health shop", "unlock"]
    assert "Removed what the interrupted `docker compose up` left: 0123456789ab_shop-app-1." \
        in log
    assert f"{NAME}@{D1} runs again and is healthy" in log
    assert [e.status for e in history(tmp_path)] == ["rolled_back"]


@pytest.mark.parametrize("signal_at", [None, "health"])
def test_a_restore_that_cannot_pull_says_what_runs_and_records_it(
        world: World, run: Any, tmp_path: Path, signal_at: str | None) -> None:
    """The previous image is gone from the engine and the registry."""
    world.running = {"app": D1, "worker": D1}
    world.health = [False]
    if signal_at:
        world.signal_at = {signal_at: signal.SIGINT}
    world.restore_fails = [DockerError("`docker compose up` failed for project shop:\n"
                                       "manifest unknown")]
    code, outputs, log = run("deploy", image_tag="v2.0.0")
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "Traceback" not in log
    assert (f"The restore of {NAME}@{D1} failed too (its image is no longer on this engine "
            "and could not be pulled): `docker compose up` failed for project shop:\n"
            "manifest unknown") in log.replace("%0A", "\n")
    assert f"Running now (not verified): app: {NAME}@{D2}; worker: {NAME}@{D2}." in log
    assert f"Push {NAME}@{D1} to the registry again and deploy it" in log
    assert [(e.status, e.digest) for e in history(tmp_path)] == [("failed", D2)]
    assert world.verified == []  # the failed release is never marked verified
    assert "restore fails" in " ".join(world.calls)


def test_a_failed_release_left_running_is_never_the_rollback_target(
        world: World, run: Any, tmp_path: Path) -> None:
    """Fresh runners only: v1, v2 verified; v3 fails and cannot be restored (its labels,
    set at `up`, say `deployed`); v3 is not what `mode: rollback` goes back over."""
    fresh = iter(str(tmp_path / f"fresh-{n}") for n in range(10))
    for tag in ("v1.0.0", "v2.0.0"):
        assert run("deploy", image_tag=tag, state_dir=next(fresh))[0] == 0
    world.health = [False]
    world.restore_fails = [DockerError("`docker compose up` failed:\nmanifest unknown")]
    code, outputs, _ = run("deploy", image_tag="v3.0.0", state_dir=next(fresh))
    assert (code, outputs["status"]) == (1, "failed")
    assert world.running == {"app": D3, "worker": D3}
    code, outputs, log = run("rollback", state_dir=next(fresh))
    assert (code, outputs["status"], outputs["digest"]) == (0, "rolled_back", D2), log
    assert _trail(world)[-2:] == [("deploy", "v3.0.0", "failed"),
                                  ("rollback", "v2.0.0", "rolled_back")]
    code, outputs, _ = run("rollback", state_dir=next(fresh))
    assert (code, outputs["digest"]) == (0, D1)


def test_a_fresh_runner_restores_the_release_the_engine_verified(
        world: World, run: Any, tmp_path: Path) -> None:
    """v3 failed and stayed; the next deploy fails too: back to v2, not to v3."""
    fresh = iter(str(tmp_path / f"fresh-{n}") for n in range(10))
    for tag in ("v1.0.0", "v2.0.0"):
        assert run("deploy", image_tag=tag, state_dir=next(fresh))[0] == 0
    world.health = [False, False, True]
    world.restore_fails = [DockerError("`docker compose up` failed:\nmanifest unknown")]
    assert run("deploy", image_tag="v3.0.0", state_dir=next(fresh))[0] == 1
    code, outputs, log = run("deploy", image_tag="v1.0.0", state_dir=next(fresh))
    assert (code, outputs["status"]) == (1, "rolled_back"), log
    assert outputs["previous_image"] == f"{NAME}@{D2}"
    assert f"Running now: {NAME}@{D3}, which no deploy verified" in log
    assert world.running == {"app": D2, "worker": D2}


def test_the_history_line_comes_before_the_status_output(
        world: World, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An output file that fails when `status` is written (a full disk) keeps the line."""
    written = Actions.set_output
    failed: list[str] = []

    def set_output(self: Actions, name: str, value: str) -> None:
        if name == "status" and not failed:
            failed.append(value)
            raise DeployError("GITHUB_OUTPUT is full")
        written(self, name, value)

    monkeypatch.setattr(Actions, "set_output", set_output)
    code, _, log = run("deploy", image_tag="v2.0.0")
    assert code == 1 and "GITHUB_OUTPUT is full" in log
    assert failed == ["deployed"]
    assert [e.status for e in history(tmp_path)] == ["deployed"]


def test_a_label_time_is_printed_as_text(world: World, run: Any, tmp_path: Path) -> None:
    assert run("deploy", image_tag="v1.0.0")[0] == 0
    assert run("deploy", image_tag="v2.0.0")[0] == 0
    labels = json.loads(world.labels["deploykit.history"])
    labels[0]["time"] = "2026\r::error title=X::forged"
    world.labels["deploykit.history"] = json.dumps(labels)
    code, _, log = run("rollback", state_dir=str(tmp_path / "fresh"))
    assert code == 0, log
    lines = log.split("\n")
    said = next(n for n, line in enumerate(lines) if line.startswith("Rolling back to"))
    assert lines[said - 1].startswith("::stop-commands::")
