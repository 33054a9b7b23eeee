"""The local git checkout: what ``deploykit tags`` plans from outside GitHub Actions.

In a workflow the event comes from ``GITHUB_EVENT_NAME``/``GITHUB_REF``/``GITHUB_SHA``.
On a terminal those are unset, so the plan reads the checkout the way a push of it
would look: on a branch, a push of that branch; on a detached HEAD that a tag points
at (``git checkout v1.4.2``), a push of that tag. git runs as an argv list, with a
timeout and no shell; any failure (no git, not a repository) yields ``None``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploykit.tags import is_release_tag, is_test_tag

GIT_TIMEOUT = 10.0  # seconds per git command; a local repository answers in milliseconds


@dataclass(frozen=True)
class Checkout:
    ref: str  # refs/heads/<branch> or refs/tags/<tag>
    sha: str
    event_name: str = "push"

    @property
    def described(self) -> str:
        if not self.ref:
            return f"a detached HEAD at {self.sha[:7]} (no tag points at it)"
        if self.ref.startswith("refs/tags/"):
            where = f"tag `{self.ref.removeprefix('refs/tags/')}`"
        else:
            where = f"branch `{self.ref.removeprefix('refs/heads/')}`"
        return f"{where} at {self.sha[:7]}"


def _git(directory: Path, *args: str) -> str | None:
    # A minimal environment: git needs PATH and HOME (safe.directory), nothing else of ours.
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    try:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                text=True, timeout=GIT_TIMEOUT, check=False, env=env,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def local_checkout(directory: Path | str = ".") -> Checkout | None:
    """The branch (or the tag of a detached HEAD) and HEAD's commit; None outside git."""
    directory = Path(directory)
    sha = _git(directory, "rev-parse", "--verify", "-q", "HEAD")
    if not sha:
        return None
    branch = _git(directory, "symbolic-ref", "-q", "--short", "HEAD")
    if branch:
        return Checkout(f"refs/heads/{branch}", sha)
    tags = (_git(directory, "tag", "--points-at", "HEAD") or "").split()
    # The tag a release or staging push would be: release tags first, then test-*.
    ranked = sorted(tags, key=lambda tag: (not is_release_tag(tag), not is_test_tag(tag), tag))
    if ranked:
        return Checkout(f"refs/tags/{ranked[0]}", sha)
    return Checkout("", sha, event_name="")
