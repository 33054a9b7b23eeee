"""Rules for the shipped workflows, examples and action image (static: no daemon, no network).

The reusable workflows (.github/workflows/build-push.yml, deploy.yml), deploykit's own CI and
release workflows, the child-repository examples (examples/workflows, examples/compose.yaml)
and the Dockerfile are checked against the ADR and issue 6: least privilege, timeouts,
pinned actions, one deploy per environment, production approval, and inputs that exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EXAMPLES = sorted((ROOT / "examples" / "workflows").glob("*.yml"))
REUSABLE = ("build-push.yml", "deploy.yml")
ACTION = "deploykit-org/deploykit@v1"
REUSABLE_PREFIX = "deploykit-org/deploykit/.github/workflows/"
SHA_PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@]+)?@[0-9a-f]{40}$")
IMAGE = "${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}"


def load(path: Path) -> dict[str, Any]:
    document: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def action_inputs() -> dict[str, Any]:
    inputs: dict[str, Any] = load(ROOT / "action.yml")["inputs"]
    return inputs


def action_outputs() -> set[str]:
    return set(load(ROOT / "action.yml")["outputs"])


def jobs(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load(path)["jobs"]
    return found


def steps(path: Path) -> list[dict[str, Any]]:
    return [step for job in jobs(path).values() for step in job.get("steps", [])]


def reusable(name: str) -> dict[str, Any]:
    return load(ROOT / ".github" / "workflows" / name)


ALL = [*WORKFLOWS, *EXAMPLES]
IDS = [str(path.relative_to(ROOT)) for path in ALL]


def test_the_expected_files_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["build-push.yml", "ci.yml", "deploy.yml",
                                           "release.yml"]
    assert [p.name for p in EXAMPLES] == ["deploy.yml", "hotfix.yml", "pre-release.yml",
                                          "release.yml"]


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_default_token_permissions_are_empty(path: Path) -> None:
    assert load(path)["permissions"] == {}


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_every_job_has_permissions_and_a_timeout(path: Path) -> None:
    for name, job in jobs(path).items():
        assert isinstance(job.get("permissions"), dict), f"{name}: no permissions"
        assert "write-all" not in str(job["permissions"]), name
        if "uses" in job:
            # A job that calls a reusable workflow cannot set timeout-minutes: the called
            # workflow's own jobs carry it (checked on those files).
            assert job["uses"].startswith(REUSABLE_PREFIX), name
            assert "timeout-minutes" not in job, name
        else:
            assert job.get("timeout-minutes"), f"{name}: no timeout-minutes"


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_actions_are_pinned_by_sha_except_deploykit_itself(path: Path) -> None:
    for step in steps(path):
        uses = step.get("uses")
        if uses is None or uses == "./":
            continue
        assert uses == ACTION or SHA_PINNED.match(uses), uses
        if SHA_PINNED.match(uses):
            assert "#" not in uses  # the version comment is a YAML comment, not part of it


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_no_expression_is_expanded_inside_a_shell_script(path: Path) -> None:
    # Template injection: values reach scripts through env:, never through ${{ }} in run:.
    for step in steps(path):
        assert "${{" not in step.get("run", ""), step.get("name")


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_checkouts_do_not_persist_credentials(path: Path) -> None:
    for step in steps(path):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_action_steps_pass_only_inputs_the_action_has(path: Path) -> None:
    known = action_inputs()
    for step in steps(path):
        if step.get("uses") in (ACTION, "./"):
            given = step["with"]
            assert given["mode"] in ("build", "deploy", "rollback")
            assert set(given) <= set(known), set(given) - set(known)


@pytest.mark.parametrize("name", REUSABLE)
def test_reusable_workflows_are_workflow_call_only(name: str) -> None:
    trigger = reusable(name)["on"]
    assert list(trigger) == ["workflow_call"]
    assert trigger["workflow_call"]["secrets"]["GHCR_PAT"]["required"] is True


@pytest.mark.parametrize("name", REUSABLE)
def test_reusable_outputs_come_from_the_action_step(name: str) -> None:
    document = reusable(name)
    (job_name, job), = document["jobs"].items()
    step_ids = {step.get("id") for step in job["steps"]}
    for output, spec in document["on"]["workflow_call"]["outputs"].items():
        assert spec["value"] == f"${{{{ jobs.{job_name}.outputs.{output} }}}}"
        match = re.fullmatch(r"\$\{\{ steps\.(\w+)\.outputs\.(\w+) \}\}", job["outputs"][output])
        assert match and match.group(1) in step_ids and match.group(2) == output
        assert output in action_outputs()


def test_build_push_uses_the_pat_and_defaults_to_two_platforms() -> None:
    call = reusable("build-push.yml")["on"]["workflow_call"]
    assert call["inputs"]["platforms"]["default"] == "linux/amd64,linux/arm64"
    assert call["inputs"]["registry"]["default"] == "ghcr.io"
    (step,) = [s for s in steps(ROOT / ".github/workflows/build-push.yml") if s.get("id")]
    assert step["uses"] == ACTION
    assert step["with"]["mode"] == "build"
    assert step["with"]["registry_password"] == "${{ secrets.GHCR_PAT }}"


def test_build_push_attests_the_digest_it_built() -> None:
    """Issue 25: the build provenance of the index digest, only for what this run built."""
    workflow = ROOT / ".github/workflows/build-push.yml"
    (attest,) = [s for s in steps(workflow)
                 if s.get("uses", "").startswith("actions/attest-build-provenance@")]
    assert re.fullmatch(r"actions/attest-build-provenance@[0-9a-f]{40}", attest["uses"])
    assert attest["if"] == "steps.build.outputs.status == 'built'"
    assert attest["with"]["subject-digest"] == "${{ steps.build.outputs.digest }}"
    assert attest["with"]["subject-name"] == "${{ fromJSON(steps.build.outputs.metadata).image }}"
    assert attest["with"]["push-to-registry"] == "${{ inputs.provenance_push_to_registry }}"
    permissions = reusable("build-push.yml")["jobs"]["build-push"]["permissions"]
    assert (permissions["id-token"], permissions["attestations"]) == ("write", "write")


def test_deploy_runs_per_environment_on_its_labelled_runner_with_approval() -> None:
    document = reusable("deploy.yml")
    call = document["on"]["workflow_call"]
    assert call["inputs"]["environment"]["required"] is True
    assert call["inputs"]["image_tag"]["required"] is True
    assert set(call["secrets"]) == {"GHCR_PAT", "COMPOSE_ENV"}
    job = document["jobs"]["deploy"]
    assert job["environment"] == {"name": "${{ inputs.environment }}"}
    assert job["concurrency"] == {
        "group": "deploy-${{ github.repository }}-${{ inputs.environment }}",
        "cancel-in-progress": False,
    }
    runner = job["runs-on"]
    assert runner[0] == "self-hosted"
    assert "'prod'" in runner[1] and "'stage'" in runner[1]
    assert "inputs.production_environments" in runner[1]
    (step,) = [s for s in job["steps"] if s.get("id") == "deploy"]
    assert step["with"]["mode"] == "deploy"
    assert step["with"]["registry_password"] == "${{ secrets.GHCR_PAT }}"
    assert step["with"]["compose_env"] == "${{ secrets.COMPOSE_ENV }}"


def test_deploy_never_builds() -> None:
    text = (ROOT / ".github/workflows/deploy.yml").read_text()
    assert "mode: build" not in text
    assert "buildx" not in text
    assert "setup-qemu" not in text


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_call_the_reusables_with_known_inputs_and_secrets(path: Path) -> None:
    for name, job in jobs(path).items():
        if "uses" not in job:
            continue
        target = job["uses"].removeprefix(REUSABLE_PREFIX)
        workflow, _, ref = target.partition("@")
        assert ref == "v1", name
        call = reusable(workflow)["on"]["workflow_call"]
        given = job.get("with", {})
        assert set(given) <= set(call["inputs"]), set(given) - set(call["inputs"])
        required = {key for key, spec in call["inputs"].items() if spec.get("required")}
        assert required <= set(given), required - set(given)
        assert "GHCR_PAT" in job["secrets"]
        assert set(job["secrets"]) <= set(call["secrets"])


_ACCESS = {"none": 0, "read": 1, "write": 2}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_callers_grant_what_the_reusable_jobs_ask_for(path: Path) -> None:
    """GitHub refuses to start a nested job that asks for more than its caller grants."""
    for name, job in jobs(path).items():
        if "uses" not in job:
            continue
        workflow = job["uses"].removeprefix(REUSABLE_PREFIX).partition("@")[0]
        granted = job["permissions"]
        for nested in reusable(workflow)["jobs"].values():
            for scope, level in nested["permissions"].items():
                assert _ACCESS[granted.get(scope, "none")] >= _ACCESS[level], (name, scope)


def test_example_triggers_follow_the_adr() -> None:
    def trigger(name: str) -> dict[str, Any]:
        found: dict[str, Any] = load(ROOT / "examples/workflows" / name)["on"]
        return found

    assert trigger("pre-release.yml")["push"] == {"branches": ["pre-release"],
                                                  "tags": ["test-*"]}
    assert trigger("release.yml")["push"] == {"branches": ["release"], "tags": ["v*"]}
    assert trigger("hotfix.yml")["push"] == {"branches": ["hotfix/**"]}
    deploy = trigger("deploy.yml")
    assert deploy["push"] == {"branches": ["deploy"]}
    dispatch = deploy["workflow_dispatch"]["inputs"]
    assert dispatch["image_tag"]["required"] is True
    assert dispatch["environment"]["options"] == ["staging", "production"]


def test_release_dogfoods_the_action_and_publishes_a_prebuilt_image() -> None:
    path = ROOT / ".github/workflows/release.yml"
    image_job = jobs(path)["image"]
    (build,) = [s for s in image_job["steps"] if s.get("id") == "build"]
    assert build["uses"] == "./"
    assert build["with"]["mode"] == "build"
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert image_job["permissions"] == {"contents": "read", "packages": "write"}
    scripts = "\n".join(step.get("run", "") for step in steps(path))
    assert "docker buildx imagetools create" in scripts
    assert 'image: docker://$IMAGE # v$VERSION' in scripts
    assert jobs(path)["action"]["permissions"] == {"contents": "write"}


def test_ci_runs_the_ci_script() -> None:
    (run,) = [s["run"] for s in steps(ROOT / ".github/workflows/ci.yml") if "run" in s]
    assert run.endswith("bash .ci/run")


# -- compose files ------------------------------------------------------------------------
def compose(path: str) -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return found


@pytest.mark.parametrize("path", ["examples/compose.yaml", "examples/demo/compose.yaml"])
def test_app_and_worker_share_the_parameterised_image_without_build(path: str) -> None:
    services = compose(path)["services"]
    for name in ("app", "worker"):
        assert services[name]["image"] == IMAGE
        assert "build" not in services[name]
    for name, service in services.items():
        assert "healthcheck" in service, name
        assert "build" not in service, name


@pytest.mark.parametrize("path", ["examples/compose.yaml", "examples/demo/compose.yaml"])
def test_named_volumes_are_declared(path: str) -> None:
    document = compose(path)
    for service in document["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in document["volumes"], source


def test_child_example_has_the_adr_services() -> None:
    services = compose("examples/compose.yaml")["services"]
    assert set(services) == {"app", "worker", "db", "redis"}
    assert services["db"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7-alpine"


def test_demo_has_a_relative_bind_mount_with_a_file_behind_it() -> None:
    app = compose("examples/demo/compose.yaml")["services"]["app"]
    assert "./media:/www/media:ro" in app["volumes"]
    assert (ROOT / "examples/demo/media/hello.txt").read_text() == "hello from the bind mount\n"


# -- the action image ---------------------------------------------------------------------
def dockerfile_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()
            and not line.lstrip().startswith("#")]


def test_dockerfile_base_is_an_arg_and_runs_as_root_with_an_exec_entrypoint() -> None:
    lines = dockerfile_lines()
    assert lines[0].startswith("ARG BASE_IMAGE=")
    froms = [line for line in lines if line.startswith("FROM ")]
    assert all(line.startswith("FROM ${BASE_IMAGE}") for line in froms)
    assert not any(line.startswith("USER ") for line in lines)
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert entrypoint == 'ENTRYPOINT ["/opt/deploykit/bin/python", "/app/entrypoint.py"]'
    assert any("PYTHONUNBUFFERED=1" in line for line in lines)
    install = " ".join(line for line in lines if "apt-get install" in line)
    for package in ("docker-cli", "docker-buildx", "docker-compose"):
        assert f" {package}" in install
    assert any("pip install --no-deps -r /src/requirements.lock" in line for line in lines)


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    entries = (ROOT / ".dockerignore").read_text().split()
    assert entries[entries.index("*"):] == [
        "*", "!Dockerfile", "!README.md", "!entrypoint.py", "!pyproject.toml",
        "!requirements.lock", "!deploykit/", "!ca-certificates/", "**/__pycache__",
        "**/*.pyc"]


def test_the_release_rewrite_finds_exactly_one_image_line() -> None:
    # release.yml replaces `  image: Dockerfile` (and fails unless there is exactly one).
    action = (ROOT / "action.yml").read_text()
    assert re.findall(r"(?m)^  image: Dockerfile$", action) == ["  image: Dockerfile"]
    assert "grep -c '^  image: Dockerfile$' action.yml" in (
        ROOT / ".github/workflows/release.yml").read_text()


# What release.yml's build job outputs as `image` (registry/repo@sha256:<digest>).
RELEASE_DIGEST = "sha256:" + "3b" * 32
RELEASE_IMAGE = f"ghcr.io/deploykit-org/deploykit@{RELEASE_DIGEST}"
RELEASE_STEPS = ("Point action.yml at the published image, by digest",
                 "Commit to releases/vX, pin the reusable workflows to it, tag vX.Y.Z")


def release_step(name: str) -> str:
    (step,) = [s for s in jobs(ROOT / ".github/workflows/release.yml")["action"]["steps"]
               if s.get("name") == name]
    script: str = step["run"]
    return script


def git(repo: Path, *argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def run_release_commit_steps(repo: Path, image: str = RELEASE_IMAGE,
                             version: str = "1.2.3") -> subprocess.CompletedProcess[str]:
    """Run release.yml's own rewrite and commit steps in a git checkout of this project's
    action.yml and reusable workflows (everything the action job does before it pushes)."""
    for name in ("action.yml", ".github/workflows/build-push.yml",
                 ".github/workflows/deploy.yml", "CHANGELOG.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1",
           "GITHUB_REPOSITORY": "deploykit-org/deploykit", "VERSION": version,
           "MINOR": "v" + version.rsplit(".", 1)[0], "MAJOR": "v" + version.partition(".")[0],
           "MOVE_MINOR": "true", "MOVE_MAJOR": "true", "IMAGE": image}
    git(repo, "init", "-q", "--initial-branch", "release")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "main")
    script = "\n".join(release_step(name) for name in RELEASE_STEPS)
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)


def test_a_release_pins_the_image_by_digest_and_the_reusable_workflows_by_sha(
        tmp_path: Path) -> None:
    result = run_release_commit_steps(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tagged = git(tmp_path, "rev-parse", "v1.2.3^{commit}")
    action_commit = git(tmp_path, "rev-parse", "v1.2.3^{commit}~1")
    assert git(tmp_path, "rev-parse", "v1.2^{commit}", "v1^{commit}",
               "releases/v1").split() == [tagged] * 3

    # action.yml at the tag (and at the commit the workflows name) runs the image by digest
    action_at_tag = git(tmp_path, "show", "v1.2.3:action.yml")
    assert action_at_tag == git(tmp_path, "show", f"{action_commit}:action.yml")
    assert re.findall(r"(?m)^  image: .*$", action_at_tag) == [
        f"  image: docker://{RELEASE_IMAGE} # v1.2.3"]
    assert yaml.safe_load(action_at_tag)["runs"]["image"] == f"docker://{RELEASE_IMAGE}"
    assert action_at_tag.replace(f"docker://{RELEASE_IMAGE} # v1.2.3", "Dockerfile") == (
        ROOT / "action.yml").read_text().rstrip("\n")

    # the released reusable workflows call the action by that commit's SHA, nothing else moved
    for name in REUSABLE:
        released = git(tmp_path, "show", f"v1.2.3:.github/workflows/{name}")
        (step,) = [s for job in yaml.safe_load(released)["jobs"].values()
                   for s in job["steps"] if "deploykit@" in s.get("uses", "")]
        assert step["uses"] == f"deploykit-org/deploykit@{action_commit}"
        assert SHA_PINNED.match(step["uses"])
        main = (ROOT / ".github/workflows" / name).read_text()
        assert released == main.replace(f"uses: {ACTION}",
                                        f"uses: deploykit-org/deploykit@{action_commit} # v1.2.3"
                                        ).rstrip("\n")
    assert git(tmp_path, "log", "--format=%s", "-2", "v1.2.3").splitlines() == [
        f"Release v1.2.3: the reusable workflows call the action at {action_commit}",
        f"Release v1.2.3: action.yml runs {RELEASE_IMAGE}"]


@pytest.mark.parametrize("image", ["ghcr.io/deploykit-org/deploykit:v1.2.3",
                                   "ghcr.io/deploykit-org/deploykit@sha256:abc", ""])
def test_a_release_refuses_an_image_that_is_not_pinned_by_digest(
        tmp_path: Path, image: str) -> None:
    result = run_release_commit_steps(tmp_path, image=image)
    assert result.returncode == 1
    assert "::error title=Unexpected image::" in result.stdout
    assert git(tmp_path, "tag") == ""
    assert git(tmp_path, "status", "--porcelain") == ""


def test_build_push_runs_one_build_per_repository_and_branch_without_cancelling() -> None:
    job = reusable("build-push.yml")["jobs"]["build-push"]
    group = job["concurrency"]["group"]
    assert group.startswith("build-push-${{ github.repository }}-${{ ")
    assert "github.ref" in group and "'staging'" in group  # pre-release and test-* share one
    assert job["concurrency"]["cancel-in-progress"] is False
