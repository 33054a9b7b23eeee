from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deploykit.dockercli import (
    DEFAULT_TIMEOUT,
    STREAM_TIMEOUT,
    DockerCLI,
    child_environment,
    config_parent,
    login_error,
)
from deploykit.errors import (
    DockerError,
    RegistryError,
    RegistryUnreachableError,
    UnauthorizedError,
)
from deploykit.lock import process_start
from tests.runner_log import live_commands


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


def test_children_get_a_minimal_environment(make_actions, tmp_path: Path) -> None:
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\nenv > "{tmp_path}/env.txt"\n')
    script.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": "/home/u", "DOCKER_HOST": "unix:///d.sock",
           "DOCKER_CONFIG": "/cfg", "HTTPS_PROXY": "http://proxy:3128", "LC_ALL": "C.UTF-8",
           "INPUT_REGISTRY_PASSWORD": "pat-secret", "INPUT_GITHUB_TOKEN": "ghs_token",
           "GITHUB_TOKEN": "ghs_token", "ACTIONS_RUNTIME_TOKEN": "rt", "DOCKER_PASSWORD": "pw",
           "AWS_SECRET_ACCESS_KEY": "aws", "RANDOM_VAR": "x"}
    cli = DockerCLI(make_actions(), env=env, executable=str(script))
    cli.run(["compose", "up"], extra_env={"APP_PORT": "8080", "IMAGE_TAG": "v1@sha256:x"},
            stream=True)
    seen = dict(line.split("=", 1) for line in
                (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    seen.pop("PWD", None)  # set by the shell itself
    seen.pop("SHLVL", None)
    assert seen == {"PATH": os.environ["PATH"], "HOME": "/home/u",
                    "DOCKER_HOST": "unix:///d.sock", "DOCKER_CONFIG": "/cfg",
                    "HTTPS_PROXY": "http://proxy:3128", "LC_ALL": "C.UTF-8",
                    "APP_PORT": "8080", "IMAGE_TAG": "v1@sha256:x"}
    assert child_environment(env)["PATH"] == os.environ["PATH"]
    assert "PATH" in child_environment({})


def test_a_timeout_covers_a_streamed_run_and_stops_the_whole_group(
        make_actions, tmp_path: Path) -> None:
    """The grandchild (compose is a plugin process of docker) keeps stdout open."""
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\necho started\nsleep 60 &\necho $! > "{tmp_path}/pid"\n'
                      "wait\n")
    script.chmod(0o755)
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"]}, executable=str(script))
    started = time.monotonic()
    with pytest.raises(DockerError) as caught:
        cli.run(["compose", "pull"], stream=True, timeout=1)
    assert time.monotonic() - started < 5
    assert caught.value.message == "`docker compose pull` timed out after 1 s; it was stopped."
    grandchild = int((tmp_path / "pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{grandchild}").exists() or \
                Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild outlived the timeout")


def test_children_run_in_their_own_session(make_actions, tmp_path: Path) -> None:
    script = tmp_path / "docker"
    script.write_text('#!/bin/sh\nps -o sid= -p $$\n')
    script.chmod(0o755)
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"]}, executable=str(script))
    result = cli.run(["info"])
    assert int(result.stdout.strip()) != os.getsid(0)


def test_give_up_at_stops_an_in_flight_command(make_actions, tmp_path: Path) -> None:
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"]}, executable=str(script))
    moment = time.monotonic() + 0.3
    with pytest.raises(DockerError) as caught:
        cli.run(["compose", "up"], stream=True, timeout=60, give_up_at=lambda: moment)
    assert caught.value.message == ("`docker compose up` was still running when the deploy "
                                    "was cancelled; it was stopped.")


def test_a_killed_runs_config_directory_is_removed_by_the_next(make_actions, tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    parent = config_parent()
    assert parent == tmp_path / f"deploykit-{os.getuid()}"
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = parent / f"docker-config-{dead.pid}-1-abcdef12"
    stale.mkdir()
    (stale / "config.json").write_text('{"auths": {"ghcr.io": {"auth": "secret"}}}')
    stale_compose = parent / f"compose-{dead.pid}-1-abcdef12"  # a resolved compose file
    stale_compose.mkdir()
    alive = parent / f"docker-config-{os.getpid()}-{process_start(os.getpid())}-0badcafe"
    alive.mkdir()
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    with cli.temporary_config() as directory:
        assert Path(directory).parent == parent
        assert not stale.exists() and not stale_compose.exists()
        assert alive.exists()  # its owner (this process) still runs
    assert not Path(directory).exists()


def test_a_foreign_config_parent_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / f"deploykit-{os.getuid()}").symlink_to(target)
    with pytest.raises(DockerError) as caught:
        config_parent(tmp_path)
    assert "refusing to keep registry credentials there" in caught.value.message


@pytest.mark.parametrize(("detail", "error", "title", "hint"), [
    ('Get "https://ghcr.iox/v2/": dial tcp: lookup ghcr.iox on 127.0.0.53:53: no such host',
     RegistryUnreachableError, "Registry name not found", "does not resolve"),
    ('Get "https://10.0.0.1/v2/": tls: failed to verify certificate: x509: certificate '
     "signed by unknown authority", RegistryError, "Registry TLS error", "CA"),
    ('Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
     RegistryUnreachableError, "Registry unreachable", "Nothing answered"),
    ("Error response from daemon: Get \"http://127.0.0.1:5001/v2/\": unauthorized: "
     "incorrect username or password", UnauthorizedError, "Registry authentication failed",
     "registry_username"),
    ("something else", RegistryError, "Registry login failed", "docker login"),
])
def test_login_failures_are_classified(detail: str, error: type, title: str,
                                       hint: str) -> None:
    found = login_error("ghcr.io", "me", detail)
    assert type(found) is error
    assert found.title == title
    assert hint in found.hint
    assert found.message == f"docker login to ghcr.io as me failed: {detail}"
    if error is not UnauthorizedError:
        assert "registry_username" not in found.hint


def test_the_default_timeouts(make_actions, make_fake_docker, monkeypatch) -> None:
    seen: list[float] = []
    original = DockerCLI._communicate

    def spy(self, process, stdin, stream, deadline, give_up_at):  # type: ignore[no-untyped-def]
        seen.append(round(deadline - time.monotonic()))
        return original(self, process, stdin, stream, deadline, give_up_at)

    monkeypatch.setattr(DockerCLI, "_communicate", spy)
    executable, _ = make_fake_docker()
    cli = DockerCLI(make_actions(), env={"PATH": os.environ["PATH"]}, executable=executable)
    cli.run(["info"])
    cli.run(["buildx", "build"], stream=True)  # a build has no bound of its own
    cli.run(["compose", "up"], stream=True, timeout=240)
    assert seen == [DEFAULT_TIMEOUT, STREAM_TIMEOUT, 240] == [300, 21600, 240]


SDK_LOADED = """
import sys
from deploykit.actions import Actions
from deploykit.dockercli import DockerCLI
with DockerCLI(Actions({}), {}).temporary_config():
    pass
print("docker" in sys.modules, "requests" in sys.modules)
"""


def test_a_temporary_config_loads_neither_the_docker_sdk_nor_requests() -> None:
    """Build and tags make one; the SDK (~0.15 s of imports) is the deploy's alone."""
    result = subprocess.run([sys.executable, "-c", SDK_LOADED], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "False False"


def test_compose_and_buildx_run_their_plugin_without_the_docker_cli(
        make_actions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The plugin spec's own entry point (`docker-compose compose ...`), told which docker
    CLI it stands for; any other command, or a docker that is a script, goes through docker."""
    bin_dir, config = tmp_path / "bin", tmp_path / "config"
    (config / "cli-plugins").mkdir(parents=True)
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_bytes(b"\x7fELF not run here")
    docker.chmod(0o755)
    plugin = config / "cli-plugins" / "docker-compose"
    plugin.write_text('#!/bin/sh\necho "$DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND $*"\n')
    plugin.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DOCKER_CONFIG": str(config)}
    cli = DockerCLI(make_actions(), env)
    assert cli.argv(["compose", "config"]) == [str(plugin), "compose", "config"]
    assert cli.argv(["login", "ghcr.io"]) == ["docker", "login", "ghcr.io"]
    assert cli.run(["compose", "version"]).stdout == f"{docker} compose version\n"
    docker.write_text("#!/bin/sh\necho wrapper\n")  # a wrapper is respected
    assert cli.argv(["compose", "config"]) == ["docker", "compose", "config"]


# -- issue 20: a `\r` in what a child prints, or in the user name ----------------------
def test_a_carriage_return_in_streamed_output_starts_no_command(make_actions,
                                                                make_fake_docker) -> None:
    """A failing one-shot's logs (`compose logs`, streamed): `printf 'x\\r::error ...'`."""
    executable, _ = make_fake_docker(stdout="x\\r::error title=X::y\\nplain\\n  \\r::warning::z")
    actions = make_actions()
    cli = DockerCLI(actions, env={"PATH": os.environ["PATH"]}, executable=executable)
    cli.run(["compose", "logs"], stream=True)
    out = actions.out.getvalue()
    assert [line for line in live_commands(out) if not line.startswith("::debug::")] == []
    assert "::error title=X::y" in out and "::warning::z" in out and "plain\n" in out


def test_a_carriage_return_in_the_user_name_is_shown_escaped(make_actions,
                                                             make_fake_docker) -> None:
    executable, _ = make_fake_docker()
    actions = make_actions()
    cli = DockerCLI(actions, env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
                    executable=executable)
    with cli.logged_in("127.0.0.1:5001", "bob\r::error title=X::y", "pat-secret-123"):
        pass
    out = actions.out.getvalue()
    assert [line for line in live_commands(out)
            if not line.startswith(("::debug::", "::add-mask::"))] == []
    assert "Logged in to 127.0.0.1:5001 as bob\\r::error title=X::y.\n" in out
