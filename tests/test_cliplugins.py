"""cliplugins: where deploykit finds compose and buildx to run them without `docker` in front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.cliplugins import SYSTEM_DIRS, docker_binary, plugin_binary, plugin_dirs


def executable(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `docker` is a native executable (ELF magic), a DOCKER_CONFIG."""
    executable(tmp_path / "bin" / "docker", b"\x7fELF rest of a binary")
    return {"PATH": str(tmp_path / "bin"), "DOCKER_CONFIG": str(tmp_path / "config"),
            "HOME": str(tmp_path / "home")}


def test_the_config_directorys_plugin_comes_first(env: dict[str, str]) -> None:
    plugin = executable(Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose",
                        b"\x7fELF")
    assert plugin_binary("compose", env) == str(plugin)


def test_extra_dirs_of_the_config_file_come_before_the_system_ones(
        env: dict[str, str], tmp_path: Path) -> None:
    plugin = executable(tmp_path / "extra" / "docker-buildx", b"\x7fELF")
    config = Path(env["DOCKER_CONFIG"])
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"cliPluginsExtraDirs": [str(tmp_path / "none"), str(tmp_path / "extra")]}))
    assert plugin_dirs(env)[:3] == [config / "cli-plugins", tmp_path / "none",
                                    tmp_path / "extra"]
    assert plugin_dirs(env)[3:] == [Path(d) for d in SYSTEM_DIRS]
    assert plugin_binary("buildx", env) == str(plugin)


def test_without_docker_config_the_home_directory_is_used(env: dict[str, str]) -> None:
    del env["DOCKER_CONFIG"]
    plugin = executable(Path(env["HOME"]) / ".docker" / "cli-plugins" / "docker-compose",
                        b"\x7fELF")
    assert plugin_binary("compose", env) == str(plugin)


def test_a_file_that_cannot_run_is_skipped(env: dict[str, str]) -> None:
    plugin = executable(Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose",
                        b"\x7fELF")
    plugin.chmod(0o644)
    assert plugin_binary("compose", env) != str(plugin)


def test_a_wrapper_script_as_docker_is_never_bypassed(env: dict[str, str]) -> None:
    executable(Path(env["PATH"]) / "docker", b"#!/bin/sh\nexec podman \"$@\"\n")
    executable(Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose", b"\x7fELF")
    assert docker_binary(env) is None
    assert plugin_binary("compose", env) is None


def test_no_docker_on_path_and_other_commands_are_not_plugins(env: dict[str, str]) -> None:
    executable(Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose", b"\x7fELF")
    assert plugin_binary("compose", {**env, "PATH": "/nonexistent"}) is None
    assert plugin_binary("login", env) is None
    assert plugin_binary("compose", env, executable="/nonexistent/docker") is None
