"""Issue 22: the engine steps of a start-first rollout, on the real engine behind the example's
real proxy (Debian's HAProxy 2.6), under a client sending 40 requests/s to it.

The steps are driven directly (deploykit.startfirst), with the verdict of the deploy's own
HealthWatch, as the rollout strategy that wires them will: a good v1 -> v2 switch, then a v3
that fails its healthcheck and is discarded while v2 keeps serving.
"""

from __future__ import annotations

import time

from deploykit.health import HealthWatch
from deploykit.startfirst import StartedBatch, batch_report
from tests.integration.loadclient import LoadClient, LoadResult
from tests.integration.zdt_fixtures import (  # noqa: F401 (the fixtures, by name)
    ZdtStack,
    zdt_proxy_image,
    zdt_releases,
    zdt_stack,
)

RATE = 40
SETTLE = 2.0


def switch(stack: ZdtStack, tag: str) -> tuple[bool, StartedBatch, LoadResult, float]:
    """Start-first to ``tag`` under load: start beside, verdict, retire or discard."""
    with LoadClient(stack.url, rate=RATE, max_requests=RATE * 60, max_seconds=60) as load:
        time.sleep(1)  # traffic before the switch
        began = time.monotonic()
        batch = stack.steps.start_new(stack.release(tag), stack.policy, timeout=60)
        watch = HealthWatch(stack.api, stack.project.name, timeout=20,
                            settle=stack.policy.settle(SETTLE))
        report = batch_report(watch.wait(), batch)
        ok = report.ok and len(report.containers) == stack.policy.replicas
        if ok:
            stack.steps.retire_old(batch, stack.policy)
        else:
            stack.steps.discard_new(batch, stack.policy)
        switched = time.monotonic() - began
        time.sleep(2)  # traffic after the switch: the proxy has forgotten the removed ones
    return ok, batch, load.result, switched


def test_good_release_switches_with_no_failed_request(zdt_stack: ZdtStack) -> None:  # noqa: F811
    stack = zdt_stack
    old = set(stack.web_releases())
    assert stack.policy.start_first and stack.policy.replicas == 2

    ok, batch, result, switched = switch(stack, "v2")

    print(f"v1 -> v2: {result.summary()}; switch {switched:.1f} s")
    assert ok
    assert set(batch.old_ids) == old and len(batch.new_ids) == 2
    assert result.failures == [], result.summary()
    assert result.releases["v2"] > 0 and result.ok == result.sent
    running = stack.web_releases()
    assert sorted(running.values()) == ["v2", "v2"] and set(running) == set(batch.new_ids)
    web_rows = [row for row in stack.compose_ps() if row["Service"] == "web"]
    assert len(web_rows) == 2
    # Compose sees the project as its own: a plain `up -d` of v2 recreates nothing.
    everything = {c["Id"] for c in stack.steps.api.containers(all=True, filters={
        "label": f"com.docker.compose.project={stack.project.name}"})}
    stack.up("v2")
    after = {c["Id"] for c in stack.steps.api.containers(all=True, filters={
        "label": f"com.docker.compose.project={stack.project.name}"})}
    assert after == everything


def test_failing_release_is_discarded_while_the_old_keeps_serving(zdt_stack: ZdtStack) -> None:  # noqa: F811
    stack = zdt_stack
    stack.up("v2")  # where the previous test left it (recreates nothing then)
    stack.wait_serving()
    v2 = stack.web_releases()
    assert sorted(v2.values()) == ["v2", "v2"]

    ok, batch, result, switched = switch(stack, "v3")

    print(f"v2 -> v3 (fails its healthcheck): {result.summary()}; discarded after "
          f"{switched:.1f} s; v3 answered {result.releases['v3']} request(s)")
    assert not ok
    assert set(batch.old_ids) == set(v2) and len(batch.new_ids) == 2
    assert result.failures == [], result.summary()
    assert stack.web_releases() == v2  # the same containers: never stopped
    assert all(c["State"]["Status"] == "running" for c in stack.web_containers())
    # HAProxy 2.6 counts a newly resolved server as up until its first check (500 ms) fails
    assert result.releases["v3"] <= RATE, result.summary()
