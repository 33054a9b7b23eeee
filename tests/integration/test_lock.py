"""The engine lock against the real engine: one winner among racing deploys, and a lock
that is a config-only network (no bridge, no iptables rules to set up and tear down)."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import Any

import docker

from deploykit.errors import LockError
from deploykit.lock import EngineLock, this_holder

RACERS = 8


def inspect_network(name: str) -> dict[str, Any] | None:
    result = subprocess.run(["docker", "network", "inspect", name], check=False,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found[0]


def test_racing_deploys_one_wins_and_the_lock_is_config_only(
    docker_engine: None, make_actions: Callable[..., Any],
) -> None:
    project = f"lockrace-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(RACERS)
    outcomes: dict[int, str] = {}
    locks: dict[int, EngineLock] = {}

    def race(index: int) -> None:
        holder = this_holder(project, run_url=f"https://gh/run/{index}", actor="ana",
                             container="", ttl=60)
        lock = EngineLock(docker.from_env(), holder, timeout=0, actions=make_actions(),
                          poll_interval=0.1)
        locks[index] = lock
        start.wait()
        try:
            lock.acquire()
            outcomes[index] = "acquired"
        except LockError:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=race, args=(i,)) for i in range(RACERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [i for i, outcome in outcomes.items() if outcome == "acquired"]
        assert (len(winners), len(outcomes)) == (1, RACERS), outcomes
        network = inspect_network(f"deploykit-lock-{project}")
        assert network is not None
        assert (network["ConfigOnly"], network["Driver"]) == (True, "null")
        assert network["Labels"]["io.deploykit.lock.run_url"] == f"https://gh/run/{winners[0]}"
        locks[winners[0]].release()
        assert inspect_network(f"deploykit-lock-{project}") is None
    finally:
        subprocess.run(["docker", "network", "rm", f"deploykit-lock-{project}"],
                       check=False, capture_output=True, timeout=30)

