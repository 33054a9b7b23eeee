"""Issue 22: the engine steps of a start-first rollout, on the real engine behind the example's
real proxy (Debian's HAProxy 2.6), under a client sending 40 requests/s to it.

The steps are driven directly (deploykit.startfirst, in the order of
``zdt_fixtures.start_first_switch``), with the verdict of the deploy's own HealthWatch, as
the rollout strategy that wires them will: a good v1 -> v2 switch; a v3 that fails its
healthcheck, discarded while v2 keeps serving; new containers discarded in the middle of the
window (what a cancel does), then the next switch; a rollback to v1 in batches of one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deploykit.health import HealthWatch
from tests.integration.loadclient import LoadClient, LoadResult
from tests.integration.zdt_fixtures import (  # noqa: F401 (the fixtures, by name)
    ZdtStack,
    start_first_switch,
    zdt_proxy_image,
    zdt_releases,
    zdt_stack,
)

RATE = 40


@contextmanager
def under_load(stack: ZdtStack) -> Iterator[Callable[[], LoadResult]]:
    """40 requests/s through the proxy from 1 s before to 2 s after the block."""
    with LoadClient(stack.url, rate=RATE, max_requests=RATE * 60, max_seconds=60) as load:
        time.sleep(1)
        yield lambda: load.result
        time.sleep(2)  # the proxy has forgotten the removed containers by then


def project_ids(stack: ZdtStack) -> set[str]:
    return {c["Id"] for c in stack.api.containers(all=True, filters={
        "label": f"com.docker.compose.project={stack.project.name}"})}


def test_good_release_switches_with_no_failed_request(zdt_stack: ZdtStack) -> None:  # noqa: F811
    stack = zdt_stack
    old = set(stack.web_releases())
    assert stack.policy.start_first and stack.policy.replicas == 2
    assert stack.policy.batches() == [2]  # parallelism: 0

    with under_load(stack) as result:
        began = time.monotonic()
        ok, [batch] = start_first_switch(stack, "v2")
        switched = time.monotonic() - began

    print(f"v1 -> v2: {result().summary()}; switch {switched:.1f} s")
    assert ok
    assert set(batch.old_ids) == old and len(batch.new_ids) == 2
    assert result().failures == [], result().summary()
    assert result().releases["v2"] > 0 and result().ok == result().sent
    running = stack.web_releases()
    assert sorted(running.values()) == ["v2", "v2"] and set(running) == set(batch.new_ids)
    assert len([row for row in stack.compose_ps() if row["Service"] == "web"]) == 2
    # Compose sees the project as its own: a plain `up -d` of v2 recreates nothing.
    everything = project_ids(stack)
    stack.up("v2")
    assert project_ids(stack) == everything


def test_failing_release_is_discarded_while_the_old_keeps_serving(
        zdt_stack: ZdtStack) -> None:  # noqa: F811
    stack = zdt_stack
    stack.up("v2")  # where the previous test left it (recreates nothing then)
    stack.wait_serving()
    v2 = stack.web_releases()
    assert sorted(v2.values()) == ["v2", "v2"]

    with under_load(stack) as result:
        began = time.monotonic()
        ok, [batch] = start_first_switch(stack, "v3")
        switched = time.monotonic() - began

    print(f"v2 -> v3 (fails its healthcheck): {result().summary()}; discarded after "
          f"{switched:.1f} s; v3 answered {result().releases['v3']} request(s)")
    assert not ok
    assert set(batch.old_ids) == set(v2) and len(batch.new_ids) == 2
    assert result().failures == [], result().summary()
    assert stack.web_releases() == v2  # the same containers: never stopped
    assert all(c["State"]["Status"] == "running" for c in stack.web_containers())
    # HAProxy 2.6 counts a newly resolved server as up until its first check (500 ms) fails
    assert result().releases["v3"] <= RATE, result().summary()


def test_new_containers_discarded_mid_window_then_the_next_switch_works(
        zdt_stack: ZdtStack) -> None:  # noqa: F811
    """What a cancel (SIGINT/SIGTERM) during the start-first window does: discard_new."""
    stack = zdt_stack
    stack.up("v2")
    stack.wait_serving()
    v2 = stack.web_releases()

    with under_load(stack) as result:
        batch = stack.steps.start_new(stack.release("v1"), stack.policy, timeout=60)
        watch = HealthWatch(stack.api, stack.project.name, timeout=0.5, settle=2)
        assert not watch.wait().ok  # still in the window: not yet healthy and settled
        stack.steps.discard_new(batch, stack.policy)

    print(f"v2 -> v1 cancelled in the window: {result().summary()}")
    assert result().failures == [], result().summary()
    assert stack.web_releases() == v2
    assert not set(batch.new_ids) & project_ids(stack)

    ok, _ = start_first_switch(stack, "v1")  # the next deploy works
    assert ok and sorted(stack.web_releases().values()) == ["v1", "v1"]


def test_rollback_in_batches_of_one_under_load(zdt_stack: ZdtStack) -> None:  # noqa: F811
    """A rollback is a start-first deploy of the previous release; parallelism 1."""
    stack = zdt_stack
    stack.up("v1")
    stack.wait_serving()
    one_by_one = dataclasses.replace(stack.policy, parallelism=1)
    assert one_by_one.batches() == [1, 1]

    with under_load(stack) as result:
        ok, batches = start_first_switch(stack, "v2", one_by_one)

    print(f"v1 -> v2 in batches of one: {result().summary()}")
    assert ok and [len(b.new_ids) for b in batches] == [1, 1]
    assert len(batches[1].old_ids) == 2  # one of v1 left, and the first batch's v2
    assert result().failures == [], result().summary()
    assert sorted(stack.web_releases().values()) == ["v2", "v2"]
    assert len([row for row in stack.compose_ps() if row["Service"] == "web"]) == 2
