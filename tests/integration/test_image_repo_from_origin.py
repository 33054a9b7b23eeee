"""`deploykit deploy --dry-run` from a clone, with no GITHUB_* variable (issue 24): the image
repository comes from the checkout's `origin` remote, and a clone without one gets a clear
error. The CLI runs as a subprocess with a clean environment, as on a user's terminal."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TestRegistry, push_variants, remove_local_images

HEALTHY = ('HEALTHCHECK --interval=1s --timeout=2s --retries=3 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
SERVE = 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
"""
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pushed(open_registry: TestRegistry, base_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    repo = open_registry.repo("fromorigin")
    digests = push_variants(open_registry.host, repo, base_image, {"v1": (HEALTHY, SERVE)},
                            tmp_path_factory.mktemp("origin-images"))
    yield repo, digests["v1"]
    remove_local_images(f"{open_registry.host}/{repo}")


def clone(directory: Path, origin: str | None) -> Path:
    for args in (["init", "-q", "-b", "main"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                  "--allow-empty", "-m", "one"],
                 *([["remote", "add", "origin", origin]] if origin else [])):
        subprocess.run(["git", "-C", str(directory), *args], check=True, timeout=30,
                       capture_output=True)
    (directory / "compose.yaml").write_text(COMPOSE)
    return directory


def deploykit(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on a terminal: PATH and a fresh HOME, nothing of GitHub's."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           "HOME": str(directory / "home"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "deploykit", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


DRY_RUN = ("deploy", "--dry-run", "--registry", "127.0.0.1:5000", "--environment", "staging",
           "--image-tag", "v1", "--project-name", "from-origin")


def test_a_dry_run_from_a_clone_takes_image_repo_from_origin(
        open_registry: TestRegistry, pushed: tuple[str, str], tmp_path: Path) -> None:
    repo, digest = pushed
    owner, name = repo.split("/")
    directory = clone(tmp_path, f"git@github.com:{owner.capitalize()}/{name}.git")
    result = deploykit(directory, *DRY_RUN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"image_repo: {repo}, from the `origin` remote of this checkout." in result.stderr
    assert f"{open_registry.host}/{repo}:v1 is {digest}." in result.stderr
    assert "status=planned" in result.stdout
    assert f"image={open_registry.host}/{repo}@{digest}" in result.stdout


def test_a_clone_without_origin_is_told_what_to_pass(tmp_path: Path) -> None:
    result = deploykit(clone(tmp_path, None), *DRY_RUN)
    assert result.returncode == 1
    assert "no git checkout whose `origin` remote names an `<owner>/<repo>`" in result.stdout \
        + result.stderr
    assert "Set `--image-repo <org>/<app>`" in result.stdout + result.stderr
