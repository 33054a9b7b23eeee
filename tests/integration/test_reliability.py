"""Issue 11, against the real engine, registry and compose: cancel, kill, lost lock,
late history failures, credentials in children, rollback target.

deploykit runs as a subprocess (``python -m deploykit deploy``), as on a runner. The
points of a deploy are hit with real slowness, not hooks in deploykit: a registry
proxy that holds the engine's manifest request (the pull), the ``docker compose up``
child appearing in /proc (up), a release whose healthcheck passes only after 60 s
(the health wait), and a smoke URL whose server answers after 30 s (the smoke test).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.integration.conftest import (
    OPEN_REGISTRY,
    TestRegistry,
    push_variants,
    remove_local_images,
)
from tests.integration.test_deploy import (
    FAILING,
    HEALTHY,
    SERVE,
    Project,
    body,
    docker,
    make_project,  # noqa: F401 - the fixture behind new_project
)

SLOW = ("HEALTHCHECK --interval=1s --timeout=2s --retries=3 --start-period=120s "
        "CMD test -f /tmp/ready")
SERVE_LATE = 'CMD ["sh", "-c", "(sleep 60; touch /tmp/ready) & exec httpd -f -p 8080 -h /www"]'
VARIANTS = {"v1": (HEALTHY, SERVE), "v1b": (HEALTHY, SERVE), "v2": (FAILING, SERVE),
            "slow": (SLOW, SERVE_LATE)}
KILLED_BY_GITHUB_AFTER = 10.0  # SIGINT, SIGTERM 7.5 s later, the tree killed 2.5 s after


@pytest.fixture(scope="module")
def images(open_registry: TestRegistry, base_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """This module's releases (used by new_project): repository and tag -> digest."""
    repo = open_registry.repo("reliability")
    workdir = tmp_path_factory.mktemp("reliability-images")
    digests = push_variants(open_registry.host, repo, base_image, VARIANTS, workdir)
    yield repo, digests
    remove_local_images(f"{open_registry.host}/{repo}")


@pytest.fixture
def new_project(make_project: Callable[..., Project]) -> Callable[..., Project]:  # noqa: F811
    """test_deploy's project factory (compose file, port, state dir, clean-up), over this
    module's images; with `init: true` a container stops in 0.1 s instead of 1 s."""

    def factory(**kwargs: str) -> Project:
        project = make_project(**kwargs)
        compose = project.directory / "compose.yaml"
        compose.write_text(re.sub(r"stop_grace_period: 1s.*", "init: true", compose.read_text()))
        return project

    return factory


# -- slowness on loopback ---------------------------------------------------------------
class SlowRegistry(http.server.ThreadingHTTPServer):
    """A proxy in front of the open registry that holds the *engine's* manifest requests
    (user agent docker/...) for ``delay`` seconds; deploykit's own resolve passes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.delay = 0.0
        self.held = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: SlowRegistry
    protocol_version = "HTTP/1.1"
    # A TLS hello gets an HTTP answer, so the engine falls back to plain HTTP (loopback).
    default_request_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        if (self.server.delay and "/manifests/" in self.path
                and self.headers.get("User-Agent", "").startswith("docker/")):
            self.server.held.set()
            time.sleep(self.server.delay)
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(OPEN_REGISTRY, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=payload, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        try:
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass  # the engine gave up (the pull was cancelled)
        finally:
            upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward


class _LateHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.asked.set()  # type: ignore[attr-defined]
        time.sleep(30)
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def slow_registry() -> Iterator[SlowRegistry]:
    server = SlowRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def late_url() -> Iterator[tuple[str, threading.Event]]:
    """A smoke URL whose server answers after 30 s, and an event set when it is asked."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LateHandler)
    server.daemon_threads = True
    server.asked = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", server.asked  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


# -- deploykit as a process ---------------------------------------------------------------
@dataclass
class Run:
    process: subprocess.Popen[str]
    output_file: Path
    lines: list[str]
    reader: threading.Thread

    def wait_for_line(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None or self.reader.is_alive(), self.log
            assert time.monotonic() < deadline, f"never printed {text!r}:\n{self.log}"
            time.sleep(0.02)

    def wait_for_child(self, *words: str, timeout: float = 60) -> int:
        """The pid of deploykit's child whose argv has ``words`` (e.g. compose ... up)."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in children(self.process.pid):
                argv = _argv(pid)
                if all(word in argv for word in words):
                    return pid
            assert self.process.poll() is None, self.log
            assert time.monotonic() < deadline, f"no child {words}:\n{self.log}"
            time.sleep(0.01)

    def finish(self, timeout: float = 120) -> tuple[int, dict[str, str], str]:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        outputs = parse_github_output(self.output_file.read_text()) \
            if self.output_file.exists() else {}
        return code, outputs, self.log

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    result, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def spawn(project: Project, tag: str, **inputs: str) -> Run:
    output = project.directory / f"output-{uuid.uuid4().hex[:6]}"
    env = project.env(image_tag=tag, **{"health_settle": "1", **inputs})
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "PYTHONUNBUFFERED": "1", "GITHUB_ACTIONS": "true",
                "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(project.directory / "summary.md")})
    process = subprocess.Popen([sys.executable, "-m", "deploykit", "deploy"], env=env,
                               cwd=project.directory, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return Run(process, output, lines, reader)


def deploy_in_process(project: Project, capsys: pytest.CaptureFixture[str],
                      command: str = "deploy", **inputs: str) -> tuple[int, dict[str, str], str]:
    output = project.directory / f"output-{uuid.uuid4().hex[:6]}"
    env = project.env(**{"health_settle": "1", **inputs})
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(project.directory / "summary.md")})
    capsys.readouterr()
    code = main([command], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, capsys.readouterr().out


# -- what must hold afterwards --------------------------------------------------------------
def running_digests(project: Project) -> dict[str, str]:
    """service -> the digest its running container was created from."""
    result = {}
    for service, container in project.containers().items():
        reference = docker("inspect", "--format", "{{.Config.Image}}", container).stdout
        result[service] = reference.strip().partition("@")[2]
    return result


def assert_served_by(project: Project, tag: str) -> None:
    assert body(project.url) == f"release {tag}"
    assert running_digests(project) == {"app": project.digests[tag],
                                        "worker": project.digests[tag]}


def lock_is_free(project: Project) -> bool:
    return docker("network", "inspect", f"deploykit-lock-{project.name}",
                  check=False).returncode != 0


def kill_tree(run: Run) -> None:
    """What the runner does last: SIGKILL to deploykit and every process under it."""
    tree = descendants(run.process.pid)
    run.process.kill()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run.finish()


POINTS = ("pull", "up", "health", "smoke")


@pytest.mark.parametrize("point", POINTS)
def test_cancel_and_kill_never_leave_the_service_without_a_verified_release(
        point: str, new_project: Callable[..., Project], slow_registry: SlowRegistry,
        late_url: tuple[str, threading.Event], capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT and SIGTERM at ``point``: v1 (verified) serves afterwards, the status is
    written, one history line per run, the lock is free, all before GitHub's SIGKILL.
    Then SIGKILL of the whole tree at the same point, and a redeploy succeeds."""
    project = new_project(registry=slow_registry.host) if point == "pull" else new_project()
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    smoke_url, asked = late_url
    tag = "slow" if point == "health" else "v1b"
    inputs = {"smoke_url": smoke_url, "smoke_timeout": "60"} if point == "smoke" else {}

    def start_and_reach_the_point() -> Run:
        slow_registry.delay = 60.0 if point == "pull" else 0.0
        slow_registry.held.clear()
        asked.clear()
        if point == "pull":
            forget_image(project, tag)
        run = spawn(project, tag, **inputs)
        if point == "pull":
            assert slow_registry.held.wait(60), run.log
        elif point == "up":
            run.wait_for_child("compose", "up")
        elif point == "health":
            run.wait_for_line("::group::Health of the new containers")
            time.sleep(1)
        else:
            assert asked.wait(60), run.log
        return run

    for number, signum in enumerate((signal.SIGINT, signal.SIGTERM), start=2):
        before = project.containers()
        run = start_and_reach_the_point()
        run.process.send_signal(signum)
        signalled = time.monotonic()
        code, outputs, log = run.finish()
        took = time.monotonic() - signalled
        assert took < KILLED_BY_GITHUB_AFTER, log
        assert code == 1, log
        assert "Traceback" not in log
        name = signal.Signals(signum).name
        assert f"Cancelled ({name}) during " in log, log
        assert_served_by(project, "v1")
        expected = "failed" if point == "pull" else "rolled_back"
        assert outputs["status"] == expected, log
        entries = project.history().entries()
        assert len(entries) == number
        assert (entries[-1].tag, entries[-1].status) == (tag, expected)
        assert lock_is_free(project)
        if point == "pull":
            assert project.containers() == before  # nothing was touched

    run = start_and_reach_the_point()
    kill_tree(run)
    slow_registry.delay = 0.0
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v1b", lock_timeout="30")
    assert (code, outputs["status"]) == (0, "deployed"), log
    assert_served_by(project, "v1b")
    assert lock_is_free(project)


def forget_image(project: Project, tag: str) -> None:
    """The engine forgets ``tag``'s image under the project's registry name, so that its
    next deploy pulls it (a digest the engine has is not pulled again)."""
    docker("image", "rm", f"{project.registry}/{project.repo}@{project.digests[tag]}",
           check=False)


def test_a_lost_lock_touches_nothing(new_project: Callable[..., Project],
                                     slow_registry: SlowRegistry,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The lock removed during a slow pull; then taken by a competitor during another."""
    project = new_project(registry=slow_registry.host)
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    lock = f"deploykit-lock-{project.name}"

    # Without a competitor: the loser stops before up; the same containers run.
    before = project.containers()
    slow_registry.delay = 3.0
    slow_registry.held.clear()
    forget_image(project, "v1b")
    loser = spawn(project, "v1b")
    assert slow_registry.held.wait(60), loser.log
    docker("network", "rm", lock)
    code, outputs, log = loser.finish()
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "was taken over while this deploy ran. Stopped before `docker compose up`" in log
    assert "docker compose up" not in log.replace("before `docker compose up`", "")
    assert "Restore" not in log
    assert project.containers() == before
    assert_served_by(project, "v1")

    # With a competitor holding the lock: the loser never touches the winner's containers.
    slow_registry.held.clear()
    slow_registry.delay = 6.0
    forget_image(project, "v1b")
    loser = spawn(project, "v1b")
    assert slow_registry.held.wait(60), loser.log
    docker("network", "rm", lock)
    slow_registry.delay = 0.0
    winner = spawn(project, "v1b", registry=OPEN_REGISTRY)
    code, outputs, winner_log = winner.finish()
    assert (code, outputs["status"]) == (0, "deployed"), winner_log
    winners = project.containers()
    code, outputs, log = loser.finish()
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "Stopped before `docker compose up`" in log and "Restore" not in log
    assert project.containers() == winners
    assert_served_by(project, "v1b")
    assert lock_is_free(project)


COMPOSE_ASKING_FOR_SECRETS = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    init: true
    environment: [INPUT_REGISTRY_PASSWORD, INPUT_GITHUB_TOKEN, GITHUB_TOKEN, GREETING]
  worker:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    command: ["sh", "-c", "exec sleep 3600"]
    init: true
    healthcheck: {disable: true}
"""


def _config_dirs(pid: int) -> set[Path]:
    """Temporary DOCKER_CONFIG directories: any of the old layout (named by mkdtemp), and
    those of process ``pid`` in the new one (other runs on this machine have their own)."""
    temp = Path(os.environ.get("TMPDIR", "/tmp"))
    return set(temp.glob("deploykit-docker-config-*")) | set(
        temp.glob(f"deploykit-{os.getuid()}/docker-config-{pid}-*"))


def test_credentials_stay_out_of_children_and_off_the_disk(
        new_project: Callable[..., Project], capsys: pytest.CaptureFixture[str]) -> None:
    project = new_project()
    (project.directory / "compose.yaml").write_text(COMPOSE_ASKING_FOR_SECRETS)
    secrets = {"registry_username": "deployer", "registry_password": "pat-not-for-containers",
               "github_token": "ghs-not-for-containers", "github_records": "best_effort"}

    # A run SIGKILLed after its login leaves its DOCKER_CONFIG (with the auth) behind ...
    existing = _config_dirs(0)
    victim = spawn(project, "v1", **secrets)
    victim.wait_for_line("Logged in to ")
    victim.wait_for_line("::group::Pull ")
    left = _config_dirs(victim.process.pid) - existing
    kill_tree(victim)
    assert [path for path in left if (path / "config.json").exists()], victim.log

    # ... the next run removes it, and its children never see INPUT_* or a token.
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v1", lock_timeout="30",
                                           **secrets)
    assert (code, outputs["status"]) == (0, "deployed"), log
    printed = project.exec("app", "env").splitlines()
    leaked = [line for line in printed if "not-for-containers" in line or "ghs-" in line]
    left_behind = sorted(str(path) for path in left if path.exists())
    assert (leaked, left_behind) == ([], [])
    assert "GREETING=hello-from-compose-env" in printed  # compose_env still arrives


BAD_HISTORY = [
    '{"time": "2026-01-01T00:00:00Z", "action": "deploy", "digest": "sha256:x"}',
    None,  # a line like a real one with "duration_seconds": "12.5" (filled in below)
    "not json at all",
]


def test_bad_history_lines_and_an_unwritable_state_dir(
        new_project: Callable[..., Project], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    project = new_project()
    for tag in ("v1", "v1b"):
        code, _, log = deploy_in_process(project, capsys, image_tag=tag)
        assert code == 0, log
    lines = project.history().path.read_text().splitlines()
    damaged = json.loads(lines[0]) | {"duration_seconds": "12.5", "tag": "v0"}
    bad = [BAD_HISTORY[0], json.dumps(damaged), BAD_HISTORY[2]]
    project.history().path.write_text("\n".join([bad[0], lines[0], bad[1], lines[1],
                                                 bad[2]]) + "\n")

    code, outputs, log = deploy_in_process(project, capsys, "history")
    assert code == 0 and "Traceback" not in log
    assert "Skipped 3 unreadable line(s) of the deploy history" in log
    assert "line 1: no `environment`; line 3: `duration_seconds` is not a number (str); " \
           "line 5: not JSON" in log
    code, outputs, log = deploy_in_process(project, capsys, "rollback")
    assert (code, outputs["status"]) == (0, "rolled_back"), log
    assert "Skipped 3 unreadable line(s)" in log
    assert_served_by(project, "v1")

    # An unwritable state_dir is refused before any container changes.
    before = project.containers()
    (tmp_path / "a-file").write_text("")
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v1b",
                                           state_dir=str(tmp_path / "a-file" / "state"))
    assert (code, outputs["status"]) == (1, "failed")
    assert "Input 'state_dir': the deploy history" in log and "nothing was changed" in log
    assert project.containers() == before
    assert_served_by(project, "v1")


def test_the_rollback_target_is_the_last_verified_release(
        new_project: Callable[..., Project], capsys: pytest.CaptureFixture[str]) -> None:
    project = new_project()
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v2",
                                           rollback_on_failure="false", health_timeout="20")
    assert (code, outputs["status"]) == (1, "failed"), log
    assert body(project.url) == "release v2"  # left for inspection, never verified

    # The next deploy fails too: back to v1, the release that was verified.
    code, outputs, log = deploy_in_process(project, capsys, image_tag="slow",
                                           health_timeout="3")
    v1 = f"{project.registry}/{project.repo}@{project.digests['v1']}"
    assert outputs["previous_image"] == v1, log
    assert (code, outputs["status"]) == (1, "rolled_back"), log
    assert f"{v1} runs again and is healthy" in log
    assert_served_by(project, "v1")

    # By bare digest: a valid reference everywhere, the tag that named it on the containers.
    digest = project.digests["v1b"]
    code, outputs, log = deploy_in_process(project, capsys, image_tag=digest)
    assert (code, outputs["status"]) == (0, "deployed"), log
    assert f"{project.repo}:sha256:" not in log and "pinned" not in log
    assert f"Deploying {project.registry}/{project.repo}@{digest}." in log
    for container in project.containers().values():
        reference = docker("inspect", "--format", "{{.Config.Image}}", container).stdout.strip()
        assert reference == f"{project.registry}/{project.repo}:sha256-{digest[7:19]}@{digest}"
    assert body(project.url) == "release v1b"
