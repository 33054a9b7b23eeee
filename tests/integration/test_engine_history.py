"""The history that survives the runner: kept on the engine, in the containers' labels.

Every command runs as its own process with a fresh HOME and no state_dir, as each run of
the action does in a new container: deploy r1, r2, r3; `deploykit history` lists them from
the engine; `rollback` twice goes back to r2, then r1; a third finds nothing below r1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import (
    TestRegistry,
    docker_push,
    free_port,
    remove_local_images,
)
from tests.integration.test_deploy import HEALTHY, SERVE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    stop_grace_period: 1s
"""
RELEASES = ("r1", "r2", "r3")


@pytest.fixture
def images(open_registry: TestRegistry, base_image: str,
           tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    repo = open_registry.repo("engine-history")
    digests = {}
    for tag in RELEASES:
        context = tmp_path / f"app-{tag}"
        context.mkdir()
        (context / "index.html").write_text(f"release {tag}\n")
        (context / "Dockerfile").write_text(
            f"FROM {base_image}\nCOPY index.html /www/index.html\n{HEALTHY}\n{SERVE}\n")
        docker_push("buildx", "build", "--platform", "linux/amd64", "--push",
                    "--provenance=false", "--metadata-file", str(context / "meta.json"),
                    "-t", f"{open_registry.host}/{repo}:{tag}", str(context))
        digests[tag] = json.loads((context / "meta.json").read_text())["containerimage.digest"]
    yield repo, digests
    remove_local_images(f"{open_registry.host}/{repo}")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name = f"dk-{uuid.uuid4().hex[:10]}"
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "compose.yaml").write_text(COMPOSE)
    yield name, directory
    for argv in (["compose", "-p", name, "down", "--remove-orphans", "--timeout", "1"],
                 ["network", "rm", f"deploykit-lock-{name}"]):
        subprocess.run(["docker", *argv], capture_output=True, check=False, timeout=120)


def test_rollback_twice_from_fresh_runners_reads_the_engine(
    images: tuple[str, dict[str, str]], project: tuple[str, Path],
    open_registry: TestRegistry, tmp_path: Path,
) -> None:
    repo, digests = images
    name, directory = project
    port = free_port()

    def deploykit(*argv: str) -> subprocess.CompletedProcess[str]:
        home = tmp_path / f"home-{uuid.uuid4().hex[:6]}"  # a new runner: nothing on disk
        home.mkdir()
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_", "DEPLOYKIT_STATE"))}
        env.update({"HOME": str(home), "INPUT_REGISTRY": open_registry.host,
                    "INPUT_IMAGE_REPO": repo, "INPUT_PROJECT_NAME": name,
                    "INPUT_ENVIRONMENT": "staging", "INPUT_HEALTH_SETTLE": "1",
                    "INPUT_COMPOSE_ENV": f"APP_PORT={port}"})
        return subprocess.run([sys.executable, "-m", "deploykit", *argv], cwd=directory,
                              env=env, capture_output=True, text=True, timeout=300,
                              check=False)

    def serves() -> str:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=5).text.strip()

    for tag in RELEASES:
        result = deploykit("deploy", "--image-tag", tag)
        assert result.returncode == 0, result.stderr
        assert serves() == f"release {tag}"

    listed = deploykit("history", "--project-name", name, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(e["tag"], e["digest"], e["status"]) for e in json.loads(listed.stdout)] == [
        (tag, digests[tag], "deployed") for tag in RELEASES]

    for back_to in ("r2", "r1"):
        result = deploykit("rollback")
        assert result.returncode == 0, result.stderr
        assert f"Rolling back to {back_to} ({digests[back_to]})" in result.stderr
        assert "(from the release record on the engine)." in result.stderr
        assert "status=rolled_back" in result.stdout.splitlines()
        assert serves() == f"release {back_to}"

    result = deploykit("rollback")
    assert result.returncode == 1
    assert f"No release before the current one of project {name!r} in staging" \
        in result.stderr
    assert serves() == "release r1"

    # Issue 20: the labels carry the whole trail, the rollbacks too (not only the stack).
    listed = deploykit("history", "--project-name", name, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(e["action"], e["tag"], e["status"]) for e in json.loads(listed.stdout)] == [
        *[("deploy", tag, "deployed") for tag in RELEASES],
        ("rollback", "r2", "rolled_back"), ("rollback", "r1", "rolled_back")]
