"""The start-first rollout in a mixed project, on the real engine behind the example's proxy:
``migrate`` (a one-shot), ``web`` (start-first, 2 replicas) and ``worker`` (stop-first) on
one image, beside the proxy. What test_zero_downtime_deploy.py does not reach:

- the one-shot runs first, then ``web`` switches start-first, then compose's own ``up``
  recreates ``worker`` and leaves the new ``web`` containers alone (the service selection
  gives them the config hash that ``up`` expects; compose leaves a ``depends_on`` on an
  unselected service out of the hash);
- a smoke test that fails after the switch sends ``web`` back start-first and restores
  ``worker``, with no failed request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import TestRegistry
from tests.integration.test_zero_downtime_deploy import (
    Site,
    make_site,
    report,
    run,
    take_down,
    under_load,
)
from tests.integration.zdt_fixtures import (  # noqa: F401 (the fixtures, by name)
    zdt_proxy_image,
    zdt_releases,
)

NO_HEALTHCHECK = {"disable": True}


def mixed(config: dict[str, Any]) -> None:
    """The example plus ``migrate`` (one-shot, ``web`` waits for it) and ``worker``."""
    image = config["services"]["web"]["image"]
    config["services"] = {
        "migrate": {"image": image, "command": ["true"], "healthcheck": NO_HEALTHCHECK},
        **config["services"],
        "worker": {"image": image, "command": ["sleep", "3600"],
                   "healthcheck": NO_HEALTHCHECK, "stop_signal": "SIGKILL"},
    }
    config["services"]["web"]["depends_on"] = {
        "migrate": {"condition": "service_completed_successfully"}}


@pytest.fixture(scope="module")
def site(zdt_proxy_image: str, zdt_releases: tuple[str, dict[str, str]],  # noqa: F811
         open_registry: TestRegistry, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    made = make_site(tmp_path_factory.mktemp("zdt-mixed"), zdt_proxy_image, open_registry,
                     zdt_releases, mixed)
    yield made
    take_down(made)


def tags(site: Site, service: str) -> list[str]:
    return sorted(box.tag for box in site.containers().values()
                  if box.service == service and box.state == "running")


def test_one_shot_first_then_start_first_then_the_stop_first_services(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    first = run(site, capsys, image_tag="v1")
    assert (first.code, first.outputs.get("status")) == (0, "deployed"), first.log
    site.wait_serving("v1")
    web, worker = site.service_ids("web"), site.service_ids("worker")

    with under_load(site.url) as load:
        result = run(site, capsys, image_tag="v2", smoke_url=site.url,
                     smoke_contains="release v2")

    report(capsys, f"mixed v1 -> v2 (start-first web): {load().summary()}")
    assert (result.code, result.outputs["status"]) == (0, "deployed"), result.log
    assert load().failures == [], load().summary()
    lines = result.log.splitlines()
    assert lines.index("::group::docker compose up (one-shot services)") \
        < lines.index("Start-first: web: starting 2 new container(s) beside the 2 running.") \
        < lines.index("::group::docker compose up (the other services)")
    assert not [line for line in lines if "-web-" in line and "Recreate" in line], result.log
    assert (tags(site, "web"), tags(site, "worker")) == (["v2", "v2"], ["v2"])
    assert not site.service_ids("web") & web and not site.service_ids("worker") & worker
    assert [box.state for box in site.containers().values() if box.service == "migrate"] \
        == ["exited"]


def test_a_smoke_test_that_fails_after_the_switch_goes_back_start_first(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    if tags(site, "web") != ["v2", "v2"]:
        assert run(site, capsys, image_tag="v2").code == 0
    site.wait_serving("v2")

    with under_load(site.url) as load:
        result = run(site, capsys, image_tag="v1", smoke_url=site.url,
                     smoke_contains="release v9", smoke_timeout="3")

    report(capsys, f"mixed v2 -> v1, smoke fails after the switch: {load().summary()}")
    assert (result.code, result.outputs["status"]) == (1, "rolled_back"), result.log
    assert load().failures == [], load().summary()
    digest = site.project.digests["v2"]
    assert (f"Start-first: web went back to {site.image}@{digest} the same way, never "
            "without a serving container.") in result.errors[0], result.errors
    assert f"worker (stop-first): {site.image}@{digest} runs again and is healthy." \
        in result.errors[0], result.errors
    assert (tags(site, "web"), tags(site, "worker")) == (["v2", "v2"], ["v2"])
