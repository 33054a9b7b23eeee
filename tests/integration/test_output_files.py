"""GITHUB_OUTPUT on a file system that fills up (issue 20): a real tmpfs of 4 kB.

A write that does not fit is a short write (the kernel writes what fits, then ENOSPC):
deploykit cuts the file back, so the runner never reads half a ``name<<DELIMITER`` block,
and says which file it could not write, as an ``::error``, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, _unavailable
from tests.runner_log import live_commands

TMPFS_BYTES = 4096


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 kB tmpfs (root only: the test bed runs as root; CI fails without it)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs",
                             str(mount_point)], capture_output=True, text=True, timeout=30,
                            check=False)
    if result.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30,
                       check=False)


def nearly_full_output(directory: Path, free: int) -> tuple[Path, str]:
    """An output file holding one block, padded so that ``free`` bytes are left."""
    output = directory / "github_output"
    block = "digest<<ghadelimiter_x\nsha256:abc\nghadelimiter_x\n"
    output.write_text(block + "\n" * (TMPFS_BYTES - free - len(block)))
    return output, output.read_text()


def test_a_block_that_does_not_fit_leaves_the_file_as_it_was(
        tiny_filesystem: Path, open_registry: TestRegistry) -> None:
    """`deploykit tags` (its `tags` block is about 100 bytes) with 60 bytes free. Before:
    a traceback, and a torn `tags<<` block the runner cannot parse."""
    output, before = nearly_full_output(tiny_filesystem, free=60)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("INPUT_", "GITHUB_"))}
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_REF": "refs/heads/main", "GITHUB_EVENT_NAME": "push",
                "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567"})
    result = subprocess.run(
        [sys.executable, "-m", "deploykit", "tags", "--registry", open_registry.host,
         "--image-repo", f"full/{uuid.uuid4().hex[:8]}"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in live_commands(result.stdout) if line.startswith("::error")]
    assert errors == [f"::error title=Cannot write GITHUB_OUTPUT::Cannot write to GITHUB_OUTPUT "
                      f"({output}): No space left on device. Nothing half-written was left in "
                      "it.%0AHint: GITHUB_OUTPUT must name a writable file on a file system "
                      "with free space: the runner sets it for every step; outside a "
                      "workflow, unset it or point it at such a file."]
    assert output.read_text() == before
    assert parse_github_output(before.rstrip("\n") + "\n") == {"digest": "sha256:abc"}
