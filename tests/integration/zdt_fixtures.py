"""Fixtures for the zero-downtime tests and bench: examples/zero-downtime on the real engine.

The proxy is Debian bookworm's HAProxy 2.6 built from ``examples/zero-downtime/proxy`` on a
bookworm minbase (``testbed/debian:bookworm`` in the open registry: made once with
mmdebstrap and reused). The web releases are the example's ``web/`` built for linux/amd64
and pushed like ``push_variants``: v1, v2 answer ``release vN``; v3 has no ``/health``, so
it fails its healthcheck and the proxy's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from deploykit.actions import Actions
from deploykit.compose import Compose, ComposeProject, image_environment
from deploykit.containers import docker_client
from deploykit.dockercli import DockerCLI
from deploykit.health import HealthWatch
from deploykit.startfirst import StartedBatch, StartFirst, UpdatePolicy, batch_report, check
from tests.integration.conftest import (
    OPEN_REGISTRY,
    TestRegistry,
    _unavailable,
    docker_push,
    free_port,
    remove_local_images,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "zero-downtime"
BOOKWORM_BASE = f"{OPEN_REGISTRY}/testbed/debian:bookworm"
PROXY_IMAGE = f"{OPEN_REGISTRY}/testbed/zdt-proxy:2.6"
RELEASES = ("v1", "v2", "v3")
BROKEN = "v3"


def _docker(*args: str, timeout: float = 300, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def _in_registry(reference: str) -> bool:
    repository, _, tag = reference.removeprefix(OPEN_REGISTRY + "/").partition(":")
    response = requests.head(
        f"http://{OPEN_REGISTRY}/v2/{repository}/manifests/{tag}", timeout=5,
        headers={"Accept": "application/vnd.oci.image.index.v1+json,"
                 "application/vnd.oci.image.manifest.v1+json,"
                 "application/vnd.docker.distribution.manifest.list.v2+json,"
                 "application/vnd.docker.distribution.manifest.v2+json"})
    return response.status_code == 200


def ensure_bookworm_base(workdir: Path) -> str:
    if _in_registry(BOOKWORM_BASE):
        return BOOKWORM_BASE
    if shutil.which("mmdebstrap") is None:
        _unavailable(f"{BOOKWORM_BASE} missing and no mmdebstrap to make it")
    rootfs = workdir / "bookworm.tar"
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--architectures=amd64",
                    "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                   check=True, capture_output=True, timeout=600)
    _docker("import", "--platform", "linux/amd64", str(rootfs), BOOKWORM_BASE)
    _docker("push", "-q", BOOKWORM_BASE)
    rootfs.unlink()
    return BOOKWORM_BASE


@pytest.fixture(scope="session")
def zdt_proxy_image(open_registry: TestRegistry,
                    tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example's HAProxy image, built locally (the engine's cache makes it quick)."""
    return build_proxy_image(tmp_path_factory.mktemp("bookworm"))


def build_proxy_image(workdir: Path) -> str:
    base = ensure_bookworm_base(workdir)
    _docker("build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", PROXY_IMAGE,
            str(EXAMPLE / "proxy"), timeout=900)
    return PROXY_IMAGE


def build_web_releases(registry: str, repo: str, base_image: str, workdir: Path
                       ) -> dict[str, str]:
    """The example's web service as v1, v2 (good) and v3 (no /health): tag -> digest."""
    digests = {}
    for tag in RELEASES:
        context = workdir / f"web-{tag}"
        shutil.copytree(EXAMPLE / "web", context)
        (context / "www" / "index.html").write_text(f"release {tag}\n")
        if tag == BROKEN:
            (context / "www" / "health").unlink()
        metadata = context / "metadata.json"
        docker_push("buildx", "build", "--platform", "linux/amd64", "--push",
                    "--provenance=false", "--metadata-file", str(metadata), "--build-arg",
                    f"BASE_IMAGE={base_image}", "-t", f"{registry}/{repo}:{tag}", str(context))
        digests[tag] = json.loads(metadata.read_text())["containerimage.digest"]
    return digests


@pytest.fixture(scope="session")
def zdt_releases(open_registry: TestRegistry, base_image: str,
                 tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[str, dict[str, str]]]:
    """v1..v3 in a fresh repository; the engine's copies are removed afterwards."""
    repo = open_registry.repo("zdt")
    yield repo, build_web_releases(open_registry.host, repo, base_image,
                                   tmp_path_factory.mktemp("zdt-web"))
    remove_local_images(f"{open_registry.host}/{repo}")


@dataclass
class ZdtStack:
    """A running copy of examples/zero-downtime: ``web`` (2 replicas) behind the proxy."""

    compose: Compose  # without image variables: see release()
    project: ComposeProject
    config: dict[str, Any]
    policy: UpdatePolicy
    steps: StartFirst
    api: Any
    url: str
    repo: str
    digests: Mapping[str, str]

    def release(self, tag: str) -> Compose:
        """The project's compose with release ``tag``'s image variables."""
        return self.compose.with_env(
            self.compose.env, image_environment(OPEN_REGISTRY, self.repo, tag, self.digests[tag]))

    def up(self, tag: str) -> None:
        """A plain ``docker compose up -d`` of release ``tag`` (today's recreate)."""
        self.release(tag).up(timeout=120)

    def web_containers(self) -> list[dict[str, Any]]:
        return [c for c in self.steps.containers("web")
                if (c.get("State") or {}).get("Status") == "running"]

    def web_releases(self) -> dict[str, str]:
        """Container ID -> the tag its image reference names."""
        return {str(c["Id"]): str(c["Config"]["Image"]).partition("@")[0].rsplit(":", 1)[-1]
                for c in self.steps.containers("web")}

    def compose_ps(self) -> list[dict[str, Any]]:
        return self.compose.with_env(self.compose.env, {"IMAGE_REGISTRY": "x", "IMAGE_REPO": "y",
                                          "IMAGE_TAG": "z"}).ps()

    def wait_serving(self, servers: int = 2, timeout: float = 30) -> None:
        """Until the proxy answers 200 from ``servers`` distinct containers."""
        wait_serving(self.url, servers=servers, timeout=timeout)


def wait_serving(url: str, *, release: str | None = None, servers: int = 2,
                 timeout: float = 30) -> None:
    """Until the proxy at ``url`` answers 200 (with ``release <tag>``, when given) from
    ``servers`` distinct containers."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200 and (
                    release is None or response.text.strip() == f"release {release}"):
                seen.add(response.headers.get("X-Served-By", ""))
                if len(seen) >= servers:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    what = f"release {release}" if release else "200"
    raise AssertionError(f"the proxy did not serve {what} from {servers} containers "
                         f"within {timeout} s (saw {sorted(seen)})")


def start_first_switch(stack: ZdtStack, tag: str, policy: UpdatePolicy | None = None, *,
                       settle: float = 2.0, verdict_timeout: float = 20.0
                       ) -> tuple[bool, list[StartedBatch]]:
    """The order a rollout strategy calls the steps in: per batch of ``parallelism``, start
    the new containers beside the old, the deploy's verdict, then retire as many old ones;
    a failed verdict discards that batch's new containers and stops (True: switched)."""
    policy = policy or stack.policy
    previous = [str(c["Id"]) for c in stack.web_containers()]
    batches: list[StartedBatch] = []
    for number, count in enumerate(policy.batches()):
        if number and policy.delay:
            time.sleep(policy.delay)
        batch = stack.steps.start_new(stack.release(tag), policy, count, timeout=60)
        batches.append(batch)
        watch = HealthWatch(stack.api, stack.project.name, timeout=verdict_timeout,
                            settle=policy.settle(settle))
        report = batch_report(watch.wait(), batch)
        if not (report.ok and len(report.containers) == count):
            stack.steps.discard_new(batch, policy)
            return False, batches
        last = number == len(policy.batches()) - 1
        stack.steps.retire_old(batch, policy, previous if last else previous[:count])
        previous = previous[count:]
    return True, batches


@contextmanager
def running_stack(proxy_image: str, repo: str, digests: Mapping[str, str],
                  directory: Path, release: str = "v1") -> Iterator[ZdtStack]:
    """A copy of examples/zero-downtime in ``directory``, up with ``release`` and serving
    from both replicas; taken down (with its volumes) afterwards."""
    shutil.copy(EXAMPLE / "compose.yaml", directory / "compose.yaml")
    port = free_port()
    proxy_env = {"PROXY_IMAGE": proxy_image, "PROXY_PORT": str(port)}
    env = {**os.environ, **proxy_env}
    actions = Actions({}, stdout=io.StringIO(), stderr=io.StringIO())
    name = f"zdt-{uuid.uuid4().hex[:8]}"
    compose = Compose(DockerCLI(actions, env), directory, directory / "compose.yaml", name,
                      env=proxy_env)
    project = compose.load(proxy_env)
    api = docker_client(env).api
    steps = StartFirst(api, compose.docker, name)
    config = compose.with_env(proxy_env, {"IMAGE_REGISTRY": OPEN_REGISTRY,
                                          "IMAGE_REPO": repo, "IMAGE_TAG": release}).config()
    policy = check(config, project)["web"]
    stack = ZdtStack(compose, project, config, policy, steps, api,
                     f"http://127.0.0.1:{port}/", repo, digests)
    try:
        stack.up(release)
        stack.wait_serving()
        yield stack
    finally:
        subprocess.run(["docker", "compose", "-p", name, "down", "--volumes", "--timeout",
                        "1"], capture_output=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def zdt_stack(zdt_proxy_image: str, zdt_releases: tuple[str, dict[str, str]],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZdtStack]:
    """examples/zero-downtime up with v1 on the real engine; taken down afterwards."""
    repo, digests = zdt_releases
    with running_stack(zdt_proxy_image, repo, digests,
                       tmp_path_factory.mktemp("zdt-project")) as stack:
        yield stack
