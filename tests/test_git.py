"""The local checkout adapter against real git repositories in a temporary directory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from deploykit.git import Checkout, local_checkout


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
