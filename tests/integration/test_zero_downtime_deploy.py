"""Issue 22's acceptance through the CLI: ``deploykit deploy`` and ``deploykit rollback`` of
examples/zero-downtime (``web``: two replicas, ``update_config.order: start-first``, behind
the example's HAProxy 2.6) on the real engine, under a client sending 40 requests/s through
the proxy and counting every answer other than 200 and every error.

One site tells the story, in order: the first deploy (a plain ``up``: nothing runs yet), a
good v1 -> v2, a v3 that fails its healthcheck, a rollback, a SIGTERM inside the start-first
window (while compose starts the new containers, and once they exist), each followed by the
next deploy. A test run on its own deploys what it needs first. The refusals (a host port,
``container_name``, a one-shot under start-first) each run on a project of their own, with
v1 already up by plain compose.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from deploykit.containers import docker_client
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, free_port
from tests.integration.loadclient import LoadClient, LoadResult
from tests.integration.test_deploy import Project, deploy
from tests.integration.zdt_fixtures import (  # noqa: F401 (the fixtures, by name)
    EXAMPLE,
    wait_serving,
    zdt_proxy_image,
    zdt_releases,
)

RATE = 40
ROOT = Path(__file__).resolve().parents[2]


class Box(NamedTuple):
    """One container of the project: its compose service, the tag its image names, state."""

    service: str
    tag: str
    state: str


@dataclass
class Site:
    """A copy of examples/zero-downtime deployed by deploykit (``project.port``: the proxy's)."""

    project: Project
    proxy_image: str
    api: Any

    @property
    def name(self) -> str:
        return self.project.name

    @property
    def url(self) -> str:
        return self.project.url

    @property
    def image(self) -> str:
        return f"{self.project.registry}/{self.project.repo}"

    @property
    def compose_env(self) -> str:
        return f"PROXY_IMAGE={self.proxy_image}\nPROXY_PORT={self.project.port}"

    def containers(self) -> dict[str, Box]:
        """Every container of the project (stopped ones too): full ID -> Box."""
        found = self.api.containers(all=True, filters={
            "label": f"com.docker.compose.project={self.name}"})
        return {c["Id"]: Box(c["Labels"].get("com.docker.compose.service", ""),
                             c["Image"].partition("@")[0].rsplit(":", 1)[-1], c["State"])
                for c in found}

    def web(self) -> dict[str, str]:
        """The web containers (any state): ID -> release tag."""
        return {i: box.tag for i, box in self.containers().items() if box.service == "web"}

    def service_ids(self, service: str) -> set[str]:
        return {i for i, box in self.containers().items() if box.service == service}

    def started(self, ids: set[str]) -> dict[str, str]:
        """When each container last started: a stop and start would change it."""
        return {i: self.api.inspect_container(i)["State"]["StartedAt"] for i in ids}

    def running_web(self) -> list[str]:
        """The tags of the running web containers, sorted."""
        return sorted(box.tag for box in self.containers().values()
                      if box.service == "web" and box.state == "running")

    def compose_ps_services(self) -> list[str]:
        """What ``docker compose -p <name> ps`` lists, by service."""
        return subprocess.run(
            ["docker", "compose", "-p", self.name, "ps", "--format", "{{.Service}}"],
            capture_output=True, text=True, check=True, timeout=60,
            cwd=ROOT).stdout.split()

    def plain_up(self, tag: str, *flags: str) -> None:
        """``docker compose up -d`` of release ``tag`` by hand, as a user would."""
        env = {**os.environ, "IMAGE_REGISTRY": self.project.registry,
               "IMAGE_REPO": self.project.repo, "IMAGE_TAG": tag,
               "PROXY_IMAGE": self.proxy_image, "PROXY_PORT": str(self.project.port)}
        subprocess.run(["docker", "compose", "-p", self.name, "up", "-d", "--no-build",
                        *flags], cwd=self.project.directory, env=env, check=True,
                       capture_output=True, timeout=180)

    def wait_serving(self, release: str, servers: int = 2, timeout: float = 30) -> None:
        """Until the proxy answers ``release <tag>`` from ``servers`` distinct containers."""
        wait_serving(self.url, release=release, servers=servers, timeout=timeout)


@dataclass(frozen=True)
class Run:
    """One deploykit command: exit code, GITHUB_OUTPUT, log (stdout), job summary."""

    code: int
    outputs: dict[str, str]
    log: str
    summary: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("::error")]

    @property
    def start_first(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("Start-first:")]


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """A measurement, shown even without ``-s`` (``run`` reads what capsys captured)."""
    with capsys.disabled():
        print(f"\n{text}")


def run(site: Site, capsys: pytest.CaptureFixture[str], command: str = "deploy",
        **inputs: str) -> Run:
    summary = site.project.directory / "summary.md"
    summary.unlink(missing_ok=True)
    code, outputs, log = deploy(site.project, capsys, command,
                                compose_env=site.compose_env, **inputs)
    return Run(code, outputs, log, summary.read_text() if summary.exists() else "")


def spawn(site: Site, tag: str, log: Path, output: Path) -> subprocess.Popen[str]:
    """``python -m deploykit deploy`` as its own process (its log into ``log``)."""
    env = site.project.env(image_tag=tag, compose_env=site.compose_env)
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(site.project.directory / "summary.md"),
                "PYTHONPATH": str(ROOT)})
    with log.open("w") as sink:  # a file, not a pipe: nobody reads it while we poll
        return subprocess.Popen([sys.executable, "-m", "deploykit", "deploy"], env=env,
                                cwd=site.project.directory, stdout=sink,
                                stderr=subprocess.STDOUT, text=True)


def ensure_running(site: Site, capsys: pytest.CaptureFixture[str], *tags: str) -> None:
    """Unless ``tags[-1]`` runs already (the story so far), deploy ``tags`` in order: what a
    test run on its own needs first. Then the proxy serves it from both containers."""
    if site.running_web() != [tags[-1]] * 2:
        for tag in tags:
            result = run(site, capsys, image_tag=tag)
            assert (result.code, result.outputs.get("status")) == (0, "deployed"), result.log
    site.wait_serving(tags[-1])


@contextmanager
def under_load(url: str) -> Iterator[Callable[[], LoadResult]]:
    """40 requests/s through the proxy from 1 s before to 2 s after the block."""
    with LoadClient(url, rate=RATE, max_requests=RATE * 150, max_seconds=150) as load:
        time.sleep(1)
        yield lambda: load.result
        time.sleep(2)  # the proxy has forgotten the removed containers by then


def make_site(directory: Path, proxy_image: str, registry: TestRegistry,
              releases: tuple[str, dict[str, str]],
              compose: Callable[[dict[str, Any]], None] | None = None) -> Site:
    """A copy of the example (``compose`` may change its parsed YAML) in ``directory``."""
    if compose is None:
        shutil.copy(EXAMPLE / "compose.yaml", directory / "compose.yaml")
    else:
        write_compose(directory, compose)
    repo, digests = releases
    project = Project(f"zdt-{uuid.uuid4().hex[:10]}", directory, free_port(),
                      directory / "state", registry.host, repo, digests)
    return Site(project, proxy_image, docker_client(os.environ).api)


def write_compose(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())
    change(config)
    (directory / "compose.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def take_down(site: Site) -> None:
    for command in (["compose", "-p", site.name, "down", "--volumes", "--remove-orphans",
                     "--timeout", "1"], ["network", "rm", f"deploykit-lock-{site.name}"]):
        subprocess.run(["docker", *command], capture_output=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def site(zdt_proxy_image: str, zdt_releases: tuple[str, dict[str, str]],  # noqa: F811
         open_registry: TestRegistry, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    """The story's site: a fresh project, nothing deployed yet; taken down afterwards."""
    made = make_site(tmp_path_factory.mktemp("zdt-site"), zdt_proxy_image, open_registry,
                     zdt_releases)
    yield made
    take_down(made)


# -- the story -----------------------------------------------------------------------------
def test_first_deploy_is_a_plain_up(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert site.containers() == {}

    result = run(site, capsys, image_tag="v1")

    assert result.code == 0, result.log
    assert result.outputs["status"] == "deployed"
    assert result.outputs["digest"] == site.project.digests["v1"]
    assert result.start_first == [], result.log  # nothing ran: nothing to keep serving
    assert site.running_web() == ["v1", "v1"]
    site.wait_serving("v1")


def test_good_release_starts_first_with_no_failed_request(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_running(site, capsys, "v1")
    v1 = site.web()
    proxy = site.service_ids("proxy")

    with under_load(site.url) as load:
        result = run(site, capsys, image_tag="v2")

    report(capsys, f"v1 -> v2 (start-first): {load().summary()}")
    assert result.code == 0, result.log
    assert result.outputs["status"] == "deployed"
    assert result.outputs["digest"] == site.project.digests["v2"]
    assert result.start_first, result.log
    assert load().failures == [], load().summary()
    assert load().releases["v2"] > 0, load().summary()
    assert site.running_web() == ["v2", "v2"]
    assert len(site.web()) == 2 and not set(site.web()) & set(v1)
    assert site.compose_ps_services().count("web") == 2
    assert site.service_ids("proxy") == proxy  # not recreated: it kept its connections
    # Compose sees the project as its own: a hand-run `up -d` of v2 recreates nothing.
    after = site.containers()
    site.plain_up(f"v2@{site.project.digests['v2']}")
    assert site.containers() == after


def test_failing_release_leaves_the_old_serving_with_no_failed_request(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_running(site, capsys, "v1", "v2")
    before = site.containers()
    v2 = site.web()
    started = site.started(set(v2))

    with under_load(site.url) as load:
        result = run(site, capsys, image_tag="v3")

    report(capsys, f"v2 -> v3 (fails its healthcheck): {load().summary()}; v3 answered "
           f"{load().releases['v3']} request(s)")
    assert result.code == 1, result.log
    assert result.outputs["status"] == "rolled_back"
    kept = (f"Start-first: web kept serving {site.image}@{site.project.digests['v2']} "
            "throughout (the old containers never stopped)")
    assert len(result.errors) == 1, result.log
    assert kept in result.errors[0], result.errors[0]
    assert kept in result.summary, result.summary
    assert load().failures == [], load().summary()
    # the same v2 containers, never stopped; no v3 container left; the proxy untouched
    assert site.containers() == before
    assert site.web() == v2 and site.running_web() == ["v2", "v2"]
    assert site.started(set(v2)) == started
    # HAProxy 2.6 counts a newly resolved server as up until its first check (500 ms) fails
    assert load().releases["v3"] <= RATE, load().summary()


def test_rollback_is_a_start_first_deploy_of_the_previous_release(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_running(site, capsys, "v1", "v2")
    v2 = site.web()

    with under_load(site.url) as load:
        result = run(site, capsys, "rollback")

    report(capsys, f"rollback v2 -> v1 (start-first): {load().summary()}")
    assert result.code == 0, result.log
    assert result.outputs["status"] == "rolled_back"  # a verified rollback's status
    assert result.outputs["digest"] == site.project.digests["v1"]
    assert result.start_first, result.log
    assert load().failures == [], load().summary()
    assert site.running_web() == ["v1", "v1"]
    assert len(site.web()) == 2 and not set(site.web()) & set(v2)
    assert site.compose_ps_services().count("web") == 2


def new_containers_created(site: Site, log: Path) -> bool:
    return len(site.web()) > 2


def start_first_began(site: Site, log: Path) -> bool:
    return "Start-first: web: starting" in log.read_text()


SIGTERM_WHEN: Mapping[str, Callable[[Site, Path], bool]] = {
    "once the new containers exist": new_containers_created,
    "while compose starts them": start_first_began,  # `up --scale` is running
}


@pytest.mark.parametrize("when", list(SIGTERM_WHEN))
def test_sigterm_in_the_start_first_window_keeps_the_old_serving(
        when: str, site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ensure_running(site, capsys, "v1")
    before = site.containers()
    started = site.started(set(before))
    log, output = tmp_path / "deploy.log", tmp_path / "output"
    summary = site.project.directory / "summary.md"
    summary.unlink(missing_ok=True)

    with under_load(site.url) as load:
        process = spawn(site, "v2", log, output)
        deadline = time.monotonic() + 60
        while not SIGTERM_WHEN[when](site, log):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not {when} within 60 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)

    text = log.read_text()
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    errors = [line for line in text.splitlines() if line.startswith("::error")]
    report(capsys, f"SIGTERM {when} (v1 -> v2): {load().summary()}\n"
           + "\n".join(errors))
    assert process.returncode == 1, text
    assert outputs.get("status") == "rolled_back", text
    kept = (f"Start-first: web kept serving {site.image}@{site.project.digests['v1']} "
            "throughout (the old containers never stopped)")
    assert len(errors) == 1, text
    assert errors[0].startswith("::error title=Deploy cancelled::Cancelled (SIGTERM) during ")
    assert kept in errors[0], errors[0]
    assert kept in summary.read_text()
    assert load().failures == [], load().summary()
    # the old ones kept serving, never restarted; the new ones are gone
    assert site.containers() == before
    assert site.started(set(before)) == started

    result = run(site, capsys, image_tag="v2")  # the next deploy works
    assert (result.code, result.outputs["status"]) == (0, "deployed"), result.log
    assert result.start_first, result.log
    assert site.running_web() == ["v2", "v2"]


# -- refused before anything changes ---------------------------------------------------------
def _host_port(config: dict[str, Any]) -> None:
    config["services"]["web"]["ports"] = [f"127.0.0.1:{free_port()}:8080"]


def _container_name(config: dict[str, Any]) -> None:
    web = config["services"]["web"]
    web["container_name"] = f"zdt-web-{uuid.uuid4().hex[:8]}"
    web["deploy"]["replicas"] = 1  # compose itself refuses a container_name with 2


def _one_shot(config: dict[str, Any]) -> None:
    config["services"]["migrate"] = {
        "image": "${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}", "command": ["true"],
        "restart": "no", "labels": {"deploykit.one-shot": "true"},
        "deploy": {"update_config": {"order": "start-first"}}}


REFUSALS: Mapping[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    "host port": (_host_port, "web", "publishes host port 127.0.0.1:"),
    "container_name": (_container_name, "web", "sets `container_name: zdt-web-"),
    "one-shot": (_one_shot, "migrate", "is a one-shot"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_start_first_cannot_run_is_refused_before_anything_changes(
        case: str, zdt_proxy_image: str,  # noqa: F811
        zdt_releases: tuple[str, dict[str, str]],  # noqa: F811
        open_registry: TestRegistry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    change, service, reason = REFUSALS[case]
    refused = make_site(tmp_path, zdt_proxy_image, open_registry, zdt_releases)
    try:
        refused.plain_up("v1")  # v1 runs (by hand); then the file asks for the impossible
        before = refused.containers()
        assert sorted(box.service for box in before.values()) == ["proxy", "web", "web"]
        write_compose(tmp_path, change)

        result = run(refused, capsys, image_tag="v2")

        assert result.code == 1, result.log
        assert result.outputs.get("status") == "failed", result.log
        assert len(result.errors) == 1, result.log
        assert f"Service '{service}'" in result.errors[0] and reason in result.errors[0]
        assert refused.containers() == before
    finally:
        take_down(refused)
