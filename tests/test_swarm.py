"""deploykit.swarm: the verdict, the watch, the manager check, the stack CLI and the lock."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from deploykit.compose import ComposeProject
from deploykit.deploy.engine import Engine
from deploykit.deploy.procedure import Deployment
from deploykit.deploy.runtime import Runtime
from deploykit.deploy.swarm_engine import release_labels
from deploykit.errors import ComposeError, DockerError, InputError, LockError
from deploykit.lock import Holder
from deploykit.settings import load_settings
from deploykit.swarm import (
    RolloutWatch,
    Service,
    Stack,
    SwarmLock,
    Task,
    check_manager,
    container_health,
    judge,
    progress_line,
    service_table,
    stack_services,
)
from tests.conftest import CapturedActions, FakeClock, api_error

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
IMAGE = "ghcr.io/org/app:v2@" + NEW
OLD_IMAGE = "ghcr.io/org/app:v1@" + OLD


def task(n: int, image: str = IMAGE, state: str = "running", desired: str = "running",
         exit_code: int | None = None, error: str = "") -> Task:
    return Task(id=f"task{n}" + "0" * 20, slot=n, node="node-1", desired=desired,
                state=state, image=image, error=error, exit_code=exit_code,
                timestamp=f"2026-01-01T00:00:0{n}Z")


def service(*tasks: Task, image: str = IMAGE, state: str = "", started: str = "",
            replicas: int | None = 2) -> Service:
    return Service(name="app", full_name="s_app", id="svc1", image=image, replicas=replicas,
                   update_state=state, update_started=started, update_message="",
                   order="start-first", tasks=tuple(tasks))


def verdict_of(svc: Service, before: Mapping[str, str] | None = None) -> tuple[str, int]:
    found = judge({"app": svc}, ["app"], NEW, before or {})
    return found.outcome, len(found.failures)


# -- the verdict ----------------------------------------------------------------
def test_every_replica_on_the_target_is_deployed() -> None:
    assert verdict_of(service(task(1), task(2), state="completed", started="t1")) \
        == ("deployed", 0)


def test_an_update_in_progress_waits() -> None:
    svc = service(task(1), task(2, OLD_IMAGE), state="updating", started="t1")
    assert verdict_of(svc) == ("waiting", 0)


def test_the_spec_changed_before_swarm_started_the_update_waits() -> None:
    # The old tasks still run; UpdateStatus is the previous deploy's.
    svc = service(task(1, OLD_IMAGE), task(2, OLD_IMAGE), state="completed", started="t0")
    assert verdict_of(svc, {"app": "t0"}) == ("waiting", 0)


def test_a_completed_swarm_rollback_is_rolled_back_with_its_failed_tasks() -> None:
    svc = service(task(1, OLD_IMAGE), task(2, OLD_IMAGE),
                  task(3, state="complete", desired="shutdown", exit_code=0),
                  image=OLD_IMAGE, state="rollback_completed", started="t1")
    assert verdict_of(svc) == ("rolled_back", 1)


def test_a_rollback_left_by_an_earlier_deploy_is_not_this_ones() -> None:
    # Same spec again (nothing for Swarm to update): the old rollback_completed stays.
    svc = service(task(1), task(2), state="rollback_completed", started="t0")
    assert verdict_of(svc, {"app": "t0"}) == ("deployed", 0)


def test_a_rollback_in_progress_waits() -> None:
    svc = service(task(1, OLD_IMAGE), task(2), image=OLD_IMAGE, state="rollback_started",
                  started="t1")
    assert verdict_of(svc) == ("waiting", 0)


@pytest.mark.parametrize("state", ["paused", "rollback_paused"])
def test_a_paused_update_is_decided_at_once(state: str) -> None:
    svc = service(task(1, OLD_IMAGE), task(2, state="failed", desired="shutdown", exit_code=3,
                                            error="task: non-zero exit (3)"),
                  state=state, started="t1")
    assert verdict_of(svc) == ("paused", 1)


def test_a_new_service_that_crash_loops_fails_after_three_failures() -> None:
    crashed = [task(n, state="failed", desired="shutdown", exit_code=3) for n in (3, 4)]
    assert verdict_of(service(task(1, state="starting"), *crashed)) == ("waiting", 2)
    crashed.append(task(5, state="failed", desired="shutdown", exit_code=3))
    assert verdict_of(service(task(1, state="starting"), *crashed)) == ("failing", 3)


def test_a_missing_service_waits_and_one_paused_service_decides_over_a_waiting_one() -> None:
    assert judge({}, ["app"], NEW, {}).outcome == "waiting"
    worker = replace(service(task(1), state="paused", started="t1"), name="worker")
    found = judge({"app": service(task(1, OLD_IMAGE), state="updating", started="t1"),
                   "worker": worker}, ["app", "worker"], NEW, {})
    assert (found.outcome, found.services) == ("paused", ("worker",))


def test_one_service_rolled_back_and_one_deployed_is_rolled_back() -> None:
    back = service(task(1, OLD_IMAGE), task(2, OLD_IMAGE), image=OLD_IMAGE,
                   state="rollback_completed", started="t1")
    worker = replace(service(task(1), task(2), state="completed", started="t1"),
                     name="worker")
    found = judge({"app": back, "worker": worker}, ["app", "worker"], NEW, {})
    assert (found.outcome, found.services) == ("rolled_back", ("app",))


def test_global_mode_expects_one_task_per_desired_running_task() -> None:
    assert verdict_of(service(task(1), task(2), task(3), replicas=None)) == ("deployed", 0)


@pytest.mark.parametrize(("state", "code", "failed"), [
    ("failed", 1, True), ("rejected", None, True), ("complete", 0, True),
    ("shutdown", 0, False), ("shutdown", 137, True), ("running", None, False)])
def test_which_tasks_failed(state: str, code: int | None, failed: bool) -> None:
    assert task(1, state=state, exit_code=code).failed is failed


def test_a_task_describes_itself() -> None:
    failed = task(2, state="failed", exit_code=3, error="task: non-zero exit (3)")
    assert failed.describe("unhealthy (last probe exit 1: 404)") == (
        "task task20000000 (slot 2) on node node-1: failed: task: non-zero exit (3), "
        "exit code 3; unhealthy (last probe exit 1: 404)")


def test_progress_line_and_table() -> None:
    svc = service(task(1), task(2, OLD_IMAGE),
                  task(3, state="failed", desired="shutdown", exit_code=1),
                  state="updating", started="t1")
    assert progress_line(svc) == ("app: updating, 2/2 running (aaaaaaaaaaaa, bbbbbbbbbbbb), "
                                  "1 failed task(s)")
    assert progress_line(svc, OLD) == "app: updating, 2/2 running (aaaaaaaaaaaa, bbbbbbbbbbbb)"
    assert service_table({"app": svc}, ["app", "worker"]).splitlines() == [
        "| service | replicas running | digest | update state | order |",
        "| --- | --- | --- | --- | --- |",
        f"| app | 2/2 | {NEW} | updating | start-first |",
        "| worker | - | - | - | - |"]


# -- the watch ------------------------------------------------------------------
def test_the_watch_prints_one_line_per_change_and_stops_at_the_verdict() -> None:
    frames = [service(task(1, OLD_IMAGE), task(2, OLD_IMAGE), state="updating", started="t1"),
              service(task(1, OLD_IMAGE), task(2, OLD_IMAGE), state="updating", started="t1"),
              service(task(1), task(2, OLD_IMAGE), state="updating", started="t1"),
              service(task(1), task(2), state="completed", started="t1")]
    lines: list[str] = []
    clock = FakeClock()
    watch = RolloutWatch(None, "s", ["app"], NEW, before={}, timeout=60,
                         progress=lines.append, read=lambda api, stack: {"app": frames.pop(0)},
                         clock=clock, sleep=clock.sleep)
    assert watch.wait().outcome == "deployed"
    assert lines == [
        f"Watching app of stack s until every replica runs {NEW} (up to 60 s).",
        "app: updating, 2/2 running (aaaaaaaaaaaa)",
        "app: updating, 2/2 running (aaaaaaaaaaaa, bbbbbbbbbbbb)",
        "app: completed, 2/2 running (bbbbbbbbbbbb)"]
    assert clock.sleeps == [1.0, 1.0, 1.0]


def test_the_watch_never_runs_past_its_timeout() -> None:
    clock = FakeClock()
    stuck = service(task(1, OLD_IMAGE), state="updating", started="t1")
    watch = RolloutWatch(None, "s", ["app"], NEW, before={}, timeout=5.5, progress=print,
                         read=lambda api, stack: {"app": stuck}, clock=clock,
                         sleep=clock.sleep)
    assert watch.wait().outcome == "waiting"
    assert clock.now == 5.5


# -- the SDK reads ----------------------------------------------------------------
class FakeSwarmAPI:
    def __init__(self) -> None:
        self.configs: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.containers: dict[str, dict[str, Any]] = {}
        self.info_result: dict[str, Any] = {"Swarm": {"LocalNodeState": "active",
                                                      "ControlAvailable": True}}

    def info(self) -> dict[str, Any]:
        return self.info_result

    def services(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        assert filters == {"label": "com.docker.stack.namespace=s"}
        return [{"ID": "svc1", "Spec": {
            "Name": "s_app", "Mode": {"Replicated": {"Replicas": 2}},
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
            "UpdateConfig": {"Order": "start-first"}},
            "UpdateStatus": {"State": "rollback_completed", "StartedAt": "t1",
                             "Message": "rollback completed"}}]

    def tasks(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        assert filters == {"service": "svc1"}
        return [{"ID": "t2", "Slot": 1, "NodeID": "n1", "DesiredState": "shutdown",
                 "Spec": {"ContainerSpec": {"Image": IMAGE}},
                 "Status": {"State": "failed", "Err": "task: non-zero exit (3)",
                            "Timestamp": "2", "ContainerStatus": {"ExitCode": 3,
                                                                  "ContainerID": "c2"}}},
                {"ID": "t1", "Slot": 1, "NodeID": "gone", "DesiredState": "running",
                 "Spec": {"ContainerSpec": {"Image": OLD_IMAGE}},
                 "Status": {"State": "running", "Timestamp": "1"}}]

    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "n1", "Description": {"Hostname": "worker-1"}}]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if container_id not in self.containers:
            raise api_error(404, docker.errors.NotFound)
        return self.containers[container_id]

    def create_config(self, name: str, data: bytes, labels: Mapping[str, str]) -> dict[str, str]:
        if name in self.configs:
            raise api_error(409)
        self.created += 1
        self.configs[name] = {"ID": f"cfg{self.created}", "Spec": {"Name": name,
                                                                   "Labels": dict(labels)}}
        return {"ID": f"cfg{self.created}"}

    def inspect_config(self, name: str) -> dict[str, Any]:
        if name not in self.configs:
            raise api_error(404, docker.errors.NotFound)
        return self.configs[name]

    def remove_config(self, config_id: str) -> None:
        for name, config in list(self.configs.items()):
            if config["ID"] == config_id:
                del self.configs[name]
                return
        raise api_error(404, docker.errors.NotFound)


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeSwarmAPI()


def test_stack_services_reads_specs_tasks_and_node_names() -> None:
    found = stack_services(FakeSwarmAPI(), "s")
    app = found["app"]
    assert (app.full_name, app.replicas, app.digest, app.update_state, app.order) == (
        "s_app", 2, NEW, "rollback_completed", "start-first")
    assert [(t.id, t.node, t.state, t.exit_code, t.container_id, t.digest)
            for t in app.tasks] == [("t1", "gone", "running", None, "", OLD),
                                    ("t2", "worker-1", "failed", 3, "c2", NEW)]


def test_container_health_only_for_an_unhealthy_local_container() -> None:
    api = FakeSwarmAPI()
    api.containers["c2"] = {"State": {"Health": {"Status": "unhealthy", "Log": [
        {"ExitCode": 1, "Output": "wget: server returned\n error: 404"}]}}}
    api.containers["c3"] = {"State": {"Health": {"Status": "healthy"}}}
    api.containers["c4"] = {"State": {"Health": {"Status": "unhealthy", "Log": []}}}
    assert container_health(api, "c2") == ("unhealthy (last probe exit 1: wget: server "
                                           "returned error: 404)")
    assert container_health(api, "c3") == container_health(api, "elsewhere") == ""
    assert container_health(api, "") == container_health(api, "c4") == ""


@pytest.mark.parametrize(("swarm", "expected"), [
    ({"LocalNodeState": "inactive"}, "is swarm, but the local engine is not in a Swarm "
                                     "(state inactive)."),
    ({"LocalNodeState": "active", "ControlAvailable": False},
     "is swarm, but ssh://deploy@host is a Swarm worker, not a manager")])
def test_the_engine_must_be_a_manager(swarm: dict[str, Any], expected: str) -> None:
    api = FakeSwarmAPI()
    api.info_result = {"Swarm": swarm}
    host = "ssh://deploy@host" if "ControlAvailable" in swarm else ""
    with pytest.raises(InputError) as raised:
        check_manager(api, host)
    assert raised.value.input_name == "orchestrator"
    assert expected in raised.value.message
    check_manager(FakeSwarmAPI())  # a manager passes


# -- the stack CLI ----------------------------------------------------------------
class FakeDocker:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.fail = fail

    def run(self, args: Sequence[str], *, extra_env: Mapping[str, str] | None = None,
            **options: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(args), dict(extra_env or {})))
        if self.fail:
            raise DockerError("`docker stack` failed:\nservices.app Additional property "
                              "bogus is not allowed")
        return subprocess.CompletedProcess(list(args), 0, "line 1\nline 2\n", "")


def test_stack_deploy_passes_the_environment_not_argv(tmp_path: Path) -> None:
    fake = FakeDocker()
    stack = Stack(fake, tmp_path, tmp_path / "compose.yaml", "s",  # type: ignore[arg-type]
                  {"IMAGE_TAG": f"v2@{NEW}", "PORT": "8080"})
    stack.deploy(timeout=10)
    assert fake.calls == [(["stack", "deploy", "--with-registry-auth", "--prune",
                            "--detach=true", "--compose-file", str(tmp_path / "compose.yaml"),
                            "s"], {"IMAGE_TAG": f"v2@{NEW}", "PORT": "8080"})]
    assert stack.task_logs("t1") == ["line 1", "line 2"]
    assert fake.calls[-1][0] == ["service", "logs", "--raw", "--no-trunc", "--tail", "5", "t1"]


def test_stack_deploy_adds_the_release_labels_by_a_second_file(tmp_path: Path) -> None:
    seen: list[object] = []

    class Reading(FakeDocker):
        def run(self, args: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
            override = Path(args[args.index("s") - 1])
            seen.append(json.loads(override.read_text()))
            return super().run(args, **options)

    fake = Reading()
    Stack(fake, tmp_path, tmp_path / "compose.yaml", "s",  # type: ignore[arg-type]
          labels={"app": {"deploykit.release": '{"tag":"$v2"}'}}).deploy()
    assert fake.calls[0][0][5:8] == ["--compose-file", str(tmp_path / "compose.yaml"),
                                     "--compose-file"]
    assert seen == [{"services": {"app": {"deploy": {"labels": {
        "deploykit.release": '{"tag":"$$v2"}'}}}}}]
    assert not Path(fake.calls[0][0][8]).exists()  # removed afterwards


def test_release_labels_come_from_the_first_image_service_that_has_them() -> None:
    labelled = replace(service(task(1)), labels={"deploykit.release": "r", "other": "x",
                                                 "deploykit.history": "h"})
    project = ComposeProject(Path("."), Path("compose.yaml"), "s", ("app", "db", "worker"),
                             ("app", "worker"))
    assert release_labels({"worker": labelled, "app": service(task(1))}, project) == {
        "deploykit.release": "r", "deploykit.history": "h"}
    assert release_labels({}, project) == {}


def test_stack_config_names_the_file_it_rejected(tmp_path: Path) -> None:
    stack = Stack(FakeDocker(fail=True), tmp_path,  # type: ignore[arg-type]
                  tmp_path / "compose.yaml", "s")
    with pytest.raises(ComposeError) as raised:
        stack.config()
    assert raised.value.message == (f"`docker stack config` rejected {tmp_path}/compose.yaml:\n"
                                    "services.app Additional property bogus is not allowed")


# -- the lock -------------------------------------------------------------------------
def holder(token: str, **fields: Any) -> Holder:
    return Holder(project="s", token=token, pid=1, hostname="runner", boot_id="b",
                  since="2026-01-01T12:00:00Z", expires="2026-01-01T13:00:00Z", **fields)


def make_lock(client: FakeClient, token: str, actions: CapturedActions,
              clock: FakeClock, **fields: Any) -> SwarmLock:
    return SwarmLock(client, holder(token, **fields), timeout=4, actions=actions,
                     clock=clock, sleep=clock.sleep,
                     now=lambda: datetime(2026, 1, 1, 12, 30, tzinfo=UTC))


def test_the_lock_is_one_config_object_held_until_release(
        make_actions: Callable[..., CapturedActions]) -> None:
    client, clock = FakeClient(), FakeClock()
    first = make_lock(client, "one", make_actions(), clock, container="c1")
    client.api.containers["c1"] = {"State": {"Running": True}}
    first.acquire()
    assert client.api.configs["deploykit-lock-s"]["Spec"]["Labels"][
        "io.deploykit.lock.token"] == "one"
    second = make_lock(client, "two", make_actions(), clock)
    with pytest.raises(LockError) as raised:
        second.acquire()
    assert "`docker config rm deploykit-lock-s`" in raised.value.hint
    first.verify()
    first.release()
    assert client.api.configs == {}
    second.acquire()
    with pytest.raises(LockError, match="was taken over"):
        first.verify()


def test_a_stale_lock_is_removed_by_its_id(make_actions: Callable[..., CapturedActions]) -> None:
    client, clock = FakeClient(), FakeClock()
    make_lock(client, "dead", make_actions(), clock, container="gone").acquire()
    actions = make_actions()
    make_lock(client, "next", actions, clock).acquire()
    assert client.api.configs["deploykit-lock-s"]["ID"] == "cfg2"
    assert "Removing the stale lock deploykit-lock-s" in actions.out.getvalue()
    assert "its container gone is no longer running" in actions.out.getvalue()


# -- the seam ---------------------------------------------------------------------------
@pytest.mark.parametrize(("orchestrator", "expected"), [
    ("swarm", "SwarmEngine"), ("compose", "ComposeEngine")])
def test_the_deployment_picks_its_orchestrator(
        orchestrator: str, expected: str, make_actions: Callable[..., CapturedActions],
        tmp_path: Path) -> None:
    settings = replace(load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "org/app",
                                      "INPUT_STATE_DIR": str(tmp_path),
                                      "INPUT_ORCHESTRATOR": orchestrator}))
    runtime = Runtime.create(settings, make_actions(), {}, project=Future())
    deployment = Deployment(runtime, "deploy")
    assert type(deployment.engine).__name__ == expected
    assert isinstance(deployment.engine, Engine)
