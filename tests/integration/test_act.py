"""The action as GitHub runs it, through act: container packaging, INPUT_* mapping,
GITHUB_OUTPUT, the docker socket, and step outputs reaching later steps.

Each test runs a workflow of tests/integration/act/ in a temporary git repository copy of
the project (`uses: ./`), with the test bed's trixie python base as the job image:
- build: act builds the action's own Dockerfile (`image: Dockerfile`, the development form),
  whose default base points at the local base in the copy (act cannot pass build args);
- deploy: action.yml is rewritten the way the release workflow does it, to
  `image: docker://<pre-built action image>` (the released form).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.actionbed import (
    ROOT,
    build_action_image,
    copy_project,
    docker,
    index_platforms,
    registry_digest,
    require_python_base,
    set_default_base,
    unavailable,
)
from tests.integration.conftest import TestRegistry as Registry
from tests.integration.conftest import docker_push, free_port

ACT_WORKFLOWS = Path(__file__).parent / "act"
ACT_TIMEOUT = 600
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def act() -> str:
    found = shutil.which("act") or shutil.which("act", path=str(Path(sys.executable).parent))
    if not found:
        unavailable("act not found (pip install -r requirements-lint.lock)")
    return str(found)


@pytest.fixture(scope="module")
def job_image(docker_engine: None) -> str:
    """act's job container: the trixie python base (bash, python3; no docker CLI needed)."""
    return require_python_base()


def make_repo(directory: Path, workflow: str, *, base: str, branch: str,
              action_image: str = "") -> Path:
    """A git repository copy of the project whose only workflow is ``act/<workflow>``."""
    project = copy_project(directory)
    set_default_base(project, base)
    if action_image:
        use_prebuilt_image(project / "action.yml", action_image)
    workflows = project / ".github" / "workflows"
    shutil.rmtree(workflows)
    workflows.mkdir()
    shutil.copy2(ACT_WORKFLOWS / workflow, workflows / workflow)
    for argv in (["init", "--quiet", "--initial-branch", branch], ["add", "--all"],
                 ["-c", "user.name=deploykit-test", "-c", "user.email=test@deploykit.invalid",
                  "commit", "--quiet", "--message", "act test"]):
        subprocess.run(["git", *argv], cwd=project, check=True, capture_output=True)
    return project


def use_prebuilt_image(action_yml: Path, image: str) -> None:
    """What .github/workflows/release.yml does to the release's action.yml."""
    text, count = re.subn(r"(?m)^  image: Dockerfile$", f"  image: docker://{image}",
                          action_yml.read_text())
    assert count == 1
    action_yml.write_text(text)


def run_act(act: str, project: Path, job_image: str, env: dict[str, str]) -> str:
    argv = [act, "push", "--rm", "--pull=false", "--no-cache-server",
            "-P", f"ubuntu-latest={job_image}"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    result = subprocess.run(argv, cwd=project, capture_output=True, text=True,
                            timeout=ACT_TIMEOUT, check=False)
    output = _ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, f"act failed ({result.returncode}):\n{output[-6000:]}"
    return output


def later_step(output: str) -> dict[str, str]:
    """``later-step NAME=VALUE`` lines printed by the workflows' last step."""
    return dict(re.findall(r"later-step (\w+)=(.*?)\s*$", output, flags=re.MULTILINE))


@pytest.fixture
def compose_project() -> Iterator[str]:
    """A unique compose project name; its containers, network and volumes go afterwards."""
    name = f"dkact{uuid.uuid4().hex[:8]}"
    yield name
    label = f"label=com.docker.compose.project={name}"
    containers = docker("ps", "--all", "--quiet", "--filter", label).stdout.split()
    if containers:
        docker("rm", "--force", "--volumes", *containers, check=False)
    for kind in ("network", "volume"):
        names = docker(kind, "ls", "--quiet", "--filter", label).stdout.split()
        if names:
            docker(kind, "rm", *names, check=False)


@pytest.fixture
def pushed_repositories(open_registry: Registry) -> Iterator[list[str]]:
    """Repositories the test pushes to; their local copies (buildx --push keeps one in the
    engine's image store) are removed afterwards. The registry keeps them."""
    repositories: list[str] = []  # requested before compose_project: cleaned after it
    yield repositories
    for repository in repositories:
        images = docker("images", "--quiet", "--filter",
                        f"reference={open_registry.host}/{repository}").stdout.split()
        if images:
            docker("rmi", "--force", *sorted(set(images)), check=False)


@pytest.fixture
def push_demo(base_image: str, tmp_path: Path) -> Callable[[str, str], str]:
    """Factory: build examples/demo for two platforms, push it, return the index digest."""

    def factory(repository: str, tag: str) -> str:
        metadata = tmp_path / "metadata.json"
        docker_push("buildx", "build", "--platform", "linux/amd64,linux/arm64",
                    "--provenance=false", "--build-arg", f"BASE_IMAGE={base_image}",
                    "--tag", f"{repository}:{tag}", "--push", "--metadata-file", str(metadata),
                    str(ROOT / "examples" / "demo"))
        digest: str = json.loads(metadata.read_text())["containerimage.digest"]
        return digest

    return factory


def test_build_mode_pushes_two_platforms_and_a_later_step_reads_the_digest(
    act: str, job_image: str, open_registry: Registry, base_image: str, tmp_path: Path,
    pushed_repositories: list[str],
) -> None:
    repository = open_registry.repo("act-build")
    pushed_repositories.append(repository)
    project = make_repo(tmp_path / "repo", "build.yml", base=job_image, branch="pre-release")

    output = run_act(act, project, job_image, {
        "DK_REGISTRY": open_registry.host, "DK_IMAGE_REPO": repository,
        "DK_BASE_IMAGE": base_image})

    # act built the action image from the Dockerfile, as GitHub does for `image: Dockerfile`.
    assert "docker build -t act-dockeraction:latest" in output
    seen = later_step(output)
    digest = registry_digest(repository, "staging-latest")
    assert seen["status"] == "built"
    assert seen["digest"] == digest
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    sha_tag = "sha-" + subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=project,
                                      capture_output=True, text=True, check=True).stdout.strip()
    assert registry_digest(repository, sha_tag) == digest
    assert index_platforms(repository, digest) == ["linux/amd64", "linux/arm64"]
    assert sorted(json.loads(seen["platforms"])) == ["linux/amd64", "linux/arm64"]


def test_deploy_mode_serves_the_bind_mounted_file_and_a_later_step_sees_deployed(
    act: str, job_image: str, open_registry: Registry, pushed_repositories: list[str],
    push_demo: Callable[[str, str], str], compose_project: str, tmp_path: Path,
) -> None:
    repository = open_registry.repo("act-deploy")
    pushed_repositories.append(repository)
    digest = push_demo(f"{open_registry.host}/{repository}", "staging-latest")
    action_image = build_action_image(copy_project(tmp_path / "image"), job_image)
    try:
        project = make_repo(tmp_path / "repo", "deploy.yml", base=job_image, branch="deploy",
                            action_image=action_image)
        marker = f"marker-{uuid.uuid4().hex}"
        output = run_act(act, project, job_image, {
            "DK_REGISTRY": open_registry.host, "DK_IMAGE_REPO": repository,
            "DK_IMAGE_TAG": "staging-latest", "DK_PROJECT": compose_project,
            "DK_PORT": str(free_port()), "DK_MARKER": marker})
    finally:
        docker("rmi", "--force", action_image, check=False)

    seen = later_step(output)
    assert seen["status"] == "deployed"
    assert seen["digest"] == digest
    # The file was written during the run, inside the job's workspace only: the app serves
    # it because deploykit pointed ./media at the workspace's source on the engine.
    assert seen["media"] == marker
    app = docker("ps", "--quiet", "--filter",
                 f"label=com.docker.compose.project={compose_project}",
                 "--filter", "label=com.docker.compose.service=app").stdout.split()
    assert len(app) == 1
    mounts = json.loads(docker("inspect", app[0], "--format", "{{json .Mounts}}").stdout)
    (media,) = [m for m in mounts if m["Destination"] == "/www/media"]
    assert media["Type"] == "bind"
    assert media["Source"].endswith("/examples/demo/media")
    assert not media["Source"].startswith(str(project))


def test_rollback_from_a_fresh_runner_reads_the_history_on_the_engine(
    act: str, job_image: str, open_registry: Registry, base_image: str,
    pushed_repositories: list[str], compose_project: str, tmp_path: Path,
) -> None:
    """Issue 14: the reusable workflow passes no state_dir and every run is a new action
    container, so the history file never survives; deploy v1, deploy v2, then rollback."""
    repository = open_registry.repo("act-history")
    pushed_repositories.append(repository)
    digests = {}
    for version in ("v1", "v2"):
        metadata = tmp_path / f"metadata-{version}.json"
        docker_push("buildx", "build", "--platform", "linux/amd64", "--provenance=false",
                    "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg",
                    f"APP_VERSION={version}", "--tag",
                    f"{open_registry.host}/{repository}:{version}", "--push",
                    "--metadata-file", str(metadata), str(ROOT / "examples" / "demo"))
        digests[version] = json.loads(metadata.read_text())["containerimage.digest"]
    action_image = build_action_image(copy_project(tmp_path / "image"), job_image)
    port = str(free_port())
    runs = []
    try:
        for number, (mode, tag) in enumerate((("deploy", "v1"), ("deploy", "v2"),
                                              ("rollback", ""))):
            project = make_repo(tmp_path / f"repo-{number}", "history.yml", base=job_image,
                                branch="deploy", action_image=action_image)
            runs.append(run_act(act, project, job_image, {
                "DK_MODE": mode, "DK_REGISTRY": open_registry.host,
                "DK_IMAGE_REPO": repository, "DK_IMAGE_TAG": tag,
                "DK_PROJECT": compose_project, "DK_PORT": port}))
    finally:
        docker("rmi", "--force", action_image, check=False)

    seen = [later_step(output) for output in runs]
    assert [(s["status"], s["digest"], s["version"]) for s in seen] == [
        ("deployed", digests["v1"], "v1"), ("deployed", digests["v2"], "v2"),
        ("rolled_back", digests["v1"], "v1")]
    assert "(from the release record on the engine)." in runs[2]


def test_unused_inputs_warn_and_a_kebab_spelling_is_refused(
    act: str, job_image: str, open_registry: Registry, pushed_repositories: list[str],
    push_demo: Callable[[str, str], str], compose_project: str, tmp_path: Path,
) -> None:
    """Issue 23: a build with `environment` and `smoke_url` said nothing about them.
    Issue 20: `dry-run: "true"` lost to the runner's INPUT_DRY_RUN=false: a real deploy."""
    repository = open_registry.repo("act-inputs")
    pushed_repositories.append(repository)
    push_demo(f"{open_registry.host}/{repository}", "staging-latest")
    action_image = build_action_image(copy_project(tmp_path / "image"), job_image)
    try:
        project = make_repo(tmp_path / "repo", "inputs.yml", base=job_image, branch="deploy",
                            action_image=action_image)
        output = run_act(act, project, job_image, {
            "DK_REGISTRY": open_registry.host, "DK_IMAGE_REPO": repository,
            "DK_IMAGE_TAG": "staging-latest", "DK_PROJECT": compose_project,
            "DK_PORT": str(free_port())})
    finally:
        docker("rmi", "--force", action_image, check=False)

    seen = later_step(output)
    assert seen["build_status"] == "planned"
    assert seen["kebab_outcome"] == "failure"
    assert seen.get("kebab_status", "") == ""  # refused before the run: no status at all
    warnings = re.findall(r"::warning title=Inputs unused in mode build::(.*)", output)
    assert warnings == ["`environment`, `smoke_url` are set, but mode build never reads them "
                        "(they apply to deploy and rollback). Remove them from this step, or "
                        "run the mode they are for."]
    assert re.search(r"::error title=Invalid input%3A dry_run::Input 'dry_run': is spelled "
                     r"`dry-run`, which action\.yml does not declare", output), output[-4000:]
    # Nothing deployed: the compose project has no container at all.
    assert docker("ps", "--all", "--quiet", "--filter",
                  f"label=com.docker.compose.project={compose_project}").stdout.split() == []
