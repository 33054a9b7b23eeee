"""A registry password never reaches stdout, stderr, the summary, outputs or any argv.

Runs the real ``python -m deploykit build`` as a child process against the htpasswd
registry, with a ``docker`` shim first on PATH that records every docker argv, while a
sampler reads every process's command line from /proc for the whole run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import TestRegistry

ROOT = Path(__file__).resolve().parents[2]


def _write_docker_shim(directory: Path, log: Path) -> None:
    real = shutil.which("docker")
    assert real, "docker CLI not on PATH"
    shim = directory / "docker"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)


class ArgvSampler(threading.Thread):
    """Reads /proc/*/cmdline until stopped; keeps every command line seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if text:
                    self.seen.add(text)
            self.stop.wait(0.02)


def test_password_never_leaks_from_a_real_build(
    auth_registry: TestRegistry, make_app_context: Callable[..., str], tmp_path: Path
) -> None:
    password = auth_registry.password
    shim_dir, argv_log = tmp_path / "bin", tmp_path / "docker-argv.log"
    shim_dir.mkdir()
    _write_docker_shim(shim_dir, argv_log)
    context = make_app_context(body="secret test")
    env = {
        "PATH": f"{shim_dir}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        "GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/pre-release",
        "GITHUB_SHA": uuid.uuid4().hex + "abcdef01", "GITHUB_REPOSITORY": "it/secrets",
        "GITHUB_ACTOR": "it", "GITHUB_WORKSPACE": context,
        "INPUT_MODE": "build", "INPUT_REGISTRY": auth_registry.host,
        "INPUT_IMAGE_REPO": auth_registry.repo("secrets"),
        "INPUT_REGISTRY_USERNAME": auth_registry.username,
        "INPUT_REGISTRY_PASSWORD": password, "INPUT_PLATFORMS": "linux/amd64",
        "INPUT_CACHE": "none",
    }
    sampler = ArgvSampler()
    sampler.start()
    try:
        result = subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env,
                                capture_output=True, text=True, check=False, timeout=300)
    finally:
        sampler.stop.set()
        sampler.join()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "status<<" in (tmp_path / "output").read_text()
    stdout_lines = result.stdout.splitlines()
    assert stdout_lines[0] == f"::add-mask::{password}"
    assert [line for line in stdout_lines[1:] if password in line] == []
    assert password not in result.stderr
    assert password not in (tmp_path / "summary").read_text()
    assert password not in (tmp_path / "output").read_text()
    docker_calls = argv_log.read_text().splitlines()
    assert any(call.startswith("login ") and "--password-stdin" in call
               for call in docker_calls)
    assert any(call.startswith("buildx build ") for call in docker_calls)
    assert [call for call in docker_calls if password in call] == []
    assert len(sampler.seen) > 10
    assert [line for line in sampler.seen if password in line] == []
