from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploykit.dockercli import DockerCLI
from deploykit.errors import DockerError, UnauthorizedError


@pytest.fixture
def make_fake_docker(tmp_path: Path):
    """Factory: a fake `docker` that records argv, stdin and DOCKER_CONFIG, then exits."""

    def factory(exit_code: int = 0, stdout: str = "") -> tuple[str, Path]:
        log = tmp_path / "calls.log"
        script = tmp_path / "docker"
        script.write_text(
            "#!/bin/sh\n"
            f'printf "argv:%s\\n" "$*" >> "{log}"\n'
            f'printf "config:%s\\n" "$DOCKER_CONFIG" >> "{log}"\n'
            f'printf "stdin:%s\\n" "$(cat)" >> "{log}"\n'
            f'printf "%b" "{stdout}"\n'
            f"exit {exit_code}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        return str(script), log

    return factory


def test_login_passes_password_on_stdin_not_argv(make_actions, make_fake_docker) -> None:
    executable, log = make_fake_docker()
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
                    executable=executable)
    with cli.logged_in("ghcr.io", "octocat", "pat-secret-123"):
        config_dir = cli.env["DOCKER_CONFIG"]
        assert Path(config_dir).is_dir()
    calls = log.read_text()
    assert "argv:login ghcr.io --username octocat --password-stdin\n" in calls
    assert "stdin:pat-secret-123\n" in calls
    assert "pat-secret-123" not in calls.split("stdin:")[0]
    assert not Path(config_dir).exists()
    assert "DOCKER_CONFIG" not in cli.env


def test_failed_login_is_unauthorized_without_secret(make_actions, make_fake_docker) -> None:
    executable, _ = make_fake_docker(exit_code=1, stdout="denied for pat-secret-123")
    actions = make_actions()
    cli = DockerCLI(actions, env={"PATH": os.environ["PATH"]}, executable=executable)
    with pytest.raises(UnauthorizedError) as caught:
        with cli.logged_in("ghcr.io", "me", "pat-secret-123"):
            pass
    assert "pat-secret-123" not in str(caught.value)
    assert "registry_password" in caught.value.hint


def test_failure_shows_tail_of_output(make_actions, make_fake_docker) -> None:
    executable, _ = make_fake_docker(exit_code=3, stdout="step 1\\nboom happened")
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"]}, executable=executable)
    with pytest.raises(DockerError) as caught:
        cli.run(["compose", "up"])
    assert "`docker compose up` failed" in caught.value.message
    assert "boom happened" in caught.value.message


def test_missing_docker_binary(make_actions) -> None:
    cli = DockerCLI(make_actions(), env={}, executable="/nonexistent/docker")
    with pytest.raises(DockerError) as caught:
        cli.run(["info"])
    assert "provision" in caught.value.hint


def test_streaming_output_goes_to_log(make_actions, make_fake_docker) -> None:
    executable, _ = make_fake_docker(stdout="line-a\\nline-b")
    actions = make_actions()
    cli = DockerCLI(actions, env={"PATH": os.environ["PATH"]}, executable=executable)
    result = cli.run(["buildx", "build"], stream=True)
    assert result.returncode == 0
    assert "line-a\nline-b\n" in actions.out.getvalue()
