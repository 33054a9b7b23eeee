"""DockerCLI.run_detached: a child whose output goes to a file deploykit follows (issue 20:
a SIGKILLed deploykit must not take `docker compose up` down through a closed pipe)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploykit.dockercli import DockerCLI
from deploykit.errors import DockerError


def cli(make_actions: Any, tmp_path: Path) -> tuple[DockerCLI, Any]:
    actions = make_actions()
    return DockerCLI(actions, {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)},
                     executable="sh"), actions


def test_the_output_is_streamed_line_by_line_and_returned(make_actions: Any,
                                                          tmp_path: Path) -> None:
    docker, actions = cli(make_actions, tmp_path)
    result = docker.run_detached(["-c", "echo one; sleep 0.3; printf 'two\\nthree'"])
    assert result.stdout == "one\ntwo\nthree"
    assert actions.out.getvalue().splitlines()[-3:] == ["one", "two", "three"]


def test_a_failure_names_the_command_with_its_output(make_actions: Any,
                                                     tmp_path: Path) -> None:
    docker, _ = cli(make_actions, tmp_path)
    with pytest.raises(DockerError, match="`docker -c echo cannot; exit 3` failed:\ncannot"):
        docker.run_detached(["-c", "echo cannot; exit 3"])


@pytest.mark.parametrize(("options", "why"), [
    ({"timeout": 0.3}, "timed out after 0.3 s; it was stopped"),
    ({"give_up_at": lambda: 0.0}, "was still running when the deploy was cancelled"),
])
def test_a_child_past_its_bound_is_stopped(make_actions: Any, tmp_path: Path,
                                           options: dict[str, Any], why: str) -> None:
    docker, _ = cli(make_actions, tmp_path)
    started = time.monotonic()
    with pytest.raises(DockerError, match=why):
        docker.run_detached(["-c", "exec sleep 30"], **options)
    assert time.monotonic() - started < 5


def test_the_child_outlives_a_killed_parent(tmp_path: Path) -> None:
    """The parent (deploykit) is SIGKILLed while the child writes: the child goes on."""
    done = tmp_path / "done"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import io, sys\n"
         "from deploykit.actions import Actions\n"
         "from deploykit.dockercli import DockerCLI\n"
         "DockerCLI(Actions({}), executable='sh').run_detached(['-c', "
         f"'echo started; sleep 1; echo more; echo more; touch {done}'])\n"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ,
                                                              "TMPDIR": str(tmp_path)})
    assert parent.stdout is not None
    assert b"started" in parent.stdout.readline()
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    parent.stdout.close()  # the pipe the parent printed to is gone
    deadline = time.monotonic() + 10
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.exists()
