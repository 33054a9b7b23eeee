"""Helpers for the tests of the action *packaging*: its image and act runs.

The action image is built FROM the test bed's local Debian trixie base (no image can be
pulled here), in a temporary copy of the project, with the host's extra CA certificates
(PyPI is reached through a TLS-inspecting proxy on these machines; see
ca-certificates/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import OPEN_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PYTHON_BASE = f"{OPEN_REGISTRY}/testbed/python:3-trixie"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json,"
               "application/vnd.docker.distribution.manifest.list.v2+json")


def unavailable(reason: str) -> None:
    """Like the shared fixtures: a failure under CI, a skip on a developer machine."""
    message = f"{reason}. Start the test bed: bash scripts/provision-debian.sh " \
              "--with-python-base --with-act"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_python_base() -> str:
    """The local Debian trixie + python3 base, present in the registry and pulled."""
    repository, _, tag = PYTHON_BASE.removeprefix(f"{OPEN_REGISTRY}/").partition(":")
    response = requests.head(f"http://{OPEN_REGISTRY}/v2/{repository}/manifests/{tag}",
                             timeout=10, headers={"Accept": INDEX_TYPES + ","
                             "application/vnd.oci.image.manifest.v1+json,"
                             "application/vnd.docker.distribution.manifest.v2+json"})
    if response.status_code != 200:
        unavailable(f"base image {PYTHON_BASE} missing")
    docker("pull", "--quiet", PYTHON_BASE, timeout=300)
    return PYTHON_BASE


def docker(*args: str, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree."""
    output = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode()
    return [name for name in output.split("\0") if name and (ROOT / name).is_file()]


def copy_project(destination: Path) -> Path:
    """A copy of the project (as git sees it) that builds here: the host's CAs included.

    The CA folder's .gitignore is dropped in the copy, so act (which copies the workspace
    the way git sees it) keeps the certificates too.
    """
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    ca_dir = destination / "ca-certificates"
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / ".gitignore").unlink(missing_ok=True)
    for certificate in sorted(HOST_CA_DIR.glob("**/*.crt")) if HOST_CA_DIR.is_dir() else []:
        shutil.copy2(certificate, ca_dir / f"host-{certificate.name}")
    return destination


def set_default_base(project: Path, base: str) -> None:
    """Point the Dockerfile's default BASE_IMAGE at ``base`` (act cannot pass build args)."""
    dockerfile = project / "Dockerfile"
    text, count = re.subn(r"(?m)^ARG BASE_IMAGE=.*$", f"ARG BASE_IMAGE={base}",
                          dockerfile.read_text())
    assert count == 1, "the Dockerfile must declare ARG BASE_IMAGE=... exactly once"
    dockerfile.write_text(text)


def build_action_image(project: Path, base: str) -> str:
    """``docker build`` (BuildKit) of the action image; returns its unique local name."""
    name = f"deploykit-action-test:{uuid.uuid4().hex[:10]}"
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={base}", "-t", name,
           str(project), timeout=900)
    return name


def registry_digest(repository: str, tag: str) -> str:
    response = requests.head(f"http://{OPEN_REGISTRY}/v2/{repository}/manifests/{tag}",
                             headers={"Accept": INDEX_TYPES}, timeout=10)
    assert response.status_code == 200, (repository, tag, response.status_code)
    return response.headers["Docker-Content-Digest"]


def index_platforms(repository: str, digest: str) -> list[str]:
    response = requests.get(f"http://{OPEN_REGISTRY}/v2/{repository}/manifests/{digest}",
                            headers={"Accept": INDEX_TYPES}, timeout=10)
    response.raise_for_status()
    platforms = []
    for manifest in response.json()["manifests"]:
        platform = manifest.get("platform", {})
        if platform.get("os") != "unknown":  # attestation manifests
            platforms.append(f"{platform['os']}/{platform['architecture']}")
    return sorted(platforms)
