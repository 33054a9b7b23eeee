"""`deploykit resolve` against the real htpasswd registry: credentials go to their own
registry only (issue 11, finding 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TestRegistry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def private_image(auth_registry: TestRegistry, base_image: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The busybox base copied to a fresh repository of the htpasswd registry."""
    config = str(tmp_path_factory.mktemp("docker-config"))
    auth_registry.login(config)
    image = f"{auth_registry.host}/resolve/{uuid.uuid4().hex[:10]}:v1"
    subprocess.run(["docker", "--config", config, "buildx", "imagetools", "create", "-t", image,
                    base_image], check=True, capture_output=True, timeout=120)
    yield image


def resolve(image: str, *flags: str, **inputs: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("INPUT_", "GITHUB_"))}
    env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
    return subprocess.run([sys.executable, "-m", "deploykit", "resolve", *flags, image],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)


def test_resolve_logs_in_to_its_own_registry(private_image: str,
                                             auth_registry: TestRegistry) -> None:
    result = resolve(private_image, "--registry", auth_registry.host,
                     registry_username=auth_registry.username,
                     registry_password=auth_registry.password)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digest=sha256:")
    assert auth_registry.password not in result.stdout + result.stderr


def test_resolve_never_sends_the_password_to_another_registry(
        private_image: str, auth_registry: TestRegistry) -> None:
    """`registry` is ghcr.io (the default): the htpasswd registry must see no credentials,
    so it refuses the read (on 7e12f51 the ghcr.io password logged in there)."""
    result = resolve(private_image, registry_username=auth_registry.username,
                     registry_password=auth_registry.password)
    assert result.returncode == 1
    assert f"error: Registry authentication failed: {auth_registry.host} requires a login " \
           f"to read {private_image}" in result.stderr
    assert "Traceback" not in result.stderr
