"""The real test bed: Docker engine, buildx, compose and two local registries.

Started by ``scripts/provision-debian.sh``. Under ``CI=true`` a missing engine or
registry is a test *failure*, never a skip: CI must prove the real thing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

OPEN_REGISTRY = os.environ.get("DEPLOYKIT_TEST_REGISTRY", "127.0.0.1:5000")
AUTH_REGISTRY = os.environ.get("DEPLOYKIT_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER = os.environ.get("DEPLOYKIT_TESTBED_USER", "deploykit")
AUTH_PASSWORD = os.environ.get("DEPLOYKIT_TESTBED_PASSWORD", "deploykit-test-pass")
BASE_IMAGE = f"{OPEN_REGISTRY}/testbed/busybox:latest"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _unavailable(reason: str) -> None:
    message = f"{reason}. Start the test bed: bash scripts/provision-debian.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """The engine answers, or the test fails under CI (skips elsewhere)."""
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, text=True, timeout=30, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"docker CLI unusable: {exc}")
    if result.returncode != 0:
        _unavailable(f"Docker engine not reachable: {result.stderr.strip()}")


@dataclass(frozen=True)
class TestRegistry:
    __test__ = False  # not a test class, despite its name

    host: str
    username: str = ""
    password: str = ""

    def repo(self, prefix: str = "it") -> str:
        """A fresh repository name, so tests never see each other's tags."""
        return f"{prefix}/{uuid.uuid4().hex[:10]}"

    def login(self, config_dir: str) -> None:
        if not self.password:
            return
        subprocess.run(["docker", "--config", config_dir, "login", self.host,
                        "--username", self.username, "--password-stdin"],
                       input=self.password, text=True, check=True, capture_output=True)


def _registry_up(host: str) -> int | None:
    try:
        return requests.get(f"http://{host}/v2/", timeout=5).status_code
    except requests.RequestException:
        return None


@pytest.fixture(scope="session")
def open_registry(docker_engine: None) -> TestRegistry:
    if _registry_up(OPEN_REGISTRY) != 200:
        _unavailable(f"open registry {OPEN_REGISTRY} not answering")
    return TestRegistry(OPEN_REGISTRY)


@pytest.fixture(scope="session")
def auth_registry(docker_engine: None) -> TestRegistry:
    if _registry_up(AUTH_REGISTRY) != 401:
        _unavailable(f"htpasswd registry {AUTH_REGISTRY} not answering 401")
    return TestRegistry(AUTH_REGISTRY, AUTH_USER, AUTH_PASSWORD)


@pytest.fixture(scope="session")
def base_image(open_registry: TestRegistry) -> str:
    """The locally built two-platform busybox base image in the open registry."""
    response = requests.head(
        f"http://{OPEN_REGISTRY}/v2/testbed/busybox/manifests/latest", timeout=5,
        headers={"Accept": "application/vnd.oci.image.index.v1+json,"
                 "application/vnd.docker.distribution.manifest.list.v2+json"})
    if response.status_code != 200:
        _unavailable(f"base image {BASE_IMAGE} missing")
    return BASE_IMAGE


@pytest.fixture
def docker_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway DOCKER_CONFIG directory for CLI calls made by tests."""
    path = tmp_path_factory.mktemp("docker-config")
    yield str(path)


@pytest.fixture
def make_app_context(
    tmp_path_factory: pytest.TempPathFactory, base_image: str
) -> Callable[..., str]:
    """Factory: a build context with a Dockerfile FROM the local busybox base.

    ``make_app_context(body="v1")`` serves ``body`` at / with busybox httpd.
    """

    def factory(body: str = "hello", *, extra_run: str = "", healthcheck: bool = True) -> str:
        context = tmp_path_factory.mktemp("app")
        (context / "index.html").write_text(body + "\n")
        lines = [
            f"FROM {base_image}",
            "COPY index.html /www/index.html",
        ]
        if extra_run:
            lines.append(f"RUN {extra_run}")
        if healthcheck:
            lines.append('HEALTHCHECK --interval=1s --timeout=2s --retries=3 '
                         'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
        lines.append('CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]')
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        return str(context)

    return factory


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def remove_local_images(image_name: str) -> None:
    """The docker driver keeps pushed and pulled images in the engine: drop REGISTRY/REPO's."""
    listed = subprocess.run(["docker", "images", "--no-trunc", "--format",
                             "{{.Repository}} {{.ID}}"], capture_output=True, text=True,
                            check=True).stdout
    ids = {line.split()[1] for line in listed.splitlines() if line.split()[0] == image_name}
    if ids:
        subprocess.run(["docker", "image", "rm", "--force", *sorted(ids)],
                       capture_output=True, check=False)


# distribution 2.8's filesystem driver can answer 500 to a HEAD racing a PUT of the same
# tag (seen once in many runs): the tests' own pushes try again, like deploykit's build.
_TRANSIENT_PUSH = re.compile(r"unexpected status from \w+ request to \S+: (5\d\d|429)\b")


def docker_push(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` (a buildx push), again up to twice when the registry failed it."""
    for _ in range(3):
        result = subprocess.run(["docker", *args], capture_output=True, text=True,
                                check=False, timeout=timeout)
        if result.returncode == 0 or not _TRANSIENT_PUSH.search(result.stderr):
            break
        time.sleep(1)
    assert result.returncode == 0, f"docker {' '.join(args)} failed:\n{result.stderr}"
    return result


def push_variants(registry: str, repo: str, base_image: str,
                  variants: Mapping[str, tuple[str, str]], workdir: Path,
                  config: str = "") -> dict[str, str]:
    """Build a fixture app for linux/amd64 per ``tag: (HEALTHCHECK line, CMD line)`` (busybox
    httpd serving "release <tag>") and push it: tag -> digest."""
    digests = {}
    prefix = ["--config", config] if config else []
    for tag, (healthcheck, command) in variants.items():
        context = workdir / f"app-{tag}"
        context.mkdir()
        (context / "index.html").write_text(f"release {tag}\n")
        (context / "Dockerfile").write_text("\n".join([
            f"FROM {base_image}", "COPY index.html /www/index.html", healthcheck, command, ""]))
        metadata = context / "metadata.json"
        docker_push(*prefix, "buildx", "build", "--platform", "linux/amd64", "--push",
                    "--provenance=false", "--metadata-file", str(metadata),
                    "-t", f"{registry}/{repo}:{tag}", str(context))
        digests[tag] = json.loads(metadata.read_text())["containerimage.digest"]
    return digests
