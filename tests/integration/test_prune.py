"""Pruning after a verified deploy, against the real engine and registry (issue 24).

Ten deploys of ten releases with ``keep_images: 3`` leave exactly the images of the running
release and the two before it; a name of another repository on a pruned image stays; and
the two rollbacks after that pull nothing: the registry can no longer serve those releases
(their config blobs are deleted), and the rollbacks still succeed from the engine's images.
On a single-node Swarm (a throwaway engine, scripts/swarm-engine.sh, with the classic image
store where the shared engine has the containerd one) the manager is pruned the same way.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploykit.cli import main
from deploykit.docker_sdk import docker
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, push_variants, remove_local_images

RELEASES = [f"v{number}" for number in range(1, 11)]
# 2 MB of its own per release, so that the space pruning frees shows in `docker system df`.
OWN_LAYER = "RUN head -c 2000000 /dev/urandom > /www/padding"
HEALTHY = ('HEALTHCHECK --interval=1s --timeout=2s --retries=3 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
SERVE = 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    stop_grace_period: 1s  # busybox httpd as PID 1 ignores SIGTERM
"""
MANIFEST = ("application/vnd.oci.image.manifest.v1+json,"
            "application/vnd.docker.distribution.manifest.v2+json")


def docker_cli(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


@pytest.fixture(scope="module")
def releases(open_registry: TestRegistry, base_image: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """Ten releases in the registry, none of them on the engine (as on a deploy host)."""
    repo = open_registry.repo("prune")
    digests = push_variants(open_registry.host, repo, base_image,
                            {tag: (f"{OWN_LAYER}\n{HEALTHY}", SERVE) for tag in RELEASES},
                            tmp_path_factory.mktemp("releases"))
    remove_local_images(f"{open_registry.host}/{repo}")
    yield repo, digests
    remove_local_images(f"{open_registry.host}/{repo}")
    remove_local_images(f"{open_registry.host}/{repo}-other")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    name = f"dk-prune-{uuid.uuid4().hex[:8]}"
    yield name, tmp_path
    subprocess.run(["docker", "compose", "-p", name, "down", "--timeout", "1"],
                   capture_output=True, check=False, timeout=120)
    subprocess.run(["docker", "network", "rm", f"deploykit-lock-{name}"],
                   capture_output=True, check=False, timeout=60)


def run(command: str, name: str, directory: Path, registry: str, repo: str,
        capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None,
        **inputs: str) -> tuple[int, dict[str, str], str]:
    output = directory / f"output-{uuid.uuid4().hex[:6]}"
    env = {key: value for key, value in {**os.environ, **(env or {})}.items()
           if not key.startswith(("INPUT_", "GITHUB_"))}
    env.update({
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(directory / "summary.md"),
        "GITHUB_WORKSPACE": str(directory), "GITHUB_REPOSITORY": "org/app",
        "INPUT_REGISTRY": registry, "INPUT_IMAGE_REPO": repo, "INPUT_PROJECT_NAME": name,
        "INPUT_ENVIRONMENT": "staging", "INPUT_STATE_DIR": str(directory / "state"),
        "INPUT_HEALTH_SETTLE": "0", "INPUT_HEALTH_TIMEOUT": "60", "INPUT_KEEP_IMAGES": "3",
    })
    env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
    capsys.readouterr()
    code = main([command], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, capsys.readouterr().out


def images_of(image_name: str, docker_host: str = "") -> dict[str, set[str]]:
    """image ID -> the digests its names in ``image_name`` carry, for the engine's images
    with a name in that repository."""
    found: dict[str, set[str]] = {}
    api = docker.APIClient(base_url=docker_host) if docker_host else docker.APIClient()
    for image in api.images():
        names = [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]
        ours = [n for n in names if n.startswith((f"{image_name}:", f"{image_name}@"))]
        if ours:
            found[image["Id"]] = {n.partition("@")[2] for n in ours if "@" in n}
    return found


def delete_config_blob(registry: str, repo: str, tag: str) -> str:
    """Make ``tag`` unpullable: the registry keeps its manifest but not its config."""
    manifest = requests.get(f"http://{registry}/v2/{repo}/manifests/{tag}", timeout=5,
                            headers={"Accept": MANIFEST})
    manifest.raise_for_status()
    blob = f"http://{registry}/v2/{repo}/blobs/{manifest.json()['config']['digest']}"
    assert requests.delete(blob, timeout=5).status_code == 202
    assert requests.get(blob, timeout=5).status_code == 404
    return blob


def test_ten_deploys_keep_three_images_and_a_rollback_pulls_nothing(
        open_registry: TestRegistry, releases: tuple[str, dict[str, str]],
        project: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    repo, digests = releases
    name, directory = project
    image_name = f"{open_registry.host}/{repo}"
    df_before = docker_cli("system", "df")
    logs = []
    for number, tag in enumerate(RELEASES, start=1):
        code, outputs, log = run("deploy", name, directory, open_registry.host, repo, capsys,
                                 image_tag=tag)
        assert (code, outputs.get("status")) == (0, "deployed"), log
        logs.append(log)
        if number == 1:  # v1 also carries a name of another repository: that name stays
            docker_cli("tag", f"{image_name}@{digests['v1']}", f"{image_name}-other:keep")
    df_after = docker_cli("system", "df")
    left = images_of(image_name)
    short_ids = tuple(f" {image_id.removeprefix('sha256:')[:12]} " for image_id in left)
    ours = [line for line in docker_cli("system", "df", "-v").splitlines()
            if line.startswith("REPOSITORY") or any(short in line for short in short_ids)]
    pruned = [line for log in logs for line in log.splitlines() if "old image" in line]
    with capsys.disabled():
        print(f"\n`docker system df` before the ten deploys:\n{df_before}"
              f"after them:\n{df_after}`docker system df -v`, this repository's images:\n"
              + "\n".join([*ours, *pruned]))

    # Pruning starts once a fourth release is on the engine; each deploy then removes one.
    assert f"No old image of {image_name} to prune: kept 3 of the newest" in logs[2]
    for pruned_tag, log in zip(RELEASES, logs[3:], strict=False):
        assert f"Pruned 1 old image(s) of {image_name} ({pruned_tag}): " in log, log
    assert "| old images | 1 removed (v7), " in (directory / "summary.md").read_text()

    assert len(left) == 3, left
    assert set().union(*left.values()) == {digests[tag] for tag in ("v8", "v9", "v10")}
    other = docker_cli("image", "inspect", "--format", "{{.Id}}", f"{image_name}-other:keep")
    assert other.strip() not in left  # the v1 image kept its other name (and its content)

    # The registry can no longer serve v9 and v8: rolling back to them must not pull.
    for tag in ("v9", "v8"):
        delete_config_blob(open_registry.host, repo, tag)
    for tag in ("v9", "v8"):
        code, outputs, log = run("rollback", name, directory, open_registry.host, repo,
                                 capsys)
        assert (code, outputs.get("status"), outputs.get("digest")) == (
            0, "rolled_back", digests[tag]), log
        assert f"{image_name}@{digests[tag]} is on this engine already: nothing to pull." \
            in log
        assert "Pruned" not in log  # never after a rollback


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
STACK = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    stop_grace_period: 1s
    deploy:
      replicas: 1
      update_config: {order: stop-first, monitor: 1s}
"""


@pytest.fixture
def swarm_manager(docker_engine: None, open_registry: TestRegistry) -> Iterator[str]:
    """A throwaway single-node Swarm manager that keeps one stopped task per replica."""
    name = f"dk-prune-swarm-{uuid.uuid4().hex[:8]}"
    try:
        up = subprocess.run(["bash", str(SCRIPTS / "swarm-engine.sh"), "up", name],
                            capture_output=True, text=True, timeout=180, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        docker_host = up.stdout.strip().partition("=")[2]
        for args in (["swarm", "init", "--advertise-addr", "127.0.0.1"],
                     ["swarm", "update", "--task-history-limit", "1"]):
            docker_cli("-H", docker_host, *args)
        yield docker_host
    finally:
        subprocess.run(["bash", str(SCRIPTS / "swarm-engine.sh"), "down", name],
                       capture_output=True, timeout=120, check=False)


def test_a_swarm_manager_is_pruned_too(
        open_registry: TestRegistry, releases: tuple[str, dict[str, str]],
        swarm_manager: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, digests = releases
    image_name = f"{open_registry.host}/{repo}"
    (tmp_path / "compose.yaml").write_text(STACK)
    name = f"dkp-{uuid.uuid4().hex[:8]}"
    logs = []
    for tag in ("v1", "v2", "v3", "v4"):
        code, outputs, log = run("deploy", name, tmp_path, open_registry.host, repo, capsys,
                                 env={"DOCKER_HOST": swarm_manager}, image_tag=tag,
                                 orchestrator="swarm", keep_images="2")
        assert (code, outputs.get("status")) == (0, "deployed"), log
        logs.append(log)
    assert f"No old image of {image_name} to prune: kept 2 of the newest" in logs[1]
    assert any(f"Pruned 1 old image(s) of {image_name} (v1): " in log for log in logs[2:])
    left = set().union(*images_of(image_name, swarm_manager).values())
    # v2 may still be the image of the stopped task Swarm keeps (task_history_limit 1)
    assert left - {digests["v2"]} == {digests["v3"], digests["v4"]}, left
