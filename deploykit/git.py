"""The local git checkout: what ``deploykit tags`` plans from outside GitHub Actions.

In a workflow the event comes from ``GITHUB_EVENT_NAME``/``GITHUB_REF``/``GITHUB_SHA``.
On a terminal those are unset, so the plan reads the checkout the way a push of it
would look: on a branch, a push of that branch; on a detached HEAD that a tag points
at (``git checkout v1.4.2``), a push of that tag. git runs as an argv list, with a
timeout and no shell; any failure (no git, not a repository) yields ``None``.

The image repository comes from the checkout too when nothing names it:
:func:`origin_repository` reads ``<owner>/<repo>`` from the ``origin`` remote's URL.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deploykit.reference import repository_problem
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


# git's scp-like remote syntax, `[user@]host:path` (no scheme, no `/` before the colon)
_SCP_LIKE_RE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^@/:]+):(?P<path>[^/].*)$")


def repository_of_remote(url: str) -> str | None:
    """``owner/repo`` (lower case, the registry's spelling) of a remote URL on any host:
    ``https://github.com/Org/App.git``, ``git@github.com:org/app.git``,
    ``ssh://git@host:2222/group/sub/app``. None for a local path, a ``file://`` URL or a
    path that is no ``<owner>/<repo>`` an image repository can be named after."""
    url = url.strip()
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        host, path = parts.hostname, parts.path
    elif (scp := _SCP_LIKE_RE.match(url)) is not None:
        host, path = scp["host"], scp["path"]
    else:
        return None
    path = path.strip("/").removesuffix(".git").lower()
    if not host or path.count("/") < 1 or repository_problem(path):
        return None
    return path


def origin_repository(directory: Path | str = ".") -> str | None:
    """``<owner>/<repo>`` of the checkout's ``origin`` remote; None without one."""
    url = _git(Path(directory), "remote", "get-url", "origin")
    return repository_of_remote(url) if url else None
