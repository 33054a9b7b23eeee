"""The bad input table: every case through ``python entrypoint.py`` against a running project.

One compose project is deployed once per module (by deploykit itself). Each bad input
then runs the action's entry point with ``INPUT_*`` variables, as the runner does, and
must end with exit code 1, exactly one ``::error`` line, no traceback, and the host as
it was: the same containers, the same history file bytes, no new network, volume or
lock (issue 11, findings 5 and 7).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import TestRegistry, docker_push, remove_local_images

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    command: ["sleep", "3600"]
    init: true
"""
DIGEST_ZERO = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Case:
    id: str
    inputs: dict[str, str]
    title: str  # the ::error's title, e.g. "Invalid input%3A health_timeout"
    mode: str = "deploy"
    env: dict[str, str] = field(default_factory=dict)


def bad(name: str, value: str, case_id: str, mode: str = "deploy", **inputs: str) -> Case:
    """A case whose error names the input ``name``."""
    return Case(case_id, {name: value, **inputs}, f"Invalid input%3A {name}", mode)


LONG = "9" * 5000
CASES = [
    # numbers: ASCII digits only, within bounds, never a traceback
    bad("health_timeout", "10s", "number-with-unit"),
    bad("health_timeout", "\u0661\u0662", "number-arabic-indic-digits"),
    bad("health_timeout", "\uff11\uff12", "number-fullwidth-digits"),
    bad("lock_timeout", "\u00b2", "number-superscript-two"),
    bad("health_timeout", "0", "number-health-timeout-zero"),
    bad("health_timeout", "86401", "number-health-timeout-over-a-day"),
    bad("health_timeout", LONG, "number-5000-digits"),
    bad("lock_timeout", "1" + "0" * 30, "number-lock-timeout-1e30"),
    bad("health_settle", "-1", "number-negative"),
    bad("health_settle", "3601", "number-settle-over-an-hour"),
    bad("smoke_status", "999", "number-status-999"),
    bad("smoke_status", "2OO", "number-letter-o"),
    bad("smoke_timeout", "1e3", "number-exponent"),
    bad("smoke_timeout", "12.5", "number-decimal"),
    bad("smoke_timeout", "0x10", "number-hex"),
    # booleans and choices
    bad("dry_run", "yes", "bool-yes"),
    bad("force_redeploy", "True", "bool-capitalised"),
    bad("rollback_on_failure", "1", "bool-one"),
    bad("dry_run", "true\n::stop-commands::pwned", "bool-with-injection"),
    bad("provenance", "on", "bool-build-provenance", mode="build"),
    bad("skip_build_if_image_present", "no", "bool-build-skip", mode="build"),
    bad("mode", "bogus", "choice-mode-bogus", mode="bogus"),
    bad("mode", "Deploy", "choice-mode-capitalised", mode="Deploy"),
    bad("cache", "s3", "choice-cache", mode="build"),
    bad("latest", "maybe", "choice-latest", mode="build"),
    bad("github_records", "sometimes", "choice-github-records"),
    # names
    bad("environment", "staging\n::stop-commands::pwned", "environment-stop-commands"),
    bad("environment", "staging\r::add-mask::x", "environment-add-mask"),
    bad("environment", "staging\n::error::forged", "environment-forged-error"),
    bad("environment", "prod|x", "environment-pipe"),
    bad("environment", "<img src=x>", "environment-html"),
    bad("environment", "a" * 101, "environment-overlong"),
    bad("environment", "st\u0430ging", "environment-cyrillic-a"),
    bad("environment", "", "environment-empty"),
    bad("production_environments", "production,pr od", "production-environments-space"),
    bad("project_name", "p" * 300, "project-name-300-chars"),
    bad("project_name", "p" * 64, "project-name-64-chars"),
    bad("project_name", "Shop", "project-name-upper-case"),
    bad("project_name", "_shop", "project-name-underscore-first"),
    bad("project_name", "shop.staging", "project-name-dot"),
    bad("project_name", "shop\n::error::x", "project-name-injection"),
    # registries and repositories
    bad("registry", "https://127.0.0.1:5000", "registry-https-scheme"),
    bad("registry", "http://127.0.0.1:5000/", "registry-http-scheme"),
    bad("registry", "127.0.0.1:5000/path", "registry-with-path"),
    bad("registry", "127.0.0.1:99999", "registry-port-out-of-range"),
    bad("registry", "[::1", "registry-ipv6-unclosed"),
    bad("registry", "ghcr io", "registry-space"),
    bad("image_repo", "Org/App", "repo-upper-case"),
    bad("image_repo", "org//app", "repo-empty-component"),
    bad("image_repo", "org/app:v1", "repo-with-tag"),
    bad("image_repo", "org/" + "x" * 300, "repo-overlong"),
    # image tags, references and the production gate
    Case("tag-latest-to-production", {"environment": "production", "image_tag": "latest"},
         "Refused by policy"),
    Case("tag-test-to-production", {"environment": "production", "image_tag": "test-1"},
         "Refused by policy"),
    bad("image_tag", "v1@sha256:zz", "tag-bad-digest"),
    bad("image_tag", "127.0.0.1:5000/org/app:v1", "tag-full-reference"),
    bad("image_tag", "v1\n::error::forged", "tag-injection"),
    bad("image_tag", "-v1", "tag-leading-dash"),
    Case("tag-unknown", {"image_tag": "does-not-exist"}, "Image not found"),
    Case("digest-unknown", {"image_tag": DIGEST_ZERO}, "Image not found"),
    # URLs
    bad("smoke_url", "file:///etc/passwd", "smoke-url-file"),
    bad("smoke_url", "ftp://example.com/", "smoke-url-ftp"),
    bad("smoke_url", "example.com/health", "smoke-url-no-scheme"),
    bad("smoke_url", "http://", "smoke-url-no-host"),
    bad("smoke_url", "javascript:alert(1)", "smoke-url-javascript"),
    bad("smoke_url", "http://127.0.0.1:99999/", "smoke-url-port-out-of-range"),
    bad("smoke_url", "http://127.0.0.1/\nfile:///etc/passwd", "smoke-url-second-line"),
    bad("environment_url", "file:///x", "environment-url-file"),
    bad("environment_url", "https://ops:s3cret-pw@shop.example.com/", "environment-url-login"),
    # paths: inside the workspace in Actions, and existing
    bad("project_dir", "/etc", "project-dir-absolute-outside"),
    bad("project_dir", "..", "project-dir-parent"),
    bad("compose_file", "../../etc/compose.yaml", "compose-file-parent"),
    bad("compose_file", "/etc/hostname", "compose-file-absolute-outside"),
    bad("project_dir", "does-not-exist", "project-dir-missing"),
    bad("compose_file", "missing.yaml", "compose-file-missing"),
    bad("context", "/etc", "build-context-outside", mode="build"),
    bad("dockerfile", "../../Dockerfile", "build-dockerfile-outside", mode="build"),
    # pairs, lists, build inputs
    bad("compose_env", "not a pair", "compose-env-not-key-value"),
    bad("compose_env", "IMAGE_TAG=latest", "compose-env-image-variable"),
    bad("platforms", "amd64", "platforms-no-os", mode="build"),
    bad("platforms", "linux/amd64;linux/arm64", "platforms-semicolon", mode="build"),
    bad("build_args", "NOEQUALS", "build-args-no-equals", mode="build"),
    bad("build_secrets", "bad id=X", "build-secrets-space", mode="build"),
    Case("source-date-epoch-superscript", {}, "Invalid input%3A SOURCE_DATE_EPOCH", "build",
         {"SOURCE_DATE_EPOCH": "\u00b2"}),
    # rollback mode
    Case("rollback-latest-to-production", {"environment": "production",
                                           "image_tag": "latest"}, "Refused by policy",
         "rollback"),
    bad("environment", "staging\n::stop-commands::pwned", "rollback-environment-injection",
        mode="rollback"),
    bad("lock_timeout", "\u0661", "rollback-non-ascii-digit", mode="rollback"),
    # issue 20: inputs that did something else than they said
    # the runner exports the declared default beside the kebab spelling: it won (a real deploy)
    Case("kebab-dry-run-is-refused", {"dry-run": "true"}, "Invalid input%3A dry_run",
         env={"INPUT_DRY_RUN": "false"}),
    Case("kebab-force-redeploy", {"force-redeploy": "true"}, "Invalid input%3A force_redeploy",
         env={"INPUT_FORCE_REDEPLOY": "false"}),
    bad("health_settle", "31", "settle-above-timeout"),  # the table's health_timeout is 30
    bad("compose_env", "DOCKER_HOST=tcp://127.0.0.1:9", "compose-env-docker-host"),
    bad("compose_env", "COMPOSE_PROJECT_NAME=other", "compose-env-compose-project-name"),
    bad("compose_env", "A=" + "x" * 100_000, "compose-env-100-kb"),
    bad("smoke_contains", "x" * 5000, "smoke-contains-5000-chars"),
    bad("project_dir", "a/" * 3000, "project-dir-6000-chars"),
    bad("registry_password", "p" * 70_000, "registry-password-70-kb"),
    # issue 23: every problem at once, in one ::error
    Case("several-bad-inputs", {"health_timeout": "0", "environment": "",
                                "smoke_url": "ftp://x/"},
         "Invalid inputs%3A health_timeout%2C smoke_url%2C environment"),
]


@dataclass(frozen=True)
class Project:
    name: str
    directory: Path
    state: Path
    registry: str
    repo: str

    def env(self, mode: str, inputs: dict[str, str], extra: dict[str, str],
            output: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_", "SOURCE_DATE_EPOCH"))}
        env.update({
            "GITHUB_WORKSPACE": str(self.directory), "GITHUB_REPOSITORY": "org/app",
            "GITHUB_ACTOR": "tester", "GITHUB_RUN_ID": "1", "GITHUB_OUTPUT": str(output),
            "INPUT_MODE": mode, "INPUT_REGISTRY": self.registry, "INPUT_IMAGE_REPO": self.repo,
            "INPUT_PROJECT_NAME": self.name, "INPUT_ENVIRONMENT": "staging",
            "INPUT_IMAGE_TAG": "v1", "INPUT_STATE_DIR": str(self.state),
            "INPUT_HEALTH_SETTLE": "1", "INPUT_HEALTH_TIMEOUT": "30",
            "INPUT_SMOKE_TIMEOUT": "5", "INPUT_LOCK_TIMEOUT": "10",
            "INPUT_PLATFORMS": "linux/amd64", "INPUT_CACHE": "none",
        })
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        env.update(extra)
        return env


def run_entrypoint(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def host_state(project: Project, *names: str) -> dict[str, object]:
    """What a bad input must not change: containers, history, networks, volumes, locks.

    Read through the engine API (milliseconds), not the docker CLI (a process each).
    """
    api = docker.APIClient(timeout=60)
    state: dict[str, object] = {"history": (project.state / "history.jsonl").read_bytes()}
    networks = [network["Name"] for network in api.networks()]
    for name in {project.name, *names}:
        label = {"label": f"com.docker.compose.project={name}"}
        state[f"containers {name[:70]}"] = sorted(
            (c["Id"], c["State"], c["Image"], *c["Names"])
            for c in api.containers(all=True, filters=label))
        state[f"networks {name[:70]}"] = sorted(n for n in networks if name in n)
        state[f"volumes {name[:70]}"] = sorted(
            v["Name"] for v in api.volumes(filters=label).get("Volumes") or [])
    api.close()
    return state


def remove_project(name: str, directory: Path, env: dict[str, str]) -> None:
    subprocess.run(["docker", "compose", "-p", name, "down", "-v", "--remove-orphans",
                    "-t", "0"], cwd=directory, env=env, capture_output=True, timeout=120,
                   check=False)
    subprocess.run(["docker", "network", "rm", f"deploykit-lock-{name}"],
                   capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def project(open_registry: TestRegistry, base_image: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A project deployed by deploykit (v1 = the busybox base), running, with a history."""
    repo = open_registry.repo("badinput")
    subprocess.run(["docker", "buildx", "imagetools", "create", "-t",
                    f"{open_registry.host}/{repo}:v1", base_image],
                   check=True, capture_output=True, timeout=120)
    directory = tmp_path_factory.mktemp("workspace")
    (directory / "compose.yaml").write_text(COMPOSE)
    running = Project(f"badinput-{uuid.uuid4().hex[:10]}", directory,
                      tmp_path_factory.mktemp("state"), open_registry.host, repo)
    env = running.env("deploy", {}, {}, directory / "deploy-output")
    try:
        result = run_entrypoint(env, directory)
        assert result.returncode == 0, result.stdout + result.stderr
        assert host_state(running)[f"containers {running.name}"]
        yield running
    finally:
        remove_project(running.name, directory, {**env, "IMAGE_REGISTRY": running.registry,
                                                 "IMAGE_REPO": repo, "IMAGE_TAG": "v1"})
        remove_local_images(f"{open_registry.host}/{repo}")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly_and_changes_nothing(project: Project, case: Case,
                                                    tmp_path: Path) -> None:
    others = (case.inputs["project_name"],) if "project_name" in case.inputs else ()
    before = host_state(project, *others)
    output = tmp_path / "github_output"
    env = project.env(case.mode, case.inputs, case.env, output)
    try:
        result = run_entrypoint(env, project.directory)
        after = host_state(project, *others)
    finally:
        for name in others:  # a bug could have created that project: remove what it made
            if before != host_state(project, name):
                remove_project(name, project.directory, env)
    printed = result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert "Traceback" not in printed
    assert result.returncode == 1, printed
    assert len(errors) == 1, printed
    assert errors[0].startswith(f"::error title={case.title}::"), errors[0]
    assert after == before


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


def test_a_good_input_still_deploys(project: Project, tmp_path: Path) -> None:
    """The table's baseline is sane: the same inputs without the bad one succeed."""
    result = run_entrypoint(project.env("deploy", {}, {}, tmp_path / "out"),
                            project.directory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status<<" in (tmp_path / "out").read_text()


# An ENTRYPOINT, since the compose file's `command:` replaces any CMD.
HOSTILE_ENTRYPOINT = ('ENTRYPOINT ["sh", "-c", "echo ::stop-commands::pwned; '
                      'echo ::add-mask::deploykit; echo ::error title=forged::forged error; '
                      "echo 'hello ##[warning]legacy'; exit 3\"]")


def outside_stop_blocks(stdout: str) -> tuple[list[str], list[str]]:
    """(lines the runner would read as commands, lines inside stop-commands blocks)."""
    outside: list[str] = []
    inside: list[str] = []
    token = ""
    for line in stdout.splitlines():
        if token:
            if line == f"::{token}::":
                token = ""
            else:
                inside.append(line)
        elif line.startswith("::stop-commands::"):
            token = line.removeprefix("::stop-commands::")
            assert token.startswith("deploykit-") and len(token) == len("deploykit-") + 32
        else:
            outside.append(line)
    assert not token, "a stop-commands block was never closed"
    return outside, inside


def test_hostile_container_output_never_drives_the_runner(
        project: Project, base_image: str, tmp_path: Path) -> None:
    """Finding 5: a failing image printing workflow commands; they stay text. Runs last: the
    failed deploy rolls back (the table above needs the host untouched)."""
    context = tmp_path / "hostile"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base_image}\n{HOSTILE_ENTRYPOINT}\n")
    docker_push("buildx", "build", "--platform", "linux/amd64", "--push", "--provenance=false",
                "-t", f"{project.registry}/{project.repo}:hostile", str(context))
    result = run_entrypoint(project.env("deploy", {"image_tag": "hostile"}, {},
                                        tmp_path / "out"), project.directory)
    assert result.returncode == 1, result.stdout + result.stderr
    outside, inside = outside_stop_blocks(result.stdout)
    assert "::stop-commands::pwned" in inside
    assert "::add-mask::deploykit" in inside
    assert "::error title=forged::forged error" in inside
    assert "hello ##[warning]legacy" in inside
    assert not [line for line in outside if "##[" in line or line.startswith(
        ("::add-mask::", "::stop-commands::"))]
    errors = [line for line in outside if line.startswith("::error")]
    assert len(errors) == 1
    assert errors[0].startswith("::error title=Deploy failed and was rolled back::")


def test_a_project_dir_linked_out_of_the_workspace_changes_nothing(
        project: Project, tmp_path: Path) -> None:
    """Issue 20: `project_dir` through a symbolic link leaving the workspace deployed from
    outside it (the check was lexical). The link's target is a valid project: only the
    real path is wrong."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "compose.yaml").write_text(COMPOSE)
    link = project.directory / f"linked-{uuid.uuid4().hex[:8]}"
    link.symlink_to(outside)
    before = host_state(project)
    try:
        result = run_entrypoint(project.env("deploy", {"project_dir": link.name,
                                                       "force_redeploy": "true"}, {},
                                            tmp_path / "out"), project.directory)
        after = host_state(project)
    finally:
        link.unlink()
    printed = result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert result.returncode == 1, printed
    assert len(errors) == 1, printed
    assert errors[0].startswith("::error title=Invalid input%3A project_dir::Input "
                                f"'project_dir': '{link.name}' leads to {outside}, outside the "
                                "workspace"), errors[0]
    assert after == before
