"""Issue 20, against the real engine: the restore path never leaves nothing serving, and
the records (history, status, engine labels) tell the truth.

The service is slow to stop (busybox httpd as PID 1 ignores SIGTERM, `stop_grace_period:
5s`), so a cancel lands in the middle of a recreate. Every case ends with a verified
release serving on every replica, a history line and a status.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from deploykit.dockercli import process_alive
from tests.integration.conftest import TestRegistry, push_variants, remove_local_images
from tests.integration.test_deploy import (
    FAILING,
    HEALTHY,
    SERVE,
    Project,
    docker,
    make_project,  # noqa: F401 - the fixture behind slow_project
)
from tests.integration.test_reliability import deploy_in_process, spawn

VARIANTS = {"v1": (HEALTHY, SERVE), "v1b": (HEALTHY, SERVE), "v2": (FAILING, SERVE)}
SLOW_STOP = """\
services:
  app:
    image: ${{IMAGE_REGISTRY}}/${{IMAGE_REPO}}:${{IMAGE_TAG}}
    deploy: {{replicas: {replicas}}}
    stop_grace_period: {grace}s  # busybox httpd as PID 1 ignores SIGTERM
"""


@pytest.fixture(scope="module")
def images(open_registry: TestRegistry, base_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    repo = open_registry.repo("restore")
    yield repo, push_variants(open_registry.host, repo, base_image, VARIANTS,
                              tmp_path_factory.mktemp("restore-images"))
    remove_local_images(f"{open_registry.host}/{repo}")


@pytest.fixture
def slow_project(make_project: Callable[..., Project]) -> Callable[..., Project]:  # noqa: F811
    def factory(replicas: int = 1, grace: int = 5) -> Project:
        project = make_project()
        (project.directory / "compose.yaml").write_text(
            SLOW_STOP.format(replicas=replicas, grace=grace))
        return project

    return factory


def containers(project: Project) -> list[tuple[str, str, str]]:
    """(name, state, image reference) of every container of the project."""
    out = docker("ps", "--all", "--filter", f"label=com.docker.compose.project={project.name}",
                 "--format", "{{.Names}} {{.State}} {{.ID}}").stdout
    found = []
    for line in out.splitlines():
        name, state, container = line.split()
        image = docker("inspect", "--format", "{{.Config.Image}}", container).stdout.strip()
        found.append((name, state, image))
    return sorted(found)


def serves(project: Project, tag: str, replicas: int) -> None:
    """Every replica runs ``tag``'s digest and answers with it; nothing else is left."""
    listed = containers(project)
    assert [(state, image.partition("@")[2]) for _, state, image in listed] == \
        [("running", project.digests[tag])] * replicas, listed
    for name, _, _ in listed:
        answer = docker("exec", name, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/").stdout
        assert answer.strip() == f"release {tag}"


def ends_with(project: Project, outputs: dict[str, str], tag: str, status: str) -> None:
    assert outputs["status"] == status
    last = project.history().entries()[-1]
    assert (last.tag, last.status) == (tag, status)


MOMENTS = (0.0, 2.0, 4.5)  # seconds after the `up` child appeared: at once, mid, late


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_cancel_at_any_moment_of_up_restores_the_verified_release(
        replicas: int, slow_project: Callable[..., Project],
        capsys: pytest.CaptureFixture[str]) -> None:
    project = slow_project(replicas)
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    for moment in MOMENTS:
        run = spawn(project, "v1b")
        run.wait_for_child("compose", "up")
        time.sleep(moment)
        run.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code, outputs, log = run.finish()
        print(f"replicas {replicas}, SIGINT {moment} s into up: exit after "
              f"{time.monotonic() - signalled:.1f} s")
        assert code == 1, log
        assert "Traceback" not in log and "Cancelled (SIGINT) during " in log, log
        ends_with(project, outputs, "v1b", "rolled_back")
        serves(project, "v1", replicas)


@pytest.mark.parametrize("after", [0.3, 0.8])
def test_a_killed_compose_child_is_followed_by_a_clean_restore(
        after: float, slow_project: Callable[..., Project],
        capsys: pytest.CaptureFixture[str]) -> None:
    project = slow_project(2)
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    run = spawn(project, "v1b")
    child = run.wait_for_child("compose", "up")
    time.sleep(after)
    os.killpg(child, signal.SIGKILL)
    code, outputs, log = run.finish()
    assert code == 1 and "Traceback" not in log, log
    ends_with(project, outputs, "v1b", "rolled_back")
    serves(project, "v1", 2)


def test_deploykit_killed_during_up_does_not_take_the_project_down(
        slow_project: Callable[..., Project], capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL to deploykit alone: its `up` finishes its step (no pipe to die on); the next
    deploy finds the lock stale and deploys."""
    project = slow_project(2)
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    run = spawn(project, "v1b")
    child = run.wait_for_child("compose", "up")
    time.sleep(0.5)
    run.process.kill()
    run.finish()
    deadline = time.monotonic() + 60
    # Ended, not gone: where PID 1 reaps no orphans (a container's `sleep`), it stays a zombie.
    while process_alive(child, "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(child, "")
    listed = containers(project)  # the step completed: two replicas of v1b, no leftover
    assert [(state, image.partition("@")[2]) for _, state, image in listed] == \
        [("running", project.digests["v1b"])] * 2, listed
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v1b", lock_timeout="30")
    assert code == 0, log
    assert "which no deploy verified" in log  # v1b was never verified by the killed run
    ends_with(project, outputs, "v1b", "deployed")
    serves(project, "v1b", 2)


def test_the_next_deploy_waits_for_the_up_a_killed_deploykit_left(
        slow_project: Callable[..., Project], capsys: pytest.CaptureFixture[str]) -> None:
    """The killed deploy's detached `up` still runs when the next deploy comes: the lock
    stays held until that step ends (two `up`s of one project raced for container names:
    "already in use")."""
    project = slow_project(2)
    code, _, log = deploy_in_process(project, capsys, image_tag="v1")
    assert code == 0, log
    run = spawn(project, "v1b")
    child = run.wait_for_child("compose", "up")
    time.sleep(0.5)
    run.process.kill()
    run.finish()
    assert process_alive(child, "")  # its step goes on without deploykit
    code, outputs, log = deploy_in_process(project, capsys, image_tag="v1b", lock_timeout="60")
    assert code == 0, log
    assert "Waiting for the lock" in log, log
    ends_with(project, outputs, "v1b", "deployed")
    serves(project, "v1b", 2)


def delete_from_registry(project: Project, tag: str) -> None:
    """The release is gone: from the engine, and its manifest deleted in the registry."""
    reference = f"{project.registry}/{project.repo}"
    docker("image", "rm", "--force", f"{reference}@{project.digests[tag]}",
           f"{reference}:{tag}", check=False)
    response = requests.delete(
        f"http://{project.registry}/v2/{project.repo}/manifests/{project.digests[tag]}",
        timeout=10)
    assert response.status_code == 202, response.text


def test_a_restore_that_cannot_pull_says_so_and_rollback_skips_the_failed_release(
        slow_project: Callable[..., Project], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """Fresh runners (no history file): v1 and v1b verified; v1b is deleted; v2 fails its
    healthcheck and cannot be restored: the error says what runs; v1 is deployed; the
    `mode: rollback` after it goes to v1b, never to v2 (its labels said `deployed`)."""
    project = slow_project(1, grace=1)

    def fresh(command: str = "deploy", **inputs: str) -> tuple[int, dict[str, str], str]:
        state = str(tmp_path / f"state-{uuid.uuid4().hex[:6]}")
        return deploy_in_process(project, capsys, command, state_dir=state, **inputs)

    for tag in ("v1", "v1b"):
        code, _, log = fresh(image_tag=tag)
        assert code == 0, log
    delete_from_registry(project, "v1b")
    code, outputs, log = fresh(image_tag="v2", health_timeout="20")
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "Traceback" not in log
    v1b = f"{project.registry}/{project.repo}@{project.digests['v1b']}"
    v2 = f"{project.registry}/{project.repo}@{project.digests['v2']}"
    assert f"The restore of {v1b} failed too (its image is no longer on this engine and " \
           "could not be pulled)" in log, log
    assert f"Running now (not verified): app: {v2}." in log, log
    assert f"Push {v1b} to the registry again and deploy it" in log
    listed = containers(project)
    assert [image.partition("@")[2] for _, _, image in listed] == [project.digests["v2"]]

    code, outputs, log = fresh(image_tag="v1")
    assert (code, outputs["status"]) == (0, "deployed"), log
    code, outputs, log = fresh("rollback")
    assert f"Rolling back to v1b ({project.digests['v1b']})" in log, log  # never v2
    assert (code, outputs["status"]) == (1, "failed"), log
    assert f"{v1b} does not exist in the registry." in log  # deleted: nothing changed
    serves(project, "v1", 1)
