"""orchestrator: swarm against a real single-node Swarm (issue 15's acceptance).

The Swarm is a throwaway engine (scripts/swarm-engine.sh: a privileged container running the
test bed's dockerd), made a single-node manager for this module: the shared engine's Swarm
state is never touched (`docker swarm leave` breaks name resolution between the running
containers of every compose project on that engine). No IPVS here: the app is reached by
name (`endpoint_mode: dnsrr`) from a client container on the stack's attachable overlay
network, never through a published port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploykit.cli import main
from deploykit.history import History
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, push_variants, remove_local_images

HEALTHY = ('HEALTHCHECK --interval=1s --timeout=2s --retries=2 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
FAILING = ('HEALTHCHECK --interval=1s --timeout=2s --retries=2 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/missing || exit 1')
# Keeps serving for 2 s after SIGTERM, as an app behind a load balancer drains.
DRAINING = ('CMD ["sh", "-c", "httpd -p 8080 -h /www; trap \'sleep 2; exit 0\' TERM; '
            'while :; do sleep 1 & wait $!; done"]')
EXIT_AT_START = 'CMD ["sh", "-c", "echo cannot open the database; exit 3"]'
VARIANTS = {"v1": (HEALTHY, DRAINING), "v2": (HEALTHY, DRAINING), "v3": (FAILING, DRAINING),
            "v4": (HEALTHY, EXIT_AT_START)}

STACK_FILE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    networks: [net]
    stop_grace_period: 5s
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config:
        parallelism: 1
        order: start-first
        monitor: 3s
        failure_action: ${FAILURE_ACTION}
      rollback_config: {parallelism: 1, order: start-first, monitor: 3s}
      restart_policy: {condition: any, delay: 1s}
networks:
  net:
    driver: overlay
    attachable: true
    name: ${NETWORK}
"""


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SWARM: dict[str, str] = {}  # DOCKER_HOST of the module's Swarm engine, once it runs


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The shared engine."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout).stdout


def swarm_docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The module's Swarm manager."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout, env={**os.environ, **SWARM}).stdout


@pytest.fixture(scope="module")
def swarm(docker_engine: None, open_registry: TestRegistry) -> Iterator[None]:
    """A throwaway engine as a single-node Swarm manager for the module."""
    name = f"dk-swarm-tests-{uuid.uuid4().hex[:8]}"
    try:
        up = subprocess.run(["bash", str(SCRIPTS / "swarm-engine.sh"), "up", name],
                            capture_output=True, text=True, timeout=180, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        key, _, value = up.stdout.strip().partition("=")
        SWARM[key] = value
        swarm_docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield
    finally:
        SWARM.clear()
        subprocess.run(["bash", str(SCRIPTS / "swarm-engine.sh"), "down", name],
                       capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def images(open_registry: TestRegistry, base_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    repo = open_registry.repo("swarm")
    workdir = tmp_path_factory.mktemp("swarm-images")
    digests = push_variants(open_registry.host, repo, base_image, VARIANTS, workdir)
    yield repo, digests
    remove_local_images(f"{open_registry.host}/{repo}")


@dataclass
class StackProject:
    name: str
    directory: Path
    registry: str
    repo: str
    digests: dict[str, str]

    @property
    def network(self) -> str:
        return f"{self.name}-net"

    def env(self, failure_action: str = "rollback", **inputs: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_"))}
        env.update({
            "GITHUB_WORKSPACE": str(self.directory), "GITHUB_REPOSITORY": "org/app",
            "GITHUB_RUN_ID": uuid.uuid4().hex[:8], "GITHUB_ACTOR": "tester",
            "INPUT_ORCHESTRATOR": "swarm", **SWARM, "INPUT_REGISTRY": self.registry,
            "INPUT_IMAGE_REPO": self.repo, "INPUT_PROJECT_NAME": self.name,
            "INPUT_ENVIRONMENT": "staging", "INPUT_STATE_DIR": str(self.directory / "state"),
            "INPUT_HEALTH_TIMEOUT": "60", "INPUT_LOCK_TIMEOUT": "120",
            "INPUT_COMPOSE_ENV": f"NETWORK={self.network}\nFAILURE_ACTION={failure_action}",
        })
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        return env

    def tasks(self) -> dict[str, str]:
        """task ID -> image of every task that should run now."""
        ids = swarm_docker("service", "ps", "-q", "--filter", "desired-state=running",
                     f"{self.name}_app").split()
        if not ids:
            return {}
        found = json.loads(swarm_docker("inspect", *ids))
        return {t["ID"]: t["Spec"]["ContainerSpec"]["Image"] for t in found}

    def spec(self) -> str:
        return swarm_docker("service", "inspect", "--format", "{{json .Spec}}", f"{self.name}_app")

    def fetch(self, count: int = 1) -> list[str]:
        """``count`` requests from a client container on the overlay network."""
        script = (f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); "
                  f"timeout 3 wget -q -O - http://{self.name}_app:8080/ || echo FAILED; "
                  "sleep 0.05; done")
        out = swarm_docker("run", "--rm", "--network", self.network, BASE_CLIENT, "sh", "-c",
                     script, timeout=300)
        return [line for line in out.splitlines() if line.strip()]

    def history(self) -> History:
        return History(self.directory / "state")


BASE_CLIENT = "127.0.0.1:5000/testbed/busybox:latest"
STACK_LABEL = "com.docker.stack.namespace"


@pytest.fixture
def make_stack(swarm: None, images: tuple[str, dict[str, str]], open_registry: TestRegistry,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], StackProject]]:
    created: list[StackProject] = []

    def factory() -> StackProject:
        directory = tmp_path_factory.mktemp("stack")
        (directory / "compose.yaml").write_text(STACK_FILE)
        project = StackProject(f"dks-{uuid.uuid4().hex[:8]}", directory, open_registry.host,
                               images[0], images[1])
        created.append(project)
        return project

    yield factory
    for project in created:
        swarm_docker("stack", "rm", project.name, check=False)
        swarm_docker("config", "rm", f"deploykit-lock-{project.name}", check=False)
    for project in created:  # `stack rm` returns at once: its containers go afterwards
        deadline = time.monotonic() + 60
        while swarm_docker("ps", "-aq", "--filter", f"label={STACK_LABEL}={project.name}").strip() \
                and time.monotonic() < deadline:
            time.sleep(0.5)


def run(project: StackProject, capsys: pytest.CaptureFixture[str], command: str = "deploy",
        failure_action: str = "rollback", **inputs: str) -> tuple[int, dict[str, str], str]:
    output = project.directory / f"output-{uuid.uuid4().hex[:6]}"
    env = project.env(failure_action, **inputs)
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(project.directory / "summary.md")})
    capsys.readouterr()
    code = main([command], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, capsys.readouterr().out


def spawn(project: StackProject, tag: str) -> subprocess.Popen[str]:
    env = project.env(image_tag=tag)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.Popen([sys.executable, "-m", "deploykit", "deploy"], env=env,
                            cwd=project.directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def digests_of(tasks: dict[str, str]) -> set[str]:
    return {image.rpartition("@")[2] for image in tasks.values()}


def test_an_engine_that_is_no_manager_is_refused_before_anything(
        docker_engine: None, open_registry: TestRegistry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Runs before the module's Swarm exists (tests run in file order)."""
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip() != "inactive":
        pytest.skip("the engine is already in a Swarm")
    (tmp_path / "compose.yaml").write_text(STACK_FILE)
    project = StackProject(f"dks-{uuid.uuid4().hex[:8]}", tmp_path, open_registry.host,
                           "testbed/busybox", {})
    code, outputs, log = run(project, capsys, image_tag="staging-latest")
    assert code == 1, log
    assert outputs.get("status") == "failed", (outputs, log)
    assert ("::error title=Invalid input%3A orchestrator::Input 'orchestrator': is swarm, but "
            "the local engine is not in a Swarm (state inactive).") in log
    assert docker("ps", "-aq", "--filter", f"name={project.name}").strip() == ""
    assert not (tmp_path / "state").exists()


def test_replicas_on_two_nodes_run_one_digest(docker_engine: None,
                                              open_registry: TestRegistry) -> None:
    """scripts/swarm-multinode.sh: two throwaway engines, a manager and a worker; two
    replicas land on both nodes and run one digest. The shared engine stays as it was."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    result = subprocess.run(["bash", str(SCRIPTS / "swarm-multinode.sh")], capture_output=True,
                            text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status=deployed" in result.stderr
    assert "] tasks on 2 node(s), state(s) running, digest(s): sha256:" in result.stderr
    assert docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip() == state


def test_swarm_story(make_stack: Callable[[], StackProject],
                     capsys: pytest.CaptureFixture[str]) -> None:
    project = make_stack()
    digests = project.digests
    started = time.monotonic()

    # v1: a new stack, two replicas of one digest.
    code, outputs, log = run(project, capsys, image_tag="v1")
    assert code == 0, log
    assert outputs["status"] == "deployed"
    assert outputs["digest"] == digests["v1"]
    assert outputs["previous_image"] == ""
    tasks = project.tasks()
    assert len(tasks) == 2 and digests_of(tasks) == {digests["v1"]}
    assert project.fetch() == ["release v1"]

    # v2: start-first rolling update while a client loops; not one request fails.
    client_name = f"{project.name}-client"
    client = subprocess.Popen(
        ["docker", "-H", SWARM["DOCKER_HOST"], "run", "--rm", "--name", client_name,
         "--network", project.network, BASE_CLIENT, "sh", "-c", "end=$(($(date +%s)+90)); i=0; "
         "while [ $(date +%s) -lt $end ] && [ $i -lt 900 ]; do i=$((i+1)); "
         f"timeout 3 wget -q -O - http://{project.name}_app:8080/ || echo FAILED; "
         "sleep 0.1; done"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    code, outputs, log = run(project, capsys, image_tag="v2")
    swarm_docker("kill", client_name)  # bounded anyway: 90 s, 900 requests
    served = client.communicate(timeout=30)[0].splitlines()
    assert code == 0, log
    assert outputs["status"] == "deployed"
    assert outputs["previous_image"] == f"{project.registry}/{project.repo}@{digests['v1']}"
    assert digests_of(project.tasks()) == {digests["v2"]}
    assert "FAILED" not in served and "release v1" in served and "release v2" in served, served
    assert "app: updating, " in log and "app: completed, 2/2 running" in log
    summary = (project.directory / "summary.md").read_text()
    assert f"| app | 2/2 | {digests['v2']} | completed | start-first |" in summary

    # v3 fails its healthcheck: Swarm rolls back, deploykit says so and exits 1.
    code, outputs, log = run(project, capsys, image_tag="v3")
    assert code == 1, log
    assert outputs["status"] == "rolled_back"
    assert "Swarm rolled the update of app back" in log
    assert "Service app, task " in log and " on node " in log
    assert "unhealthy (last probe exit 1: wget: server returned error: HTTP/1.1 404" in log
    assert (f"{project.registry}/{project.repo}@{digests['v2']} runs again on every "
            "replica.") in log
    assert digests_of(project.tasks()) == {digests["v2"]}
    assert project.fetch() == ["release v2"]

    # v4 exits at start under failure_action pause: deploykit restores v2 itself.
    began = time.monotonic()
    code, outputs, log = run(project, capsys, failure_action="pause", image_tag="v4",
                             health_timeout="30")
    assert code == 1, log
    assert time.monotonic() - began < 2 * 30 + 30  # the rollout and the restore are bounded
    assert outputs["status"] == "rolled_back"
    assert "Swarm paused the update of app" in log or "Tasks of app keep failing" in log, log
    assert "exit code 3" in log and "cannot open the database" in log
    assert (f"Rolled back: {project.registry}/{project.repo}@{digests['v2']} runs again on "
            "every replica.") in log
    assert digests_of(project.tasks()) == {digests["v2"]}

    # The production gate, bad input and a dry run change nothing: same spec, same tasks.
    spec, tasks = project.spec(), project.tasks()
    code, outputs, log = run(project, capsys, environment="production", image_tag="latest")
    assert code == 1 and "::error title=" in log
    (project.directory / "broken.yaml").write_text(
        STACK_FILE.replace("    networks: [net]\n", "    networks: [net]\n    build: .\n"))
    code, outputs, log = run(project, capsys, image_tag="v1", compose_file="broken.yaml")
    assert code == 1 and "has `build:`" in log
    code, outputs, log = run(project, capsys, image_tag="v1", dry_run="true")
    assert code == 0, log
    assert outputs["status"] == "planned"
    assert (f"| app | {digests['v2']} | {digests['v1']} | 2 | start-first | rolling update |"
            in (project.directory / "summary.md").read_text())
    assert (project.spec(), project.tasks()) == (spec, tasks)

    statuses = [(e.tag, e.status) for e in project.history().entries()]
    assert statuses == [("v1", "deployed"), ("v2", "deployed"), ("v3", "rolled_back"),
                        ("v4", "rolled_back")]

    # mode rollback from a fresh runner (no history file): the release before v2 (v3 and
    # v4 never counted), from the labels on the stack's services, deployed the same way.
    (project.directory / "state").rename(project.directory / "state-of-another-runner")
    code, outputs, log = run(project, capsys, "rollback")
    assert code == 0, log
    assert (f"Rolling back to v1 ({digests['v1']}), deployed ") in log
    assert "(from the labels of the stack's services)." in log
    assert outputs["status"] == "rolled_back"
    assert outputs["digest"] == digests["v1"]
    assert digests_of(project.tasks()) == {digests["v1"]}
    assert [(e.tag, e.status) for e in project.history().entries()] == [("v1", "rolled_back")]
    print(f"swarm story: {time.monotonic() - started:.1f} s")


def test_two_swarm_deploys_serialise(make_stack: Callable[[], StackProject]) -> None:
    project = make_stack()
    first, second = spawn(project, "v1"), spawn(project, "v2")
    logs = [process.communicate(timeout=240)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], logs
    waited = [log for log in logs if f"Waiting for the lock deploykit-lock-{project.name}"
              in log]
    assert len(waited) == 1, logs
    entries = project.history().entries()
    assert sorted((e.tag, e.status) for e in entries) == [("v1", "deployed"),
                                                         ("v2", "deployed")]
    assert digests_of(project.tasks()) == {project.digests[entries[-1].tag]}
    assert swarm_docker("config", "ls", "-q", "--filter",
                  f"name=deploykit-lock-{project.name}").strip() == ""

    # A cancel during the watch: exit 1 at once, status failed, the lock released.
    other = "v1" if entries[-1].tag == "v2" else "v2"
    victim = spawn(project, other)
    assert victim.stdout is not None
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.startswith("Watching app of stack"):
            break
    began = time.monotonic()
    victim.send_signal(signal.SIGINT)
    rest = victim.communicate(timeout=30)[0]
    assert victim.returncode == 1, "".join(seen) + rest
    assert time.monotonic() - began < 7.5
    assert "Cancelled (SIGINT) during the rollout: Swarm goes on with the update" in rest
    assert "\nstatus=failed\n" in rest
    assert project.history().entries()[-1].status == "failed"
    assert swarm_docker("config", "ls", "-q", "--filter",
                  f"name=deploykit-lock-{project.name}").strip() == ""
