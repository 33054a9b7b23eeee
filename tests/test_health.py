from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from deploykit import containers, health
from deploykit.containers import (
    image_digests,
    own_container,
    own_container_candidates,
    project_containers,
    running_services,
    workspace_mounts,
)
from deploykit.errors import DockerError
from deploykit.events import ContainerEvent
from deploykit.health import HealthReport, HealthWatch, report_failures
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
              health_log: list[str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "Running": status == "running",
                             "ExitCode": exit_code, "StartedAt": started}
    if health is not None:
        state["Health"] = {"Status": health, "Log": [{"Output": line}
                                                     for line in health_log or []]}
    all_labels = {"com.docker.compose.project": "shop", "com.docker.compose.service": service,
                  **(labels or {})}
    if oneoff:
        all_labels["com.docker.compose.oneoff"] = "True"
    config: dict[str, Any] = {"Image": image, "Labels": all_labels}
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
        self.images_inspected: list[str] = []

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
        self.images_inspected.append(image_id)
        if image_id not in self.images:
            raise not_found()
        return self.images[image_id]

    def logs(self, cid: str, *, tail: int, stdout: bool, stderr: bool) -> bytes:
        self.logs_asked.append((cid, tail))
        return b"starting\npanic: no config\n"


class Engine(FakeAPI):
    """A fake engine on a fake clock: the API answers from the containers as they are
    *now*, and ``at(t, ...)`` scripts a change at t seconds with the events the engine
    sends for it (none: a missed event). It is also the event stream the watch waits on."""

    def __init__(self, clock: FakeClock, *containers: dict[str, Any]) -> None:
        super().__init__()
        self.clock = clock
        self.current = list(containers)
        self.script: list[tuple[float, list[dict[str, Any]], list[str], bool]] = []
        self.queued: list[ContainerEvent] = []
        self.inspected: list[str] = []
        self.listed = 0
        self.alive, self.closed = True, False
        self.subscribed: list[tuple[str, float, float]] = []

    def at(self, when: float, *changed: dict[str, Any], events: tuple[str, ...] = (),
           ends_stream: bool = False) -> Engine:
        self.script.append((when, list(changed), list(events), ends_stream))
        self.script.sort(key=lambda step: step[0])
        return self

    def _catch_up(self) -> None:
        while self.script and self.script[0][0] <= self.clock.now:
            when, changed, events, ends_stream = self.script.pop(0)
            for new in changed:
                self.current = [new if c["Id"] == new["Id"] else c for c in self.current]
                if all(c["Id"] != new["Id"] for c in self.current):
                    self.current.append(new)
            self.queued += [ContainerEvent(c["Id"], action, STARTED_EPOCH + when)
                            for c in changed for action in events]
            self.alive = self.alive and not ends_stream

    # the API
    def containers(self, *, all: bool, filters: dict[str, str]) -> list[dict[str, str]]:
        self._catch_up()
        self.listed += 1
        return [{"Id": c["Id"]} for c in self.current]

    def inspect_container(self, cid: str) -> dict[str, Any]:
        self._catch_up()
        self.inspected.append(cid)
        return super().inspect_container(cid)

    # the event stream
    def open(self, api: Any, project: str, *, since: float, until: float) -> Engine:
        self.subscribed.append((project, since, until))
        return self

    def wait(self, timeout: float) -> list[ContainerEvent]:
        end = self.clock.now + timeout
        while not self.queued and self.alive and self.script and self.script[0][0] <= end:
            self.clock.now = max(self.clock.now, self.script[0][0])
            self._catch_up()
        if not self.queued and self.alive:
            self.clock.now = end
            self._catch_up()
        events, self.queued = self.queued, []
        return events if self.alive or events else []

    def close(self) -> None:
        self.closed = True


def started_at(seconds: float) -> str:
    """StartedAt as the engine prints it, ``seconds`` after STARTED."""
    when = datetime.fromtimestamp(STARTED_EPOCH + seconds, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def watch(engine: Engine, *, timeout: float = 120, settle: float = 5,
          progress: list[str] | None = None, events: bool = True) -> HealthWatch:
    clock = engine.clock
    return HealthWatch(engine, "shop", timeout=timeout, settle=settle, interval=1,
                       clock=clock, sleep=clock.sleep, wall=lambda: STARTED_EPOCH + clock.now,
                       events=engine.open if events else (lambda *a, **k: None),
                       progress=None if progress is None else progress.append)


def verdicts(report: HealthReport) -> list[tuple[str, str, str]]:
    return [(c.service, c.verdict, c.reason) for c in report.containers]


APP, WORKER = container("a", "app", health="starting"), container("w", "worker")


def test_healthy_on_its_event_once_its_own_window_has_passed() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP, WORKER).at(
        1.2, container("a", "app", health="healthy"), events=("health_status: healthy",))
    report = watch(engine, settle=2).wait()
    assert report.ok
    assert verdicts(report) == [("app", "healthy", ""), ("worker", "running", "")]
    assert round(clock.now, 3) == 2.0  # max(healthy at 1.2, 2 s after the start), not their sum
    assert (engine.listed, engine.inspected) == (1, ["a", "w", "a"])  # one look per change
    assert engine.subscribed == [("shop", STARTED_EPOCH - 1, STARTED_EPOCH + 125)]
    assert engine.closed


def test_without_a_window_the_verdict_is_the_event() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP, WORKER).at(
        1.2, container("a", "app", health="healthy"), events=("health_status: healthy",))
    assert watch(engine, settle=0).wait().ok
    assert round(clock.now, 3) == 1.2


def test_each_window_counts_from_that_containers_start() -> None:
    clock = FakeClock()
    old_worker = container("w", "worker", started=started_at(-60))
    late_app = container("a", "app", started=started_at(1))
    assert watch(Engine(clock, late_app, old_worker), settle=3).wait().ok
    assert round(clock.now, 3) == 4.0


def test_a_restart_before_the_watch_counts_from_the_last_start() -> None:
    clock = FakeClock()
    restarted = container("w", "worker", restarts=2, started=started_at(-1))
    assert watch(Engine(clock, restarted), settle=5).wait().ok
    assert round(clock.now, 3) == 4.0


def test_unhealthy_after_the_start_period_fails_on_its_event() -> None:
    clock = FakeClock()
    unhealthy = container("a", "app", health="unhealthy", start_period_ns=2 * 10**9,
                          health_log=["wget: server returned error: 500"])
    engine = Engine(clock, APP).at(3.5, unhealthy, events=("health_status: unhealthy",))
    report = watch(engine).wait()
    assert verdicts(report) == [("app", "failed", "unhealthy")]
    assert report.containers[0].health_log == ["wget: server returned error: 500"]
    assert round(clock.now, 3) == 3.5


def test_unhealthy_inside_the_start_period_is_waited_for() -> None:
    clock = FakeClock()
    engine = Engine(clock, container("a", "app", health="unhealthy",
                                     start_period_ns=30 * 10**9)).at(
        4, container("a", "app", health="healthy", start_period_ns=30 * 10**9),
        events=("health_status: healthy",))
    assert watch(engine, settle=0).wait().ok
    assert round(clock.now, 3) == 4


def test_an_exit_fails_at_once() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP, WORKER).at(
        0.5, container("a", "app", status="exited", exit_code=3, health="starting"),
        events=("die",))
    report = watch(engine).wait()
    assert not report.ok
    assert verdicts(report)[0] == ("app", "failed", "exited with code 3")
    assert report.reasons() == "app (shop-app-1) exited with code 3"
    assert round(clock.now, 3) == 0.5


def test_a_restart_while_watched_fails() -> None:
    clock = FakeClock()
    engine = Engine(clock, WORKER).at(
        1.5, container("w", "worker", restarts=1, started=started_at(1.4)),
        events=("die", "start"))
    assert verdicts(watch(engine).wait()) == [
        ("worker", "failed", "restarted (restart count 1)")]
    assert round(clock.now, 3) == 1.5
    engine = Engine(FakeClock(), container("w", "worker", status="restarting", restarts=2))
    assert verdicts(watch(engine).wait())[0][2] == "restarting (restart count 2)"


def test_a_restart_inside_the_settle_window_fails() -> None:
    """Running for 3 of its 5 s, then a crash and a restart by its policy."""
    clock = FakeClock()
    engine = Engine(clock, WORKER).at(
        3, container("w", "worker", restarts=1, started=started_at(3)), events=("restart",))
    assert verdicts(watch(engine, settle=5).wait()) == [
        ("worker", "failed", "restarted (restart count 1)")]
    assert round(clock.now, 3) == 3


def test_a_crash_after_the_first_healthy_fails() -> None:
    """Issue 11: healthy at 1 s, dead at 3 s, inside the 5 s window: not a success."""
    clock = FakeClock()
    engine = Engine(clock, APP).at(
        1, container("a", "app", health="healthy"), events=("health_status: healthy",)).at(
        3, container("a", "app", status="exited", exit_code=1, health="healthy"),
        events=("die",))
    report = watch(engine, settle=5).wait()
    assert verdicts(report) == [("app", "failed", "exited with code 1")]
    assert round(clock.now, 3) == 3


def test_out_of_memory() -> None:
    clock = FakeClock()
    killed = container("a", "app", status="exited", exit_code=137, health="healthy")
    killed["State"]["OOMKilled"] = True
    engine = Engine(clock, APP).at(2, killed, events=("oom", "die"))
    assert verdicts(watch(engine).wait())[0][2] == \
        "killed for lack of memory (OOM), exited with code 137"
    back = container("a", "app", restarts=1, started=started_at(2.1), health="starting")
    engine = Engine(FakeClock(), APP).at(2, APP, events=("oom",)).at(
        2.1, back, events=("die", "start"))
    assert verdicts(watch(engine).wait())[0][2] == \
        "killed for lack of memory (OOM), restarted (restart count 1)"


def test_a_missed_event_is_caught_by_the_safety_poll() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP).at(1, container("a", "app", health="healthy"))  # no event
    assert watch(engine, settle=0).wait().ok
    assert round(clock.now, 3) == 5.0  # SAFETY_POLL
    assert engine.listed == 2


def test_without_an_event_stream_it_polls_every_interval() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP).at(2.5, container("a", "app", health="healthy"))
    assert watch(engine, settle=0, events=False).wait().ok
    assert clock.sleeps == [1, 1, 1]


def test_a_stream_that_ends_falls_back_to_polling() -> None:
    clock = FakeClock()
    engine = Engine(clock, APP).at(1, APP, ends_stream=True).at(
        2.5, container("a", "app", health="healthy"))
    assert watch(engine, settle=0).wait().ok
    assert round(clock.now, 3) == 3.0
    assert clock.sleeps == [1, 1]


def test_one_shot_service_passes_on_exit_0_and_fails_otherwise() -> None:
    """Issue 12: `migrate`, that `app` waits for with service_completed_successfully."""
    waits = {"com.docker.compose.depends_on":
             "migrate:service_completed_successfully:false,db:service_healthy:false"}
    app = container("a", "app", health="healthy", labels=waits)
    migrating = container("m", "migrate", status="running")
    for code, expected in [(0, ("migrate", "completed", "exited 0 (one-shot)")),
                           (1, ("migrate", "failed", "exited with code 1 (one-shot)"))]:
        clock = FakeClock()
        done = container("m", "migrate", status="exited", exit_code=code)
        engine = Engine(clock, app, migrating).at(2, done, events=("die",))
        report = watch(engine, settle=0).wait()
        assert verdicts(report) == [("app", "healthy", ""), expected]
        assert report.ok is (code == 0)
        assert round(clock.now, 3) == 2


def test_one_shot_by_label_and_an_exit_nothing_expects() -> None:
    task = container("t", "seed", status="exited", labels={"deploykit.one-shot": "true"})
    assert verdicts(watch(Engine(FakeClock(), task), settle=0).wait()) == [
        ("seed", "completed", "exited 0 (one-shot)")]
    plain = container("t", "seed", status="exited")
    assert verdicts(watch(Engine(FakeClock(), plain), settle=0).wait()) == [
        ("seed", "failed", "exited with code 0")]


def test_one_shot_services_known_from_the_compose_file() -> None:
    """`up --no-deps` (deploykit's second step) writes no depends_on label for them."""
    done = container("m", "migrate", status="exited")
    clock = FakeClock()
    report = HealthWatch(Engine(clock, done), "shop", timeout=5, settle=0, clock=clock,
                         sleep=clock.sleep, events=lambda *a, **k: None,
                         one_shots=("migrate",)).wait()
    assert verdicts(report) == [("migrate", "completed", "exited 0 (one-shot)")]


def test_progress_lines_while_waiting() -> None:
    clock = FakeClock()
    waits = {"com.docker.compose.depends_on": "migrate:service_completed_successfully:false"}
    engine = Engine(clock, container("a", "app", health="starting", labels=waits), WORKER,
                    container("m", "migrate")).at(
        7, container("m", "migrate", status="exited"), events=("die",)).at(
        12, container("a", "app", health="healthy", labels=waits),
        events=("health_status: healthy",))
    lines: list[str] = []
    assert watch(engine, settle=8, progress=lines).wait().ok
    assert lines == [
        "app: starting, 5 s of 120 s",
        "migrate: running (one-shot, passes when it exits 0), 5 s of 120 s",
        "worker: running, settling (up 5 s of 8 s), 5 s of 120 s",
        "app: starting, 10 s of 120 s"]
    assert round(clock.now, 3) == 12


def test_timeout_names_what_was_still_waiting() -> None:
    clock = FakeClock()
    report = watch(Engine(clock, APP, WORKER), timeout=3, settle=10).wait()
    assert round(clock.now, 3) == 3
    assert verdicts(report) == [
        ("app", "failed", "not healthy after 3 s (running, starting)"),
        ("worker", "failed", "not settled after 3 s (running)")]


def test_no_container_is_not_ok() -> None:
    report = watch(Engine(FakeClock()), timeout=0).wait()
    assert not report.ok
    assert report.reasons() == "no container of the project is running"


def test_one_off_containers_are_ignored() -> None:
    api = FakeAPI([container("a", "app", health="healthy"),
                   container("r", "app", status="exited", oneoff=True)])
    assert [c["Id"] for c in project_containers(api, "shop")] == ["a"]


def test_report_table_and_failure_logs(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(FakeClock(), container("a", "app", status="exited", exit_code=1,
                                           health="unhealthy",
                                           health_log=["connection refused"]), WORKER)
    report = watch(engine).wait()
    assert report.table().splitlines() == [
        "| service | container | state | health | restarts | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
        "| app | shop-app-1 | exited | unhealthy | 0 | failed: exited with code 1 |",
        "| worker | shop-worker-1 | running | - | 0 | waiting |"]
    actions = make_actions()
    report_failures(engine, report, actions)
    out = actions.out.getvalue()
    token = out.splitlines()[1].removeprefix("::stop-commands::")
    assert out == (
        "::group::Logs of shop-app-1 (app): exited with code 1\n"
        f"::stop-commands::{token}\n"
        "starting\npanic: no config\n"
        "Health log (latest last):\n  connection refused\n"
        f"::{token}::\n"
        "::endgroup::\n")
    assert token.startswith("deploykit-")
    assert engine.logs_asked == [("a", 40)]


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
    assert api.images_inspected == ["img1"]  # app and worker share it: one inspect


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

    monkeypatch.setattr(containers.docker, "DockerClient", Recorder)
    assert containers.docker_client({"DOCKER_HOST": "ssh://deploy@prod-1"}) == "client"
    assert containers.docker_client({"DOCKER_HOST": "tcp://10.0.0.5:2376"}) == "client"
    assert containers.docker_client({}) == "client"
    assert seen == [("ssh://deploy@prod-1", True), ("tcp://10.0.0.5:2376", False), ("", False)]


def test_unreachable_engine_is_a_docker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        @staticmethod
        def from_env(**kwargs: object) -> None:
            raise docker.errors.DockerException("Error while fetching server API version")

    monkeypatch.setattr(containers.docker, "DockerClient", Failing)
    with pytest.raises(DockerError, match=r"Cannot reach the Docker engine \(unix:///x.sock\)") \
            as info:
        containers.docker_client({"DOCKER_HOST": "unix:///x.sock"})
    assert "DOCKER_HOST" in info.value.hint


def test_restored_containers_prove_a_short_window() -> None:
    assert health.restore_settle(5) == 1.0
    assert health.restore_settle(0) == 0
