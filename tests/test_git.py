"""The local checkout adapter against real git repositories in a temporary directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploykit import cli
from deploykit.actions import Actions
from deploykit.cli import build_parser
from deploykit.errors import InputError
from deploykit.git import Checkout, local_checkout, origin_repository, repository_of_remote


def git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[str], tuple[Path, str]]:
    """Factory: a repository with one commit on ``branch``; returns (path, HEAD sha)."""

    def factory(branch: str) -> tuple[Path, str]:
        repo = tmp_path / f"repo-{branch}"
        repo.mkdir()
        git(repo, "init", "-q", "-b", branch)
        git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
            "--allow-empty", "-m", "one")
        return repo, git(repo, "rev-parse", "HEAD")

    return factory


def test_a_branch_is_a_push_of_that_branch(make_repo) -> None:
    repo, sha = make_repo("pre-release")
    git(repo, "tag", "v1.0.0")  # on a branch, the branch wins (a push of the branch)
    checkout = local_checkout(repo)
    assert checkout == Checkout("refs/heads/pre-release", sha)
    assert checkout.described == f"branch `pre-release` at {sha[:7]}"


def test_a_detached_head_at_a_tag_is_a_push_of_that_tag(make_repo) -> None:
    repo, sha = make_repo("main")
    for tag in ("zzz", "test-20261127-1", "v1.4.2"):
        git(repo, "tag", tag)
    git(repo, "checkout", "-q", "--detach")
    checkout = local_checkout(repo)
    assert checkout == Checkout("refs/tags/v1.4.2", sha)
    assert checkout.described == f"tag `v1.4.2` at {sha[:7]}"


def test_a_detached_head_without_tag_is_no_event(make_repo) -> None:
    repo, sha = make_repo("main")
    git(repo, "checkout", "-q", "--detach")
    checkout = local_checkout(repo)
    assert checkout == Checkout("", sha, event_name="")
    assert checkout.described == f"a detached HEAD at {sha[:7]} (no tag points at it)"


def test_outside_a_repository_there_is_no_checkout(tmp_path: Path) -> None:
    assert local_checkout(tmp_path) is None


# -- image_repo from the `origin` remote ---------------------------------------------------
@pytest.mark.parametrize(("url", "repository"), [
    ("https://github.com/Org/App.git", "org/app"),
    ("https://github.com/org/app", "org/app"),
    ("git@github.com:org/app.git", "org/app"),
    ("github.com:Org/App", "org/app"),
    ("ssh://git@github.com/org/app.git", "org/app"),
    ("ssh://git@git.example.com:2222/group/sub/app.git", "group/sub/app"),
    ("https://user:token@gitlab.example.com/group/app/", "group/app"),
    ("http://[::1]:3000/org/app.git", "org/app"),
    ("/srv/git/org/app.git", None),  # a local path names no host
    ("file:///srv/git/org/app.git", None),
    ("../app", None),
    ("git@github.com:app.git", None),  # no owner
    ("https://dev.azure.com/org/project/_git/app", None),  # no image repository name
    ("https://github.com/org/app-.git", None),
])
def test_the_repository_of_a_remote_url(url: str, repository: str | None) -> None:
    assert repository_of_remote(url) == repository


def test_the_origin_remote_of_a_checkout(make_repo: Callable[[str], tuple[Path, str]],
                                         tmp_path: Path) -> None:
    repo, _ = make_repo("main")
    assert origin_repository(repo) is None
    git(repo, "remote", "add", "upstream", "https://github.com/other/fork.git")
    assert origin_repository(repo) is None  # only `origin` counts
    git(repo, "remote", "add", "origin", "git@github.com:Org/Shop.git")
    assert origin_repository(repo) == "org/shop"
    assert origin_repository(tmp_path / "nowhere") is None


def load(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Any:
    args = build_parser().parse_args(argv)
    actions = Actions(env)
    try:
        return cli._load(args, env, actions), capsys.readouterr().err
    except InputError as error:
        return error, capsys.readouterr().err


DEPLOY = ["deploy", "--environment", "staging", "--image-tag", "v1", "--dry-run"]


@pytest.fixture
def in_clone(make_repo: Callable[[str], tuple[Path, str]],
             monkeypatch: pytest.MonkeyPatch) -> Path:
    repo, _ = make_repo("main")
    git(repo, "remote", "add", "origin", "https://github.com/Org/Shop.git")
    monkeypatch.chdir(repo)
    return repo


def test_on_a_terminal_image_repo_comes_from_origin(
        in_clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings, log = load(DEPLOY, {"PATH": os.environ["PATH"]}, capsys)
    assert settings.image_repo == "org/shop"
    assert log == "image_repo: org/shop, from the `origin` remote of this checkout.\n"


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([*DEPLOY, "--image-repo", "team/app"], {}, "team/app"),
    (DEPLOY, {"INPUT_IMAGE_REPO": "team/app"}, "team/app"),
    (DEPLOY, {"GITHUB_REPOSITORY": "Team/App"}, "team/app"),
    (["history"], {}, ""),  # `history` lists every repository when none is named
])
def test_what_names_the_repository_wins_over_origin(
        in_clone: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        env: dict[str, str], expected: str) -> None:
    settings, log = load(argv, {"PATH": os.environ["PATH"], **env}, capsys)
    assert (settings.image_repo, log) == (expected, "")


def test_without_origin_the_error_says_what_to_do(
        make_repo: Callable[[str], tuple[Path, str]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_repo("main")
    monkeypatch.chdir(repo)
    error, _ = load(DEPLOY, {"PATH": os.environ["PATH"]}, capsys)
    assert isinstance(error, InputError)
    assert str(error) == (
        "Input 'image_repo': is not set (no `image_repo`, no GITHUB_REPOSITORY) and this "
        "directory is no git checkout whose `origin` remote names an `<owner>/<repo>`.\n"
        "Hint: Set `image_repo: <org>/<app>`, or run in a clone of the repository "
        "(`git remote -v` shows its origin).")


def test_in_actions_origin_is_never_read(in_clone: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    error, _ = load(DEPLOY, {"PATH": os.environ["PATH"], "GITHUB_ACTIONS": "true",
                             "GITHUB_WORKSPACE": str(in_clone)}, capsys)
    assert isinstance(error, InputError)
    assert "GITHUB_REPOSITORY is not set" in str(error)
