"""The action's container image, built for real FROM the test bed's local trixie base.

What GitHub runs for ``uses: <org>/deploykit@v1``: the ENTRYPOINT is the action entrypoint
(inputs from ``INPUT_*``), the docker CLI inside has buildx and compose v2, and the engine is
reached through the mounted socket.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploykit import __version__
from tests.integration.actionbed import (
    ROOT,
    build_action_image,
    copy_project,
    docker,
    require_python_base,
)
from tests.integration.conftest import TestRegistry
from tests.test_workflows import RELEASE_STEPS, release_step

# Budget for the compressed image (the layers pushed and pulled); measured ~110 MB.
SIZE_BUDGET_BYTES = 160 * 1024 * 1024


@pytest.fixture(scope="module")
def action_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = require_python_base()
    project = copy_project(tmp_path_factory.mktemp("action-image"))
    image = build_action_image(project, base)
    yield image
    docker("rmi", "--force", image, check=False)


def run(image: str, *args: str, env: dict[str, str] | None = None,
        entrypoint: str | None = None, socket: bool = False) -> tuple[int, str, str]:
    argv = ["run", "--rm"]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    if socket:
        argv += ["-v", "/var/run/docker.sock:/var/run/docker.sock"]
    result = docker(*argv, image, *args, check=False, timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_the_image_runs_deploykit_help(action_image: str) -> None:
    code, out, err = run(action_image, "--help", entrypoint="deploykit")
    assert (code, err) == (0, "")
    assert out.startswith("usage: deploykit [-h] [--version] COMMAND ...\n")
    for command in ("build", "deploy", "rollback", "tags", "resolve", "history"):
        assert f"\n    {command} " in out


def test_arguments_reach_the_cli_through_the_entrypoint(action_image: str) -> None:
    """`docker run <image> --help`, what users and act try first: the CLI's help, exit 0."""
    code, out, err = run(action_image, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: deploykit [-h] [--version] COMMAND ...\n")
    code, out, err = run(action_image, "--version")
    assert (code, out, err) == (0, f"deploykit {__version__}\n", "")
    code, out, err = run(action_image, "deploy", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: deploykit deploy ")
    # arguments win over INPUT_MODE: a CLI command, not the action
    code, out, _ = run(action_image, "--version", env={"INPUT_MODE": "bogus"})
    assert (code, out) == (0, f"deploykit {__version__}\n")


def test_a_bad_mode_is_one_error_annotation_and_exit_1(action_image: str) -> None:
    code, out, err = run(action_image, env={"INPUT_MODE": "bogus"})
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error title=Invalid input%3A mode::Input 'mode': must be one of build, deploy, "
        "rollback; got 'bogus'.%0AHint: Use one of: build, deploy, rollback."]
    assert "Traceback" not in out + err


def test_the_entrypoint_is_the_action_shim_as_root(action_image: str) -> None:
    inspect = docker("image", "inspect", action_image, "--format",
                     "{{json .Config.Entrypoint}}|{{.Config.User}}|{{json .Config.Env}}").stdout
    entrypoint, user, env = inspect.strip().split("|")
    assert entrypoint == '["/opt/deploykit/bin/python","/app/entrypoint.py"]'
    assert user == ""
    assert '"PYTHONUNBUFFERED=1"' in env


def test_the_docker_cli_has_buildx_and_compose_v2(action_image: str) -> None:
    code, out, _ = run(action_image, "compose", "version", "--short", entrypoint="docker")
    assert code == 0 and out.startswith("2.")
    code, out, _ = run(action_image, "buildx", "version", entrypoint="docker")
    assert code == 0 and out.startswith("github.com/docker/buildx 0.")


def test_the_image_can_reach_a_remote_engine_over_ssh(action_image: str) -> None:
    """DOCKER_HOST=ssh://... needs the ssh client (CLI) and paramiko (the SDK)."""
    code, _, err = run(action_image, "-V", entrypoint="ssh")
    assert code == 0 and err.startswith("OpenSSH_")
    code, out, _ = run(action_image, "-c", "import paramiko, docker.transport.sshconn",
                       entrypoint="/opt/deploykit/bin/python")
    assert (code, out) == (0, "")


def test_the_image_can_verify_provenance(action_image: str) -> None:
    """verify_provenance: sigstore and its compiled dependencies (pydantic-core,
    rfc3161-client) from requirements.lock load on the image's Python (issue 25)."""
    code, out, err = run(action_image, "-c", "from sigstore.verify import Verifier; "
                         "import pydantic_core, rfc3161_client; print('ok')",
                         entrypoint="/opt/deploykit/bin/python")
    assert (code, out, err) == (0, "ok\n", "")


def test_the_mounted_socket_reaches_the_engine(action_image: str) -> None:
    host = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    code, out, err = run(action_image, "version", "--format", "{{.Server.Version}}",
                         entrypoint="docker", socket=True)
    assert (code, out.strip(), err) == (0, host, "")


def test_the_image_holds_only_what_it_needs(action_image: str) -> None:
    code, out, _ = run(action_image, "-c", "ls /app; ls /opt/deploykit/bin | grep -c '^pip' "
                       "|| true", entrypoint="sh")
    assert code == 0
    assert out.split() == ["entrypoint.py", "0"]


def test_image_size_within_budget(action_image: str, capsys: pytest.CaptureFixture[str]) -> None:
    size = int(docker("image", "inspect", action_image, "--format", "{{.Size}}").stdout)
    on_disk = run(action_image, "-sxb", "/", entrypoint="du")[1].split()[0]
    with capsys.disabled():
        print(f"\naction image: {size / 1e6:.1f} MB compressed, "
              f"{int(on_disk) / 1e6:.1f} MB on disk (FROM the test bed's trixie python base)")
    assert size < SIZE_BUDGET_BYTES



def test_a_release_runs_the_image_it_pinned_by_digest(
        action_image: str, open_registry: TestRegistry, tmp_path: Path) -> None:
    """What a runner does with a release's action.yml: pull `runs.image`, by digest, and run it.

    The image is pushed as release.yml's build job pushes it; release.yml's own step then
    rewrites a copy of action.yml with the build's pinned reference."""
    repo = f"{open_registry.host}/{open_registry.repo('release')}"
    docker("tag", action_image, f"{repo}:v9.9.9")
    pinned = ""
    try:
        pushed = docker("push", f"{repo}:v9.9.9", timeout=600).stdout
        digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
        assert digest, pushed
        shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
        subprocess.run(["bash", "-e", "-o", "pipefail", "-c", release_step(RELEASE_STEPS[0])],
                       cwd=tmp_path, check=True, capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "VERSION": "9.9.9",
                            "IMAGE": f"{repo}@{digest[1]}"})
        runs_image = yaml.safe_load((tmp_path / "action.yml").read_text())["runs"]["image"]
        assert runs_image == f"docker://{repo}@{digest[1]}"
        pinned = runs_image.removeprefix("docker://")
        docker("rmi", f"{repo}:v9.9.9")
        docker("pull", pinned, timeout=600)
        code, out, err = run(pinned, "--version")
        assert (code, out, err) == (0, f"deploykit {__version__}\n", "")
    finally:
        docker("rmi", "--force", f"{repo}:v9.9.9", check=False)
        if pinned:
            docker("rmi", "--force", pinned, check=False)
