from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from deploykit import health
from deploykit.errors import DockerError
from deploykit.health import (
    HealthWatch,
    image_digests,
    own_container,
    own_container_candidates,
    project_containers,
    report_failures,
    running_services,
    workspace_mounts,
)
from tests.conftest import FakeClock

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
NAME = "127.0.0.1:5000/org/app"
STARTED = "2026-01-01T12:00:00.123456789Z"
STARTED_EPOCH = 1767268800.123456


def not_found() -> docker.errors.NotFound:
    response = requests.Response()
    response.status_code = 404
    return docker.errors.NotFound("gone", response=response, explanation="gone")


def container(cid: str, service: str, *, status: str = "running", health: str | None = None,
              restarts: int = 0, started: str = STARTED, exit_code: int = 0,
              image: str = f"{NAME}:v1@{D1}", image_id: str = "img1",
              start_period_ns: int = 0, oneoff: bool = False,
              health_log: list[str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "Running": status == "running",
                             "ExitCode": exit_code, "StartedAt": started}
    if health is not None:
        state["Health"] = {"Status": health, "Log": [{"Output": line}
                                                     for line in health_log or []]}
    labels = {"com.docker.compose.project": "shop", "com.docker.compose.service": service}
    if oneoff:
        labels["com.docker.compose.oneoff"] = "True"
    config: dict[str, Any] = {"Image": image, "Labels": labels}
    if start_period_ns:
        config["Healthcheck"] = {"StartPeriod": start_period_ns}
    return {"Id": cid, "Name": f"/shop-{service}-1", "State": state, "RestartCount": restarts,
            "Config": config, "Image": image_id}


class FakeAPI:
    """``containers``/``inspect_container`` answer from a script of snapshots, one per poll."""

    def __init__(self, *snapshots: list[dict[str, Any]],
                 images: dict[str, dict[str, Any]] | None = None) -> None:
        self.snapshots = list(snapshots)
        self.current: list[dict[str, Any]] = []
        self.images = images or {}
        self.filters: list[Any] = []
        self.logs_asked: list[tuple[str, int]] = []

    def containers(self, *, all: bool, filters: dict[str, str]) -> list[dict[str, str]]:
        assert all is True
        self.filters.append(filters)
        if self.snapshots:
            self.current = self.snapshots.pop(0)
        return [{"Id": c["Id"]} for c in self.current]

    def inspect_container(self, cid: str) -> dict[str, Any]:
        for candidate in self.current:
            if candidate["Id"] == cid:
                return copy.deepcopy(candidate)
        raise not_found()

    def inspect_image(self, image_id: str) -> dict[str, Any]:
        if image_id not in self.images:
            raise not_found()
        return self.images[image_id]

    def logs(self, cid: str, *, tail: int, stdout: bool, stderr: bool) -> bytes:
        self.logs_asked.append((cid, tail))
        return b"starting\npanic: no config\n"


def watch(api: FakeAPI, clock: FakeClock, *, timeout: float = 60, settle: float = 3,
          wall: float = STARTED_EPOCH + 100) -> HealthWatch:
    return HealthWatch(api, "shop", timeout=timeout, settle=settle, interval=1, clock=clock,
                       sleep=clock.sleep, wall=lambda: wall)


def test_healthy_and_settled_containers_pass() -> None:
    app_starting = container("a", "app", health="starting")
    app_healthy = container("a", "app", health="healthy")
    worker = container("w", "worker")
    api = FakeAPI([app_starting, worker], [app_healthy, worker], [app_healthy, worker],
                  [app_healthy, worker])
    clock = FakeClock()
    report = watch(api, clock).wait()
    assert report.ok
    assert [(c.service, c.verdict) for c in report.containers] == \
        [("app", "healthy"), ("worker", "running")]
    assert clock.sleeps == [1, 1, 1]  # the worker needed 3 s of settling
    assert api.filters[0] == {"label": "com.docker.compose.project=shop"}


def test_exited_container_fails_at_once() -> None:
    api = FakeAPI([container("a", "app", status="exited", exit_code=3, health="starting"),
                   container("w", "worker")])
    clock = FakeClock()
    report = watch(api, clock, timeout=120).wait()
    assert not report.ok
    assert clock.sleeps == []
    assert [(c.service, c.verdict, c.reason) for c in report.failed] == \
        [("app", "failed", "exited with code 3")]
    assert report.reasons() == "app (shop-app-1) exited with code 3"


def test_restarting_or_a_new_restart_fails_at_once() -> None:
    api = FakeAPI([container("w", "worker", restarts=0)],
                  [container("w", "worker", restarts=1, started="2026-01-01T12:00:05Z")])
    clock = FakeClock()
    report = watch(api, clock).wait()
    assert report.failed[0].reason == "restarting (restart count 1)"
    assert clock.sleeps == [1]
    api = FakeAPI([container("w", "worker", status="restarting", restarts=2)])
    assert watch(api, FakeClock()).wait().failed[0].reason == "restarting (restart count 2)"


def test_unhealthy_after_the_start_period_fails() -> None:
    api = FakeAPI([container("a", "app", health="unhealthy", start_period_ns=10 * 10**9,
                             health_log=["wget: server returned error: 500"])])
    report = watch(api, FakeClock(), wall=STARTED_EPOCH + 11).wait()
    assert [(c.verdict, c.reason) for c in report.containers] == [("failed", "unhealthy")]
    assert report.containers[0].health_log == ["wget: server returned error: 500"]


def test_unhealthy_inside_the_start_period_is_waited_for() -> None:
    unhealthy = container("a", "app", health="unhealthy", start_period_ns=30 * 10**9)
    healthy = container("a", "app", health="healthy", start_period_ns=30 * 10**9)
    api = FakeAPI([unhealthy], [healthy])
    clock = FakeClock()
    report = watch(api, clock, wall=STARTED_EPOCH + 5).wait()
    assert report.ok and clock.sleeps == [1]


def test_timeout_names_what_was_still_waiting() -> None:
    api = FakeAPI([container("a", "app", health="starting")])
    clock = FakeClock()
    report = watch(api, clock, timeout=3).wait()
    assert clock.sleeps == [1, 1, 1]
    assert report.failed[0].reason == "not healthy after 3 s (running, starting)"


def test_no_container_is_not_ok() -> None:
    report = watch(FakeAPI([]), FakeClock(), timeout=0).wait()
    assert not report.ok
    assert report.reasons() == "no container of the project is running"


def test_one_off_containers_are_ignored() -> None:
    api = FakeAPI([container("a", "app", health="healthy"),
                   container("r", "app", status="exited", oneoff=True)])
    assert [c["Id"] for c in project_containers(api, "shop")] == ["a"]


def test_report_table_and_failure_logs(make_actions) -> None:  # type: ignore[no-untyped-def]
    api = FakeAPI([container("a", "app", status="exited", exit_code=1, health="unhealthy",
                             health_log=["connection refused"]),
                   container("w", "worker")])
    report = watch(api, FakeClock()).wait()
    assert report.table().splitlines() == [
        "| service | container | state | health | restarts | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
        "| app | shop-app-1 | exited | unhealthy | 0 | failed: exited with code 1 |",
        "| worker | shop-worker-1 | running | - | 0 | waiting |"]
    actions = make_actions()
    report_failures(api, report, actions)
    assert actions.out.getvalue() == (
        "::group::Logs of shop-app-1 (app): exited with code 1\n"
        "starting\npanic: no config\n"
        "Health log (latest last):\n  connection refused\n"
        "::endgroup::\n")
    assert api.logs_asked == [("a", 40)]


def test_api_failure_is_a_docker_error() -> None:
    class Broken(FakeAPI):
        def containers(self, *, all: bool, filters: dict[str, str]) -> list[dict[str, str]]:
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("x", response=response, explanation="engine down")

    with pytest.raises(DockerError, match="Cannot list the containers of project 'shop': "
                       "engine down"):
        project_containers(Broken(), "shop")


# -- digests of what runs --------------------------------------------------------
def test_running_services_prefer_the_pinned_reference() -> None:
    images = {"img1": {"Id": "img1", "RepoDigests": [f"{NAME}@{D1}", f"other/x@{D2}"]}}
    api = FakeAPI([container("a", "app"), container("w", "worker"),
                   container("d", "db", image="postgres:16", image_id="pg")], images=images)
    services = running_services(api, "shop", NAME, ["app", "worker"])
    assert [(s.service, s.container_id, s.digest) for s in services] == \
        [("app", "a", D1), ("worker", "w", D1)]


def test_running_digest_from_repo_digests_when_the_reference_is_a_tag() -> None:
    images = {"img1": {"Id": "img1", "RepoDigests": [f"{NAME}@{D2}"]}}
    api = FakeAPI([container("a", "app", image=f"{NAME}:v1")], images=images)
    assert running_services(api, "shop", NAME, ["app"])[0].digest == D2


def test_image_digests_only_for_the_image_name() -> None:
    api = FakeAPI(images={"i": {"Id": "i", "RepoDigests": [f"other/x@{D2}", f"{NAME}@{D1}"]}})
    assert image_digests(api, "i", NAME) == [D1]
    assert image_digests(api, "missing", NAME) == []


# -- the container we run in ------------------------------------------------------
def test_own_container_candidates_from_proc(tmp_path: Path) -> None:
    cid, other = "ab" * 32, "cd" * 32
    (tmp_path / "mountinfo").write_text(
        f"1 0 0:1 / / rw - overlay overlay rw,lowerdir=/x/{other}/fs\n"
        f"2 1 0:2 /var/lib/docker/containers/{cid}/resolv.conf /etc/resolv.conf rw\n"
        f"3 1 0:2 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw\n")
    dockerenv = tmp_path / ".dockerenv"
    dockerenv.write_text("")
    assert own_container_candidates(tmp_path, hostname="0123456789ab", dockerenv=dockerenv) \
        == [cid, "0123456789ab"]


def test_a_host_that_runs_containers_is_not_one(tmp_path: Path) -> None:
    other = "cd" * 32
    (tmp_path / "mountinfo").write_text(
        f"7 1 0:5 / /var/lib/docker/rootfs/overlayfs/{other} rw - overlay overlay rw\n"
        f"8 1 0:6 /var/lib/docker/containers/{other}/mounts/shm "
        f"/var/lib/docker/containers/{other}/mounts/shm rw\n")
    assert own_container_candidates(tmp_path, hostname="0123456789ab",
                                    dockerenv=tmp_path / "missing") == []
    assert own_container_candidates(tmp_path / "none", hostname="runner-1") == []


def test_own_container_is_the_first_candidate_the_engine_knows() -> None:
    api = FakeAPI()
    api.current = [{"Id": "full-id", "Mounts": []}]
    assert own_container(api, ["nope", "full-id"]) == {"Id": "full-id", "Mounts": []}
    assert own_container(api, ["nope"]) is None


def test_workspace_mounts_only_when_the_workspace_is_mounted() -> None:
    inside = {"Mounts": [
        {"Type": "bind", "Source": "/home/runner/work/app/app",
         "Destination": "/github/workspace"},
        {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock"},
        {"Type": "volume", "Source": "/var/lib/docker/volumes/x", "Destination": "/cache"}]}
    assert workspace_mounts(inside, "/github/workspace/") == {
        "/github/workspace": "/home/runner/work/app/app",
        "/var/run/docker.sock": "/var/run/docker.sock"}
    assert workspace_mounts(inside, "/home/runner/work/app/app") == {}
    assert workspace_mounts(None, "/github/workspace") == {}


# -- the client --------------------------------------------------------------------
def test_docker_client_honours_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []

    class Recorder:
        @staticmethod
        def from_env(*, environment: dict[str, str], use_ssh_client: bool) -> str:
            seen.append((environment.get("DOCKER_HOST", ""), use_ssh_client))
            return "client"

    monkeypatch.setattr(health, "DockerClient", Recorder)
    assert health.docker_client({"DOCKER_HOST": "ssh://deploy@prod-1"}) == "client"
    assert health.docker_client({"DOCKER_HOST": "tcp://10.0.0.5:2376"}) == "client"
    assert health.docker_client({}) == "client"
    assert seen == [("ssh://deploy@prod-1", True), ("tcp://10.0.0.5:2376", False), ("", False)]


def test_unreachable_engine_is_a_docker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        @staticmethod
        def from_env(**kwargs: object) -> None:
            raise docker.errors.DockerException("Error while fetching server API version")

    monkeypatch.setattr(health, "DockerClient", Failing)
    with pytest.raises(DockerError, match=r"Cannot reach the Docker engine \(unix:///x.sock\)") \
            as info:
        health.docker_client({"DOCKER_HOST": "unix:///x.sock"})
    assert "DOCKER_HOST" in info.value.hint
