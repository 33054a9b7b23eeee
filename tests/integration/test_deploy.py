"""mode=deploy and mode=rollback against the real engine, registry and compose v2.

Issue 5's acceptance: deploy v1 (health + smoke + digest), a v2 whose healthcheck
fails is rolled back with the volume's data intact, a v2b that exits at start is
caught at once, production refuses `latest` without touching a container,
two deploys of one project serialise, and a SIGKILLed deploy's lock goes stale.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploykit.cli import main
from deploykit.history import History
from tests.conftest import parse_github_output
from tests.integration.conftest import (
    TestRegistry,
    free_port,
    push_variants,
    remove_local_images,
)

HEALTHY = ('HEALTHCHECK --interval=1s --timeout=2s --retries=3 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
FAILING = ('HEALTHCHECK --interval=1s --timeout=2s --retries=2 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/missing || exit 1')
SERVE = 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'
EXIT_AT_START = 'CMD ["sh", "-c", "echo cannot open the database; exit 3"]'
VARIANTS = {
    "v1": (HEALTHY, SERVE),
    "v1b": (HEALTHY, SERVE),
    "v2": (FAILING, SERVE),
    "v2b": (HEALTHY, EXIT_AT_START),
}

COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    volumes: ["data:/data"]
    stop_grace_period: 1s  # busybox httpd as PID 1 ignores SIGTERM
  worker:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    command: ["sh", "-c", "echo $$GREETING > /greeting; exec sleep 3600"]
    environment: [GREETING]
    stop_grace_period: 1s
    healthcheck: {disable: true}
    volumes: ["data:/data"]
volumes:
  data: {}
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=120)


@pytest.fixture(scope="module")
def images(open_registry: TestRegistry, base_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The fixture app pushed as v1, v1b, v2 and v2b: repository and tag -> digest."""
    repo = open_registry.repo("deploy")
    yield repo, push_variants(open_registry.host, repo, base_image, VARIANTS,
                              tmp_path_factory.mktemp("images"))
    remove_local_images(f"{open_registry.host}/{repo}")


@dataclass
class Project:
    name: str
    directory: Path
    port: int
    state: Path
    registry: str
    repo: str
    digests: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def env(self, **inputs: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_"))}
        env.update({
            "GITHUB_WORKSPACE": str(self.directory), "GITHUB_REPOSITORY": "org/app",
            "GITHUB_RUN_ID": uuid.uuid4().hex[:8], "GITHUB_ACTOR": "tester",
            "INPUT_REGISTRY": self.registry, "INPUT_IMAGE_REPO": self.repo,
            "INPUT_PROJECT_NAME": self.name, "INPUT_ENVIRONMENT": "staging",
            "INPUT_STATE_DIR": str(self.state), "INPUT_HEALTH_SETTLE": "2",
            "INPUT_HEALTH_TIMEOUT": "60", "INPUT_SMOKE_TIMEOUT": "20",
            "INPUT_LOCK_TIMEOUT": "120",
            "INPUT_COMPOSE_ENV": f"APP_PORT={self.port}\nGREETING=hello-from-compose-env",
        })
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        return env

    def containers(self) -> dict[str, str]:
        """service -> container ID of the running project."""
        out = docker("ps", "--filter", f"label=com.docker.compose.project={self.name}",
                     "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}').stdout
        return dict(line.split() for line in out.splitlines())

    def exec(self, service: str, *command: str) -> str:
        return docker("exec", self.containers()[service], *command).stdout

    def history(self) -> History:
        return History(self.state)


@pytest.fixture
def make_project(images: tuple[str, dict[str, str]], open_registry: TestRegistry,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Project]]:
    created: list[Project] = []

    def factory(registry: str = open_registry.host, repo: str = images[0],
                digests: dict[str, str] | None = None) -> Project:
        directory = tmp_path_factory.mktemp("project")
        (directory / "compose.yaml").write_text(COMPOSE)
        # A stale .env must not change the image deploykit pins.
        (directory / ".env").write_text("IMAGE_REGISTRY=evil.invalid\nIMAGE_TAG=v2\n")
        project = Project(f"dk-{uuid.uuid4().hex[:10]}", directory, free_port(),
                          directory / "state", registry, repo, digests or images[1])
        created.append(project)
        return project

    yield factory
    for project in created:
        docker("compose", "-p", project.name, "down", "--remove-orphans", "--timeout", "1",
               check=False)
        docker("volume", "rm", f"{project.name}_data", check=False)
        docker("network", "rm", f"deploykit-lock-{project.name}", check=False)


def deploy(project: Project, capsys: pytest.CaptureFixture[str], command: str = "deploy",
           *flags: str, **inputs: str) -> tuple[int, dict[str, str], str]:
    output = project.directory / f"output-{uuid.uuid4().hex[:6]}"
    env = project.env(**inputs)
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(project.directory / "summary.md")})
    capsys.readouterr()
    code = main([command, *flags], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, capsys.readouterr().out


def registry_digest(project: Project, tag: str) -> str:
    response = requests.head(
        f"http://{project.registry}/v2/{project.repo}/manifests/{tag}", timeout=5,
        headers={"Accept": "application/vnd.oci.image.index.v1+json,"
                 "application/vnd.oci.image.manifest.v1+json,"
                 "application/vnd.docker.distribution.manifest.v2+json"})
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def body(url: str) -> str:
    return requests.get(url, timeout=5).text.strip()


def test_deploy_rollback_story(make_project: Callable[..., Project],
                               capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project()
    registry_digests = project.digests

    # v1: deployed, answers, runs exactly the registry's digest (.env notwithstanding).
    code, outputs, log = deploy(project, capsys, image_tag="v1", smoke_url=project.url,
                                smoke_contains="release v1")
    assert code == 0, log
    assert outputs["status"] == "deployed"
    assert outputs["digest"] == registry_digests["v1"]
    assert outputs["image"] == f"{project.registry}/{project.repo}@{registry_digests['v1']}"
    assert outputs["previous_image"] == ""
    assert body(project.url) == "release v1"
    for container_id in project.containers().values():
        reference = docker("inspect", "--format", "{{.Config.Image}}", container_id).stdout
        assert reference.strip() == \
            f"{project.registry}/{project.repo}:v1@{registry_digests['v1']}"
    assert registry_digest(project, "v1") == registry_digests["v1"]
    assert project.exec("worker", "cat", "/greeting").strip() == "hello-from-compose-env"
    unmasked = [line for line in log.splitlines() if not line.startswith("::add-mask::")]
    assert not any("hello-from-compose-env" in line for line in unmasked)

    # Data in the named volume survives everything below.
    project.exec("app", "sh", "-c", "echo precious > /data/keep")

    # v2: the healthcheck fails -> exit 1, rolled back, v1 serves again, data intact.
    code, outputs, log = deploy(project, capsys, image_tag="v2", smoke_url=project.url)
    assert code == 1
    assert outputs["status"] == "rolled_back"
    assert outputs["previous_image"] == \
        f"{project.registry}/{project.repo}@{registry_digests['v1']}"
    assert "Health check failed: app" in log and "unhealthy" in log
    assert f"{project.registry}/{project.repo}@{registry_digests['v1']} runs again and is " \
           "healthy" in log
    assert body(project.url) == "release v1"
    assert project.exec("app", "cat", "/data/keep").strip() == "precious"

    # v2b exits at start: caught by the verdict as "exited", long before health_timeout.
    started = time.monotonic()
    code, outputs, log = deploy(project, capsys, image_tag="v2b", health_timeout="120")
    assert code == 1
    assert outputs["status"] == "rolled_back"
    assert "app (" in log and "exited with code 3" in log
    assert "cannot open the database" in log  # its logs, in the log group
    assert time.monotonic() - started < 60
    assert body(project.url) == "release v1"

    # Production with `latest`: refused, the very same containers still run.
    before = project.containers()
    code, outputs, log = deploy(project, capsys, environment="production", image_tag="latest")
    assert code == 1
    assert "Refusing to deploy `latest` to production environment production" in log
    assert project.containers() == before

    # v1b, then mode=rollback: back to v1 (the previous successful release).
    code, outputs, log = deploy(project, capsys, image_tag="v1b")
    assert (code, outputs["status"]) == (0, "deployed"), log
    assert body(project.url) == "release v1b"
    code, outputs, log = deploy(project, capsys, "rollback")
    assert code == 0, log
    assert (outputs["status"], outputs["digest"]) == ("rolled_back", registry_digests["v1"])
    assert body(project.url) == "release v1"
    assert project.exec("app", "cat", "/data/keep").strip() == "precious"

    entries = project.history().entries()
    assert [(e.action, e.tag, e.status) for e in entries] == [
        ("deploy", "v1", "deployed"), ("deploy", "v2", "rolled_back"),
        ("deploy", "v2b", "rolled_back"), ("deploy", "v1b", "deployed"),
        ("rollback", "v1", "rolled_back")]
    assert entries[-1].rolled_back_from == registry_digests["v1b"]

    code, _, log = deploy(project, capsys, "history")
    assert code == 0
    assert log.count(project.name) == 5


def spawn_deploy(project: Project, tag: str, **inputs: str) -> subprocess.Popen[str]:
    env = project.env(image_tag=tag, **inputs)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.Popen([sys.executable, "-m", "deploykit", "deploy"], env=env,
                            cwd=project.directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_deploys_of_one_project_serialise(make_project: Callable[..., Project]) -> None:
    project = make_project()
    first = spawn_deploy(project, "v1")
    second = spawn_deploy(project, "v1b")
    logs = [process.communicate(timeout=180)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], logs
    waited = [log for log in logs if "Waiting for the lock deploykit-lock-" in log]
    assert len(waited) == 1
    assert "(actor tester, since " in waited[0]
    entries = project.history().entries()
    assert sorted((e.tag, e.status) for e in entries) == [("v1", "deployed"),
                                                         ("v1b", "deployed")]
    assert body(project.url) == f"release {entries[-1].tag}"


def test_killed_deploy_does_not_block_the_next(make_project: Callable[..., Project],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project()
    victim = spawn_deploy(project, "v1")
    lock = f"deploykit-lock-{project.name}"
    deadline = time.monotonic() + 60
    while docker("network", "inspect", lock, check=False).returncode != 0:
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the deploy never took the lock"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert docker("network", "inspect", lock, check=False).returncode == 0  # left behind

    code, outputs, log = deploy(project, capsys, image_tag="v1", lock_timeout="30")
    assert code == 0, log
    assert outputs["status"] == "deployed"
    assert f"Removing the stale lock {lock}" in log
    assert f"its process {victim.pid} in {socket.gethostname()} is gone" in log
    assert body(project.url) == "release v1"
    assert docker("network", "inspect", lock, check=False).returncode != 0  # released


def test_deploy_from_a_registry_that_needs_login(
        make_project: Callable[..., Project], auth_registry: TestRegistry, base_image: str,
        docker_config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        request: pytest.FixtureRequest) -> None:
    auth_registry.login(docker_config)
    repo = auth_registry.repo("deploy")
    digests = push_variants(auth_registry.host, repo, base_image, {"v1": VARIANTS["v1"]}, tmp_path,
                            config=docker_config)
    project = make_project(registry=auth_registry.host, repo=repo, digests=digests)
    request.addfinalizer(lambda: remove_local_images(f"{auth_registry.host}/{repo}"))
    user_config = Path.home() / ".docker" / "config.json"
    before = user_config.read_text() if user_config.exists() else ""

    code, outputs, log = deploy(project, capsys, image_tag="v1",
                                registry_username=auth_registry.username,
                                registry_password=auth_registry.password)
    assert code == 0, log
    assert outputs["digest"] == digests["v1"]
    assert f"Logged in to {auth_registry.host} as {auth_registry.username}." in log
    assert body(project.url) == "release v1"
    assert auth_registry.password not in log.replace(
        f"::add-mask::{auth_registry.password}", "")
    assert (user_config.read_text() if user_config.exists() else "") == before


def test_dry_run_and_force_redeploy_through_an_explicit_docker_host(
        make_project: Callable[..., Project], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_HOST is honoured end to end (here the engine's own unix socket)."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    project = make_project()
    code, _, log = deploy(project, capsys, image_tag="v1", smoke_url=project.url)
    assert code == 0, log
    before = project.containers()

    # dry_run: the plan with current vs target digest, no change, no history line.
    code, outputs, log = deploy(project, capsys, image_tag="v1b", dry_run="true")
    assert code == 0, log
    assert outputs["status"] == "planned"
    assert outputs["digest"] == project.digests["v1b"]
    assert outputs["previous_image"] == \
        f"{project.registry}/{project.repo}@{project.digests['v1']}"
    summary = (project.directory / "summary.md").read_text()
    assert f"| app | {project.digests['v1']} | {project.digests['v1b']} | recreate |" in summary
    assert project.containers() == before
    assert body(project.url) == "release v1"
    assert [entry.tag for entry in project.history().entries()] == ["v1"]

    # The same release again: nothing to recreate, unless force_redeploy.
    code, outputs, log = deploy(project, capsys, image_tag="v1")
    assert (code, outputs["status"]) == (0, "deployed")
    assert project.containers() == before
    code, outputs, log = deploy(project, capsys, image_tag="v1", force_redeploy="true")
    assert (code, outputs["status"]) == (0, "deployed")
    after = project.containers()
    assert set(after) == set(before)
    assert all(after[service] != before[service] for service in before)
    assert outputs["digest"] == project.digests["v1"]


def test_an_unreachable_docker_host_fails_before_anything_changes(
        make_project: Callable[..., Project], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project = make_project()
    with monkeypatch.context() as patch:  # deploykit's environment only, not the test's
        patch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
        code, outputs, log = deploy(project, capsys, image_tag="v1")
    assert (code, outputs["status"]) == (1, "failed")
    assert f"Cannot reach the Docker engine (unix://{tmp_path}/no-engine.sock)" in log
    assert project.containers() == {}
    assert project.history().entries() == []


@pytest.fixture
def ssh_docker_host(docker_engine: None, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[str, str]]:
    """An sshd on loopback in front of this engine: (DOCKER_HOST, PATH with an `ssh` that
    knows its key), as a GitHub-hosted runner deploying to a remote host would have."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.fail("openssh-server is missing: run scripts/provision-debian.sh", pytrace=False)
    home = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)],
                       check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = free_port()
    (home / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {home}/host_key",
        f"AuthorizedKeysFile {home}/authorized_keys", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", f"PidFile {home}/sshd.pid", ""]))
    (home / "ssh_config").write_text("\n".join([
        "Host *", f"  IdentityFile {home}/client_key", "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  LogLevel ERROR",
        ""]))
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {home}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)
    server = subprocess.Popen([str(sshd), "-D", "-e", "-f", str(home / "sshd_config")],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"ssh://root@127.0.0.1:{port}", f"{bin_dir}:{os.environ['PATH']}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_deploy_to_a_remote_engine_over_ssh(
        make_project: Callable[..., Project], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, ssh_docker_host: tuple[str, str]) -> None:
    """DOCKER_HOST=ssh://user@host end to end: compose, the SDK's health verdict and the
    engine lock all go through ssh."""
    docker_host, path = ssh_docker_host
    project = make_project()
    with monkeypatch.context() as patch:  # deploykit's environment, not the test's docker
        patch.setenv("DOCKER_HOST", docker_host)
        patch.setenv("PATH", path)
        code, outputs, log = deploy(project, capsys, image_tag="v1", smoke_url=project.url,
                                    smoke_contains="release v1")
        assert code == 0, log
        code, outputs_v2, log_v2 = deploy(project, capsys, image_tag="v2")
    assert (outputs["status"], outputs["digest"]) == ("deployed", project.digests["v1"])
    assert body(project.url) == "release v1"
    assert (code, outputs_v2["status"]) == (1, "rolled_back"), log_v2
    assert set(project.containers()) == {"app", "worker"}
    assert [entry.status for entry in project.history().entries()] == ["deployed",
                                                                       "rolled_back"]
    assert docker("network", "inspect", f"deploykit-lock-{project.name}",
                  check=False).returncode != 0


def test_a_digest_the_engine_has_is_not_pulled_again(
        make_project: Callable[..., Project], base_image: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The first deploy of a digest pulls it; a redeploy of it pulls only the services of
    other images (a sidecar here), whose tags may have moved."""
    project = make_project()
    compose = project.directory / "compose.yaml"
    compose.write_text(compose.read_text().replace("volumes:\n  data: {}", (
        "  sidecar:\n"
        f"    image: {base_image}\n"
        "    command: [\"sleep\", \"3600\"]\n"
        "    stop_grace_period: 1s\n"
        "volumes:\n  data: {}")))
    reference = f"{project.registry}/{project.repo}@{project.digests['v1']}"
    docker("image", "rm", reference, check=False)  # as on a host that never ran v1
    code, outputs, first = deploy(project, capsys, image_tag="v1")
    assert (code, outputs["status"]) == (0, "deployed"), first
    assert "is on this engine already" not in first
    assert " app Pulled" in first or " worker Pulled" in first, first
    assert docker("image", "inspect", reference, check=False).returncode == 0
    code, outputs, again = deploy(project, capsys, image_tag="v1", force_redeploy="true")
    assert (code, outputs["status"]) == (0, "deployed"), again
    assert f"{reference} is on this engine already: pulling only sidecar." in again
    pulled = [line for line in again.splitlines() if "Pull" in line and "==>" not in line]
    assert all(" app " not in line and " worker " not in line for line in pulled), pulled
    assert body(project.url) == "release v1"
