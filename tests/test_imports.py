"""Start-up cost: the commands load only the heavy libraries they use (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("docker", "paramiko", "github", "sigstore")  # sigstore: verify_provenance only
LOADED = f"""
import sys, importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(name for name in {HEAVY} if name in sys.modules))
"""


@pytest.mark.parametrize(("modules", "loaded"), [
    (["deploykit.cli"], ""),
    (["deploykit.build", "deploykit.plan", "deploykit.registry"], ""),  # build, tags, resolve
    (["deploykit.deploy.procedure"], "docker"),  # the SDK, without paramiko (docker_sdk)
    (["deploykit.deploy.swarm_engine", "deploykit.history", "deploykit.lock"], "docker"),
])
def test_a_command_imports_only_the_heavy_libraries_it_uses(
        modules: list[str], loaded: str) -> None:
    result = subprocess.run([sys.executable, "-c", LOADED, *modules], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == loaded


def test_the_cli_loads_the_command_definitions_not_their_library() -> None:
    """Every command's definition is loaded to build the parser; what a command runs is
    imported only when it runs (deploykit.commands.*.run)."""
    code = ("import sys, deploykit.cli; print(' '.join(m for m in ("
            "'deploykit.build', 'deploykit.plan', 'deploykit.registry', 'deploykit.history', "
            "'deploykit.compose', 'deploykit.dockercli', 'deploykit.commands.deploy_run', "
            "'requests', 'tenacity') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == ""


SSH_CLIENT = """
import sys
from deploykit.errors import DockerError
from deploykit.containers import docker_client
before = "paramiko" in sys.modules
try:
    docker_client({"DOCKER_HOST": "ssh://nobody@127.0.0.1:1", "PATH": "/nonexistent"})
except DockerError as exc:
    print(before, "paramiko" in sys.modules, exc.message)
"""


def test_an_ssh_engine_still_gets_the_sdks_ssh_transport() -> None:
    """paramiko is hidden while the SDK is imported; a client for ``ssh://`` loads it."""
    result = subprocess.run([sys.executable, "-c", SSH_CLIENT], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    before, after, message = result.stdout.strip().split(" ", 2)
    assert (before, after) == ("False", "True")
    assert message.startswith("Cannot reach the Docker engine (ssh://nobody@127.0.0.1:1): "
                              "Error while fetching server API version")
    assert "paramiko" not in message  # not "Install paramiko package to enable ssh://"
