"""Build & Push against the real engine and the htpasswd registry (127.0.0.1:5001).

Each test uses a fresh repository. Digests are checked with plain ``requests``
and Basic auth, independently of deploykit's own RegistryClient.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, remove_local_images

INDEX_ACCEPT = ("application/vnd.oci.image.index.v1+json,"
                "application/vnd.docker.distribution.manifest.list.v2+json,"
                "application/vnd.oci.image.manifest.v1+json,"
                "application/vnd.docker.distribution.manifest.v2+json")
BUILD_GROUP = "::group::Build and push"


@dataclass
class BuildRun:
    code: int
    outputs: dict[str, str]
    log: str


def sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


@pytest.fixture
def run_build(
    auth_registry: TestRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BuildRun]]:
    """Factory: ``run_build(context, repo, ref=..., sha=...)`` runs ``deploykit build``.

    The docker driver keeps pushed images in the engine's store: removed afterwards.
    """
    repos: set[str] = set()

    def factory(context: str, repo: str, *, ref: str, commit: str, **inputs: str) -> BuildRun:
        files = tmp_path_factory.mktemp("gh")
        env = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(files / "output"),
            "GITHUB_STEP_SUMMARY": str(files / "summary"),
            "GITHUB_EVENT_NAME": "push", "GITHUB_REF": ref, "GITHUB_SHA": commit,
            "GITHUB_REPOSITORY": "deploykit/it-app", "GITHUB_ACTOR": "it",
            "GITHUB_WORKSPACE": context,
            "INPUT_REGISTRY": auth_registry.host, "INPUT_IMAGE_REPO": repo,
            "INPUT_REGISTRY_USERNAME": auth_registry.username,
            "INPUT_REGISTRY_PASSWORD": auth_registry.password,
            "INPUT_PLATFORMS": "linux/amd64,linux/arm64",
        }
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        repos.add(f"{auth_registry.host}/{repo}")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["build"], env=env)
        output_file = files / "output"
        outputs = parse_github_output(output_file.read_text()) if output_file.exists() else {}
        log = out.getvalue() + err.getvalue()
        assert_password_only_masked(log, auth_registry.password)
        return BuildRun(code, outputs, log)

    yield factory
    for repo in repos:
        remove_local_images(repo)


def assert_password_only_masked(log: str, password: str) -> None:
    leaks = [line for line in log.splitlines()
             if password in line and not line.startswith("::add-mask::")]
    assert leaks == []
    assert f"::add-mask::{password}" in log


class Registry:
    """Plain HTTP reads of the htpasswd registry."""

    def __init__(self, registry: TestRegistry, repo: str) -> None:
        self.base = f"http://{registry.host}/v2/{repo}"
        self.auth = (registry.username, registry.password)

    def digest(self, tag: str) -> str:
        response = requests.head(f"{self.base}/manifests/{tag}", auth=self.auth, timeout=10,
                                 headers={"Accept": INDEX_ACCEPT})
        assert response.status_code == 200, (tag, response.status_code)
        return response.headers["Docker-Content-Digest"]

    def platforms(self, reference: str) -> dict[str, str]:
        response = requests.get(f"{self.base}/manifests/{reference}", auth=self.auth,
                                timeout=10, headers={"Accept": INDEX_ACCEPT})
        response.raise_for_status()
        return {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
                for m in response.json()["manifests"]}

    def media_type(self, reference: str) -> str:
        response = requests.head(f"{self.base}/manifests/{reference}", auth=self.auth,
                                 timeout=10, headers={"Accept": INDEX_ACCEPT})
        return response.headers["Content-Type"]

    def labels(self, index_digest: str) -> dict[str, str]:
        """The config labels of the index's first image, read straight from the registry."""
        image = self.platforms(index_digest)["linux/amd64"]
        manifest = requests.get(f"{self.base}/manifests/{image}", auth=self.auth, timeout=10,
                                headers={"Accept": INDEX_ACCEPT})
        manifest.raise_for_status()
        config = requests.get(f"{self.base}/blobs/{manifest.json()['config']['digest']}",
                              auth=self.auth, timeout=10)
        config.raise_for_status()
        return dict(config.json()["config"]["Labels"])

    def tags(self) -> list[str]:
        response = requests.get(f"{self.base}/tags/list", auth=self.auth, timeout=10)
        response.raise_for_status()
        return sorted(response.json()["tags"])


def test_two_platform_release_is_pushed_verified_and_rerun_skipped(
    run_build: Callable[..., BuildRun], make_app_context: Callable[..., str],
    auth_registry: TestRegistry,
) -> None:
    repo = auth_registry.repo("build")
    registry = Registry(auth_registry, repo)
    context, commit = make_app_context(body="release one"), sha()

    first = run_build(context, repo, ref="refs/tags/v1.2.3", commit=commit)

    assert first.code == 0, first.log
    digest = first.outputs["digest"]
    assert first.outputs["status"] == "built"
    assert first.outputs["tags"] == "v1.2.3\nlatest"
    assert first.outputs["version"] == "v1.2.3"
    assert first.outputs["image"] == f"{auth_registry.host}/{repo}@{digest}"
    assert registry.digest("v1.2.3") == digest
    assert registry.digest("latest") == digest
    index = registry.platforms(digest)
    assert sorted(index) == ["linux/amd64", "linux/arm64"]
    assert json.loads(first.outputs["platforms"]) == index
    image = f"{auth_registry.host}/{repo}"
    assert first.outputs["images"] == f"{image}:v1.2.3\n{image}:latest"
    labels = registry.labels(digest)
    assert labels["org.opencontainers.image.revision"] == commit
    assert json.loads(first.outputs["metadata"]) == {
        "image": image, "digest": digest, "platforms": index, "labels": labels,
        "status": "built", "tags": [{"tag": "v1.2.3", "reference": f"{image}:v1.2.3"},
                                    {"tag": "latest", "reference": f"{image}:latest"}]}
    assert BUILD_GROUP in first.log
    assert registry.tags() == ["buildcache", "latest", "v1.2.3"]
    # The first build has no registry cache to import: one calm line, no buildx ERROR line.
    assert f"No build cache yet at {auth_registry.host}/{repo}:buildcache: this first build " \
        "fills it." in first.log.splitlines()
    assert [line for line in first.log.splitlines() if "ERROR" in line] == []

    again = run_build(context, repo, ref="refs/tags/v1.2.3", commit=commit)

    assert again.code == 0, again.log
    assert again.outputs["status"] == "skipped"
    assert again.outputs["digest"] == digest
    assert BUILD_GROUP not in again.log
    # Nothing is built: only the builder probe's read-only `docker buildx inspect` ran.
    assert "$ docker buildx build" not in again.log
    assert "$ docker buildx create" not in again.log
    assert registry.tags() == ["buildcache", "latest", "v1.2.3"]
    assert (registry.digest("v1.2.3"), registry.digest("latest")) == (digest, digest)


def test_changed_context_under_a_published_version_is_refused(
    run_build: Callable[..., BuildRun], make_app_context: Callable[..., str],
    auth_registry: TestRegistry,
) -> None:
    repo = auth_registry.repo("build")
    registry = Registry(auth_registry, repo)
    first = run_build(make_app_context(body="one"), repo, ref="refs/tags/v2.0.0",
                      commit=sha(), cache="none")
    assert first.code == 0, first.log
    old = first.outputs["digest"]

    changed = run_build(make_app_context(body="two"), repo, ref="refs/tags/v2.0.0",
                        commit=sha(), cache="none")

    assert changed.code == 1
    assert f"Tag {auth_registry.host}/{repo}:v2.0.0 is already published at {old}" \
        in changed.log
    assert changed.outputs.get("status") is None
    assert BUILD_GROUP not in changed.log
    assert registry.digest("v2.0.0") == old
    assert registry.digest("latest") == old


def test_pre_release_branch_publishes_the_three_staging_tags(
    run_build: Callable[..., BuildRun], make_app_context: Callable[..., str],
    auth_registry: TestRegistry,
) -> None:
    repo = auth_registry.repo("build")
    registry = Registry(auth_registry, repo)
    commit = sha()

    staged = run_build(make_app_context(body="staging"), repo, ref="refs/heads/pre-release",
                       commit=commit, platforms="linux/arm64", cache="none")

    assert staged.code == 0, staged.log
    digest = staged.outputs["digest"]
    tags = staged.outputs["tags"].splitlines()
    assert tags[0] == "staging-latest" and tags[2] == f"sha-{commit[:7]}"
    assert tags[1].startswith("test-") and tags[1].endswith("-1")
    assert [registry.digest(tag) for tag in tags] == [digest] * 3
    assert registry.media_type(digest) in ("application/vnd.oci.image.manifest.v1+json",
                                           "application/vnd.docker.distribution.manifest.v2+json")
    assert staged.outputs["version"] == ""


def test_feature_branch_is_validated_and_pushes_nothing(
    run_build: Callable[..., BuildRun], make_app_context: Callable[..., str],
    auth_registry: TestRegistry,
) -> None:
    repo = auth_registry.repo("build")

    checked = run_build(make_app_context(body="feature"), repo, ref="refs/heads/feature/x",
                        commit=sha())

    assert checked.code == 0, checked.log
    assert (checked.outputs["status"], checked.outputs["digest"]) == ("validated", "")
    assert "::group::Validation build (no push) of" in checked.log
    assert requests.get(f"http://{auth_registry.host}/v2/{repo}/tags/list",
                        auth=(auth_registry.username, auth_registry.password),
                        timeout=10).status_code == 404


def test_failing_run_step_exits_1_with_the_step_output(
    run_build: Callable[..., BuildRun], make_app_context: Callable[..., str],
    auth_registry: TestRegistry,
) -> None:
    repo = auth_registry.repo("build")
    context = make_app_context(extra_run="echo boom-marker && false")

    failed = run_build(context, repo, ref="refs/heads/pre-release", commit=sha(),
                       cache="none")

    assert failed.code == 1
    errors = [line for line in failed.log.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert "boom-marker" in errors[0]
    assert "docker buildx build failed (exit 1)" in errors[0]
    assert "Traceback" not in failed.log
    assert requests.get(f"http://{auth_registry.host}/v2/{repo}/tags/list",
                        auth=(auth_registry.username, auth_registry.password),
                        timeout=10).status_code == 404


def test_build_args_secrets_target_and_oci_labels(
    auth_registry: TestRegistry, base_image: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A build secret reaches `RUN --mount=type=secret` and nothing else; `target`
    stops before a broken stage; build args and OCI labels land in the image."""
    secret = "s3cret-build-token-" + uuid.uuid4().hex[:8]
    secret_hash = hashlib.sha256(secret.encode()).hexdigest()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("\n".join([
        f"FROM {base_image} AS app",
        "ARG GREETING",
        # Only the secret's hash is in the Dockerfile, so the image can only hold it by leaking.
        "RUN --mount=type=secret,id=token "
        f'test "$(sha256sum < /run/secrets/token | cut -d" " -f1)" = "{secret_hash}"',
        "LABEL greeting=$GREETING",
        "FROM app AS broken",
        "RUN false", ""]))
    repo, commit = auth_registry.repo("build"), sha()
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "GITHUB_EVENT_NAME": "push",
        "GITHUB_REF": "refs/tags/v4.5.6", "GITHUB_SHA": commit,
        "GITHUB_REPOSITORY": "deploykit/it-app", "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_WORKSPACE": str(tmp_path), "DK_BUILD_TOKEN": secret,
        "INPUT_REGISTRY": auth_registry.host, "INPUT_IMAGE_REPO": repo,
        "INPUT_REGISTRY_USERNAME": auth_registry.username,
        "INPUT_REGISTRY_PASSWORD": auth_registry.password, "INPUT_PLATFORMS": "linux/amd64",
        "INPUT_CONTEXT": "ctx", "INPUT_TARGET": "app", "INPUT_CACHE": "none",
        "INPUT_BUILD_ARGS": "GREETING=hello from a build arg",
        "INPUT_BUILD_SECRETS": "token=DK_BUILD_TOKEN",
    }
    try:
        code = main(["build"], env=env)
        log = capsys.readouterr().out
        assert code == 0, log
        outputs = parse_github_output((tmp_path / "output").read_text())
        assert outputs["status"] == "built"
        registry = Registry(auth_registry, repo)
        manifest = requests.get(f"{registry.base}/manifests/{outputs['digest']}",
                                auth=registry.auth, timeout=10, headers={"Accept": INDEX_ACCEPT})
        config_digest = manifest.json()["config"]["digest"]
        config = requests.get(f"{registry.base}/blobs/{config_digest}", auth=registry.auth,
                              timeout=10).text
        labels = json.loads(config)["config"]["Labels"]
        assert labels["greeting"] == "hello from a build arg"
        assert labels["org.opencontainers.image.revision"] == commit
        assert labels["org.opencontainers.image.version"] == "v4.5.6"
        assert labels["org.opencontainers.image.source"] == "https://github.com/deploykit/it-app"
        assert secret not in config
        assert [line for line in log.splitlines() if secret in line] == [
            f"::add-mask::{secret}"]
        assert secret not in (tmp_path / "summary").read_text()
    finally:
        remove_local_images(f"{auth_registry.host}/{repo}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_cancelled_build_stops_buildx_and_says_so(
    make_app_context: Callable[..., str], auth_registry: TestRegistry, tmp_path: Path,
    signum: signal.Signals,
) -> None:
    """GitHub cancels with SIGINT, then SIGTERM: buildx runs in its own session, which
    the signal does not reach, so deploykit must stop it; nothing is left running."""
    repo = auth_registry.repo("build")
    marker = uuid.uuid4().hex
    context = make_app_context(extra_run=f"echo {marker} && sleep 60")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))},
           "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "GITHUB_EVENT_NAME": "push",
           "GITHUB_REF": "refs/heads/pre-release", "GITHUB_SHA": sha(),
           "GITHUB_REPOSITORY": "deploykit/it-app", "GITHUB_ACTOR": "it",
           "GITHUB_WORKSPACE": context, "INPUT_REGISTRY": auth_registry.host,
           "INPUT_IMAGE_REPO": repo, "INPUT_REGISTRY_USERNAME": auth_registry.username,
           "INPUT_REGISTRY_PASSWORD": auth_registry.password, "INPUT_CACHE": "none",
           "INPUT_PLATFORMS": "linux/amd64"}
    process = subprocess.Popen([sys.executable, "-m", "deploykit", "build"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # until the RUN step runs (its echo)
        lines.append(line)
        if marker in line and "echo" not in line:
            break
    process.send_signal(signum)
    try:
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    log = "".join(lines) + rest
    assert process.returncode == 1, log
    name = signal.Signals(signum).name
    assert f"::error title=Build cancelled::Cancelled ({name}): the build was stopped" in log
    assert "Traceback" not in log
    left = subprocess.run(["pgrep", "-f", context], capture_output=True, text=True,
                          check=False).stdout.split()
    assert left == [], log  # no buildx child of this build outlives it
