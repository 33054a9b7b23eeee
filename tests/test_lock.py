from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from deploykit.dockercli import compose_running
from deploykit.errors import DockerError, LockError
from deploykit.lock import (
    EngineLock,
    Holder,
    Timeouts,
    engine_lock,
    lock_ttl,
    process_alive,
    process_start,
    stale_reason,
    this_holder,
)
from tests.conftest import FakeClock, api_error

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeNetwork:
    def __init__(self, network_id: str, labels: dict[str, str]) -> None:
        self.id = network_id
        self.attrs = {"Labels": labels}


class FakeNetworks:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def create(self, name: str, labels: dict[str, str]) -> FakeNetwork:
        self.engine.creates += 1
        if name in self.engine.networks:
            raise api_error(409)
        network = FakeNetwork(f"id{self.engine.creates}", dict(labels))
        self.engine.networks[name] = network
        return network

    def get(self, name: str) -> FakeNetwork:
        if name not in self.engine.networks:
            raise api_error(404, docker.errors.NotFound)
        return self.engine.networks[name]


class FakeAPI:
    """The SDK's raw calls the lock makes (``POST /networks/create`` included)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.posted: list[dict[str, Any]] = []

    def _url(self, path: str) -> str:
        return f"http+docker://localhost/v1.45{path}"

    def _post_json(self, url: str, data: dict[str, Any]) -> FakeNetwork:
        assert url == "http+docker://localhost/v1.45/networks/create"
        self.posted.append(data)
        return self.engine.networks_api.create(data["Name"], labels=data["Labels"])

    def _result(self, response: FakeNetwork, json: bool) -> dict[str, Any]:
        assert json
        return {"Id": response.id, "Warning": ""}

    def remove_network(self, network_id: str) -> None:
        for name, network in list(self.engine.networks.items()):
            if network.id == network_id:
                del self.engine.networks[name]
                return
        raise api_error(404, docker.errors.NotFound)

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if container_id not in self.engine.containers:
            raise api_error(404, docker.errors.NotFound)
        return {"State": {"Running": self.engine.containers[container_id]}}


class FakeEngine:
    def __init__(self) -> None:
        self.networks: dict[str, FakeNetwork] = {}
        self.containers: dict[str, bool] = {}
        self.creates = 0
        self.networks_api = FakeNetworks(self)
        self.api = FakeAPI(self)

    @property
    def networks_(self) -> FakeNetworks:
        return self.networks_api


class FakeClient:
    def __init__(self, engine: FakeEngine) -> None:
        self.networks = engine.networks_api
        self.api = engine.api


def holder(**changes: Any) -> Holder:
    base = {"project": "shop", "token": "t-me", "run_url": "https://gh/run/1", "actor": "ana",
            "pid": 100, "pid_start": "5", "hostname": "runner", "boot_id": "boot-1",
            "container": "", "since": "2026-01-01T11:59:00Z",
            "expires": "2026-01-01T13:00:00Z"}
    return Holder(**{**base, **changes})


def make_lock(engine: FakeEngine, me: Holder, clock: FakeClock, actions: Any,
              timeout: float = 10) -> EngineLock:
    return EngineLock(FakeClient(engine), me, timeout=timeout, actions=actions,
                      poll_interval=2, clock=clock, sleep=clock.sleep, now=lambda: NOW)


def test_labels_round_trip() -> None:
    me = holder(pid=4242, container="abc")
    labels = me.labels()
    assert labels["io.deploykit.lock.run_url"] == "https://gh/run/1"
    assert labels["io.deploykit.lock.pid"] == "4242"
    assert Holder.from_labels(labels) == me


def test_describe_names_run_actor_and_since() -> None:
    assert holder().describe() == "https://gh/run/1 (actor ana, since 2026-01-01T11:59:00Z)"
    assert holder(run_url="").describe() == \
        "pid 100 on runner (actor ana, since 2026-01-01T11:59:00Z)"


def test_describe_without_an_actor_names_none() -> None:
    """Issue 23: "actor unknown actor" read as a name; no actor, no actor wording."""
    assert holder(actor="").describe() == "https://gh/run/1 (since 2026-01-01T11:59:00Z)"


def test_free_lock_is_acquired_and_released(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine, clock = FakeEngine(), FakeClock()
    lock = make_lock(engine, holder(), clock, make_actions())
    lock.acquire()
    assert set(engine.networks) == {"deploykit-lock-shop"}
    labels = engine.networks["deploykit-lock-shop"].attrs["Labels"]
    assert labels["io.deploykit.lock.token"] == "t-me"
    assert labels["io.deploykit.lock"] == "true"
    assert [(p["Name"], p["ConfigOnly"]) for p in engine.api.posted] == [
        ("deploykit-lock-shop", True)]  # a name in the engine's store: no bridge to set up
    lock.verify()
    lock.release()
    assert engine.networks == {}


def test_context_manager_releases_on_error(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine = FakeEngine()
    me = this_holder("shop", run_url="", actor="ana", container="", ttl=60)
    with pytest.raises(RuntimeError), engine_lock(FakeClient(engine), me, timeout=1,
                                                  actions=make_actions()):
        assert "deploykit-lock-shop" in engine.networks
        raise RuntimeError("boom")
    assert engine.networks == {}


def test_held_lock_waits_then_names_the_holder(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine, clock, actions = FakeEngine(), FakeClock(), make_actions()
    other = holder(token="t-other", pid=os.getpid(), pid_start=process_start(os.getpid()),
                   hostname="runner", run_url="https://gh/run/7", actor="bob")
    engine.networks["deploykit-lock-shop"] = FakeNetwork("n1", other.labels())
    me = holder(pid=1, hostname="runner")
    with pytest.raises(LockError) as info:
        make_lock(engine, me, clock, actions, timeout=10).acquire()
    assert info.value.message == (
        "Another deploy of project 'shop' holds the lock deploykit-lock-shop: "
        "https://gh/run/7 (actor bob, since 2026-01-01T11:59:00Z); waited 10 s.")
    assert "docker network rm deploykit-lock-shop" in info.value.hint
    assert clock.sleeps == [2, 2, 2, 2, 2]
    assert actions.out.getvalue().count("Waiting for the lock") == 1


def test_lock_freed_while_waiting_is_taken(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine, clock = FakeEngine(), FakeClock()
    other = holder(token="t-other", pid=os.getpid(), pid_start=process_start(os.getpid()))
    engine.networks["deploykit-lock-shop"] = FakeNetwork("n1", other.labels())

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        engine.networks.clear()  # the other deploy finished

    lock = EngineLock(FakeClient(engine), holder(), timeout=10, actions=make_actions(),
                      clock=clock, sleep=sleep, now=lambda: NOW)
    lock.acquire()
    assert engine.networks["deploykit-lock-shop"].attrs["Labels"]["io.deploykit.lock.token"] \
        == "t-me"


def test_stale_lock_of_a_dead_local_process_is_removed(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine, clock, actions = FakeEngine(), FakeClock(), make_actions()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = this_holder("shop", run_url="", actor="me", container="", ttl=60)
    other = holder(token="t-dead", pid=dead.pid, pid_start="", hostname=me.hostname,
                   boot_id=me.boot_id)
    engine.networks["deploykit-lock-shop"] = FakeNetwork("n-dead", other.labels())
    make_lock(engine, me, clock, actions).acquire()
    assert engine.networks["deploykit-lock-shop"].attrs["Labels"]["io.deploykit.lock.token"] \
        == me.token
    assert clock.sleeps == []
    assert f"its process {dead.pid} in {me.hostname} is gone" in actions.out.getvalue()


def test_verify_detects_a_takeover(make_actions) -> None:  # type: ignore[no-untyped-def]
    engine, clock = FakeEngine(), FakeClock()
    lock = make_lock(engine, holder(), clock, make_actions())
    lock.acquire()
    engine.networks["deploykit-lock-shop"] = FakeNetwork("n9", holder(token="t-new").labels())
    with pytest.raises(LockError, match="was taken over"):
        lock.verify()


def test_engine_errors_other_than_conflict_are_docker_errors(make_actions) -> None:  # type: ignore[no-untyped-def]
    class Broken(FakeNetworks):
        def create(self, name: str, labels: dict[str, str]) -> FakeNetwork:
            raise api_error(500)

    engine = FakeEngine()
    engine.networks_api = Broken(engine)
    client = FakeClient(engine)
    lock = EngineLock(client, holder(), timeout=1, actions=make_actions())
    with pytest.raises(DockerError, match="Cannot create the lock deploykit-lock-shop: "
                       "explanation 500"):
        lock.acquire()


# -- the stale rule ---------------------------------------------------------------
def running(states: dict[str, bool]) -> Any:
    return lambda container_id: states.get(container_id, False)


def test_holder_container_gone_is_stale() -> None:
    other = holder(container="c" * 64)
    assert stale_reason(other, holder(), now=NOW, container_running=running({})) == \
        "its container cccccccccccc is no longer running"


def test_holder_container_running_is_alive_until_expiry() -> None:
    other = holder(container="c1")
    assert stale_reason(other, holder(), now=NOW, container_running=running({"c1": True})) \
        == ""
    expired = holder(container="c1", expires="2000-01-01T00:00:00Z")
    assert stale_reason(expired, holder(), now=NOW, container_running=running({"c1": True})) \
        == "it expired at 2000-01-01T00:00:00Z"


def test_same_container_uses_the_pid() -> None:
    other = holder(container="c1", pid=77, hostname="c1host")
    me = holder(container="c1", pid=78)
    assert stale_reason(other, me, now=NOW, container_running=running({"c1": True}),
                        pid_alive=lambda pid, start: False) == \
        "its process 77 in container c1 is gone"


def test_same_host_uses_the_pid() -> None:
    me = holder(pid=1)
    other = holder(pid=77, pid_start="9")
    seen: list[tuple[int, str]] = []

    def alive(pid: int, start: str) -> bool:
        seen.append((pid, start))
        return False

    assert stale_reason(other, me, now=NOW, container_running=running({}), pid_alive=alive) \
        == "its process 77 in runner is gone"
    assert seen == [(77, "9")]
    assert stale_reason(other, me, now=NOW, container_running=running({}),
                        pid_alive=lambda pid, start: True) == ""


def test_other_host_is_stale_only_after_expiry() -> None:
    other = holder(hostname="elsewhere", pid=77)
    assert stale_reason(other, holder(), now=NOW, container_running=running({})) == ""
    later = NOW + timedelta(hours=2)
    assert stale_reason(other, holder(), now=later, container_running=running({})) == \
        "it expired at 2026-01-01T13:00:00Z"


def test_we_in_a_container_never_trust_a_host_pid() -> None:
    me = holder(container="mine")
    other = holder(pid=77)  # same hostname/boot id, but our pid namespace differs
    assert stale_reason(other, me, now=NOW, container_running=running({}),
                        pid_alive=lambda pid, start: False) == ""


def test_process_alive_and_reuse() -> None:
    pid = os.getpid()
    assert process_alive(pid, process_start(pid))
    assert not process_alive(pid, "1")  # same pid, another start time: reused
    assert not process_alive(0, "")


def test_zombie_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start(child.pid)
    try:
        for _ in range(100):
            if not process_alive(child.pid, start):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert not process_alive(child.pid, start)  # exited, not yet reaped
    finally:
        child.wait()


def test_timeouts_bound_every_step_and_the_lock_outlives_them() -> None:
    timeouts = Timeouts.of(health_timeout=120, health_settle=5, smoke_timeout=60)
    assert (timeouts.pull, timeouts.up, timeouts.command, timeouts.smoke) == (900, 240, 300, 70)
    one_shots = timeouts.up + 120  # their `up`, then the wait for them
    deploy = timeouts.command + timeouts.pull + one_shots + timeouts.up + 120 + 5 + timeouts.smoke
    rollback = timeouts.up + 120 + 5
    assert timeouts.ttl == deploy + rollback + timeouts.command == 2660
    assert lock_ttl(120, 5, 60) == 2660


def test_this_holder_describes_this_process() -> None:
    me = this_holder("shop", run_url="u", actor="a", container="", ttl=60,
                     now=NOW)
    assert me.pid == os.getpid()
    assert me.since == "2026-01-01T12:00:00Z"
    assert me.expires == "2026-01-01T12:01:00Z"
    assert len(me.token) == 32


def test_a_dead_holder_whose_compose_still_runs_holds_the_lock() -> None:
    """A SIGKILLed deploy's detached `up` finishes its step: a second `up` of the project
    beside it raced it for container names ("already in use")."""
    me = holder(pid=1)
    other = holder(pid=424242)
    busy = {other.project: True}
    reason = stale_reason(other, me, now=NOW, container_running=running({}),
                          pid_alive=lambda pid, start: False,
                          project_busy=lambda project: busy.get(project, False))
    assert reason == ""
    busy[other.project] = False
    reason = stale_reason(other, me, now=NOW, container_running=running({}),
                          pid_alive=lambda pid, start: False,
                          project_busy=lambda project: busy.get(project, False))
    assert reason == "its process 424242 in runner is gone"


def test_compose_running_reads_the_project_of_each_compose_process(tmp_path: Path) -> None:
    def process(pid: str, *argv: str) -> None:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    process("10", "/usr/libexec/docker/cli-plugins/docker-compose", "compose", "-p", "shop",
            "up", "-d")
    process("11", "sleep", "-p", "blog")
    (tmp_path / "self").mkdir()
    assert compose_running("shop", tmp_path)
    assert not compose_running("blog", tmp_path)  # not compose
    assert not compose_running("sho", tmp_path)
