"""deploykit.startfirst: the update policy read from `docker compose config --format json`,
the refusals made before anything changes, and the engine steps against fakes."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from deploykit.actions import Actions
from deploykit.compose import Compose, ComposeProject
from deploykit.errors import ComposeError, DeployError, DockerError
from deploykit.health import ContainerHealth, HealthReport
from deploykit.startfirst import (
    StartedBatch,
    StartFirst,
    UpdatePolicy,
    batch_report,
    check,
    go_duration,
    update_policy,
)

PROJECT = ComposeProject(Path("/p"), Path("/p/compose.yaml"), "shop", ("db", "web", "worker"),
                         ("web", "worker"), (), ("web", "worker"))


def web(**extra: Any) -> dict[str, Any]:
    """A start-first `web` as compose prints it, with ``extra`` keys on top."""
    service: dict[str, Any] = {
        "image": "r/p:t", "deploy": {"replicas": 2, "update_config": {"order": "start-first"}}}
    service.update(extra)
    return service


def config(**services: dict[str, Any]) -> dict[str, Any]:
    return {"name": "shop", "services": {"db": {"image": "postgres", "ports": [
        {"target": 5432, "published": "5432"}]}, "worker": {"image": "r/p:t"}, **services}}


# -- the policy ------------------------------------------------------------------
def test_policy_reads_swarm_keys_and_compose_durations() -> None:
    policy = update_policy("web", {
        "deploy": {"replicas": 3, "update_config": {
            "order": "start-first", "parallelism": 2, "delay": "1m30s", "monitor": "500ms",
            "failure_action": "rollback"}},
        "stop_grace_period": "45s", "stop_signal": "SIGQUIT"})
    assert policy == UpdatePolicy("web", 3, "start-first", 2, 90.0, 0.5, "rollback", 45.0,
                                  "SIGQUIT")
    assert policy.start_first
    assert policy.batches() == [2, 1]
    assert policy.settle(2.0) == 2.0 and policy.settle(0.1) == 0.5


def test_policy_defaults_are_swarms_and_replicas_come_from_scale() -> None:
    policy = update_policy("web", {"scale": 4})
    assert policy == UpdatePolicy("web", replicas=4)
    assert (policy.order, policy.parallelism, policy.monitor, policy.failure_action,
            policy.stop_grace_period) == ("stop-first", 1, 5.0, "pause", 10.0)
    assert not policy.start_first
    assert policy.batches() == [1, 1, 1, 1]
    assert update_policy("web", {}).replicas == 1
    # deploy.replicas wins over scale, as in compose
    assert update_policy("web", {"scale": 4, "deploy": {"replicas": 2}}).replicas == 2


def test_parallelism_zero_is_one_batch() -> None:
    policy = update_policy("web", web(deploy={"replicas": 3, "update_config": {
        "order": "start-first", "parallelism": 0}}))
    assert policy.batches() == [3]
    assert UpdatePolicy("web", replicas=0).batches() == []


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5s", 1.5),
    ("250us", 0.00025), (2_000_000_000, 2.0)])
def test_go_durations(text: object, seconds: float) -> None:
    assert go_duration(text, key="delay", service="web") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "ten seconds", "10s garbage", "-1s"])
def test_a_bad_duration_names_the_key_and_service(text: str) -> None:
    with pytest.raises(ComposeError, match=r"'web'.*`delay"):
        go_duration(text, key="delay", service="web")


@pytest.mark.parametrize(("key", "value"), [("order", "blue-green"),
                                            ("failure_action", "explode")])
def test_unknown_order_or_failure_action_is_refused(key: str, value: str) -> None:
    with pytest.raises(ComposeError, match=rf"'web'.*{key}: {value}"):
        update_policy("web", {"deploy": {"update_config": {key: value}}})


def test_check_reads_every_image_service_and_ignores_other_images() -> None:
    policies = check(config(web=web()), PROJECT)
    assert set(policies) == {"web", "worker"}  # not db, though it publishes a port
    assert policies["web"].start_first and policies["web"].replicas == 2
    assert not policies["worker"].start_first


# -- the refusals, before anything changes ---------------------------------------------
def test_a_start_first_service_publishing_a_host_port_is_refused() -> None:
    service = web(ports=[{"mode": "ingress", "host_ip": "127.0.0.1", "target": 80,
                          "published": "8080", "protocol": "tcp"}])
    with pytest.raises(ComposeError) as caught:
        check(config(web=service), PROJECT)
    assert "'web'" in caught.value.message and "127.0.0.1:8080" in caught.value.message
    assert "proxy" in caught.value.hint and "start-first" in caught.value.hint


def test_an_unpublished_port_is_fine_under_start_first() -> None:
    service = web(ports=[{"mode": "ingress", "target": 8080, "protocol": "tcp"}])
    assert check(config(web=service), PROJECT)["web"].start_first


def test_a_published_port_without_start_first_is_fine() -> None:
    service = {"image": "r/p:t", "ports": [{"target": 80, "published": "8080"}]}
    assert not check(config(web=service), PROJECT)["web"].start_first


def test_a_start_first_service_with_container_name_is_refused() -> None:
    with pytest.raises(ComposeError, match=r"'web'.*container_name: shop-web") as caught:
        check(config(web=web(container_name="shop-web")), PROJECT)
    assert "remove `container_name`" in caught.value.hint


def test_a_start_first_one_shot_is_refused() -> None:
    project = ComposeProject(Path("/p"), Path("/p/compose.yaml"), "shop",
                             ("migrate", "web"), ("web",), ("migrate",), ("migrate", "web"))
    with pytest.raises(ComposeError, match=r"'migrate' is a one-shot") as caught:
        check(config(migrate=web(), web=web()), project)
    assert "Remove `deploy.update_config.order: start-first` from 'migrate'" in caught.value.hint


def test_host_networking_and_failure_action_continue_are_refused() -> None:
    with pytest.raises(ComposeError, match=r"'web'.*network_mode: host"):
        check(config(web=web(network_mode="host")), PROJECT)
    service = web(deploy={"replicas": 2, "update_config": {"order": "start-first",
                                                           "failure_action": "continue"}})
    with pytest.raises(ComposeError, match=r"'web'.*failure_action: continue"):
        check(config(web=service), PROJECT)


def test_a_named_volume_is_allowed() -> None:
    service = web(volumes=[{"type": "volume", "source": "media", "target": "/media"}])
    assert check(config(web=service), PROJECT)["web"].start_first


# -- the engine steps, against fakes ----------------------------------------------------
def container(number: int, image: str = "r/p:v1", status: str = "running") -> dict[str, Any]:
    return {"Id": f"{number:064x}", "Name": f"/shop-web-{number}",
            "Config": {"Image": image, "Labels": {
                "com.docker.compose.project": "shop", "com.docker.compose.service": "web",
                "com.docker.compose.container-number": str(number)}},
            "State": {"Status": status}}


class FakeAPI:
    """The SDK's low-level client: the containers compose made so far."""

    def __init__(self, *containers: dict[str, Any]) -> None:
        self.by_id = {c["Id"]: c for c in containers}

    def containers(self, all: bool, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        return [{"Id": key} for key in self.by_id]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return self.by_id[container_id]


class FakeDocker:
    """The docker CLI: `compose up --scale` adds ``adds``; `stop`/`rm` are recorded."""

    def __init__(self, api: FakeAPI, adds: Sequence[dict[str, Any]] = (),
                 removes: Sequence[str] = (), up_raises: BaseException | None = None) -> None:
        self.api, self.adds, self.removes, self.up_raises = api, adds, removes, up_raises
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.actions = Actions({}, stdout=io.StringIO(), stderr=io.StringIO())

    def run(self, args: Sequence[str], *, extra_env: Mapping[str, str] | None = None,
            **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        self.envs.append(dict(extra_env or {}))
        if args[0] == "compose":
            self.api.by_id.update({c["Id"]: c for c in self.adds})
            for key in self.removes:
                self.api.by_id.pop(key)
            if self.up_raises is not None:
                raise self.up_raises
        if args[0] == "rm":
            for key in args[2:]:
                self.api.by_id.pop(key)
        return subprocess.CompletedProcess(list(args), 0, "", "")


POLICY = UpdatePolicy("web", replicas=2, order="start-first", stop_grace_period=7.5,
                      stop_signal="SIGQUIT")


def steps_with(docker: FakeDocker) -> tuple[StartFirst, Compose]:
    compose = Compose(docker, Path("/p"), Path("/p/compose.yaml"), "shop",  # type: ignore[arg-type]
                      env={"IMAGE_TAG": "v2@sha256:" + "b" * 64})
    return StartFirst(docker.api, docker, "shop"), compose  # type: ignore[arg-type]


def test_start_new_scales_beside_the_old_with_the_new_image() -> None:
    api = FakeAPI(container(1), container(2))
    docker = FakeDocker(api, adds=[container(3, "r/p:v2"), container(4, "r/p:v2")])
    steps, compose = steps_with(docker)

    batch = steps.start_new(compose, POLICY, timeout=60)

    assert batch == StartedBatch("web", (f"{1:064x}", f"{2:064x}"),
                                 (f"{3:064x}", f"{4:064x}"))
    [argv] = docker.calls
    assert argv[-8:] == ["up", "-d", "--no-build", "--no-recreate", "--scale", "web=4",
                         "--no-deps", "web"]
    assert argv[:2] == ["compose", "--ansi"] and "-p" in argv
    assert docker.envs[0]["IMAGE_TAG"].startswith("v2@")


def test_start_new_with_a_count_adds_one_batch() -> None:
    api = FakeAPI(container(1), container(2))
    docker = FakeDocker(api, adds=[container(3, "r/p:v2")])
    steps, compose = steps_with(docker)
    batch = steps.start_new(compose, POLICY, 1)
    assert batch.new_ids == (f"{3:064x}",)
    assert "web=3" in docker.calls[0]


def test_start_new_that_recreated_an_old_container_discards_the_new_and_fails() -> None:
    api = FakeAPI(container(1), container(2))
    docker = FakeDocker(api, adds=[container(3, "r/p:v2"), container(4, "r/p:v2")],
                        removes=[f"{1:064x}"])
    steps, compose = steps_with(docker)
    with pytest.raises(DeployError, match=r"did not start 2 new container\(s\) beside the 2 "
                       r"running.*1 old ones are gone"):
        steps.start_new(compose, POLICY)
    assert docker.calls[1][:5] == ["stop", "--time", "8", "--signal", "SIGQUIT"]
    assert docker.calls[2] == ["rm", "--force", f"{3:064x}", f"{4:064x}"]


@pytest.mark.parametrize("interruption", [
    KeyboardInterrupt(), DockerError("`docker compose up` timed out after 60 s; it was stopped.")])
def test_start_new_interrupted_half_way_removes_what_it_started(
        interruption: BaseException) -> None:
    """A cancel (or a failed/timed-out `up`) while compose creates the new containers:
    the ones already there are removed, the old ones untouched, the error propagates."""
    api = FakeAPI(container(1), container(2))
    docker = FakeDocker(api, adds=[container(3, "r/p:v2")], up_raises=interruption)
    steps, compose = steps_with(docker)
    with pytest.raises(type(interruption)):
        steps.start_new(compose, POLICY, give_up_at=lambda: None)
    assert docker.calls[1:] == [
        ["stop", "--time", "8", "--signal", "SIGQUIT", f"{3:064x}"],
        ["rm", "--force", f"{3:064x}"]]
    assert [c["Id"] for c in steps.containers("web")] == [f"{1:064x}", f"{2:064x}"]


def test_retire_old_stops_gracefully_then_removes_only_the_old() -> None:
    api = FakeAPI(container(1), container(2), container(3, "r/p:v2"), container(4, "r/p:v2"))
    docker = FakeDocker(api)
    steps, _ = steps_with(docker)
    batch = StartedBatch("web", (f"{1:064x}", f"{2:064x}"), (f"{3:064x}", f"{4:064x}"))

    steps.retire_old(batch, POLICY)

    assert docker.calls == [
        ["stop", "--time", "8", "--signal", "SIGQUIT", f"{1:064x}", f"{2:064x}"],
        ["rm", "--force", f"{1:064x}", f"{2:064x}"]]
    assert [c["Id"] for c in steps.containers("web")] == [f"{3:064x}", f"{4:064x}"]


def test_discard_new_leaves_the_old_and_uses_the_image_signal_when_none_is_set() -> None:
    api = FakeAPI(container(1), container(3, "r/p:v2"))
    docker = FakeDocker(api)
    steps, _ = steps_with(docker)
    batch = StartedBatch("web", (f"{1:064x}",), (f"{3:064x}",))

    steps.discard_new(batch, UpdatePolicy("web", order="start-first"))

    assert docker.calls == [["stop", "--time", "10", f"{3:064x}"],
                            ["rm", "--force", f"{3:064x}"]]
    assert [c["Id"] for c in steps.containers("web")] == [f"{1:064x}"]
    steps.discard_new(StartedBatch("web", (), ()), POLICY)  # nothing started: nothing to do
    assert len(docker.calls) == 2


def test_batch_report_keeps_only_the_new_containers() -> None:
    report = HealthReport([ContainerHealth("web", "shop-web-1", "a", verdict="healthy"),
                           ContainerHealth("web", "shop-web-3", "c", verdict="failed")])
    mine = batch_report(report, StartedBatch("web", ("a",), ("c",)))
    assert [c.container_id for c in mine.containers] == ["c"] and not mine.ok
