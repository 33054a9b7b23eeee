"""Registry auth as GHCR and Docker Hub do it, against the test bed's token registry
(distribution ``auth: token`` + its token service, see tests/integration/tokenbed.py), and
connection failures that fail fast (issue 23).

Each test uses a fresh repository; the token service's log and the registry's own log
tell which tokens deploykit asked for and which requests the registry refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from deploykit.cli import main
from deploykit.registry import RegistryClient
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, free_port, remove_local_images
from tests.integration.tokenbed import (  # noqa: F401  (the fixtures token_bed, faulty_proxy)
    FaultyProxy,
    TokenBed,
    faulty_proxy_fixture,
    token_bed_fixture,
)

ROOT = Path(__file__).resolve().parents[2]
PUSH = "pull,push"


@dataclass
class Run:
    code: int
    outputs: dict[str, str]
    log: str


def sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


@pytest.fixture
def run_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Run]]:
    """``run_build(registry, repo, user, password, context, ref=...)``: ``deploykit build``
    in this process, as test_build.py runs it; the engine's copies are removed after."""
    images: set[str] = set()

    def factory(registry: str, repo: str, user: str, password: str, context: str, *,
                ref: str, commit: str = "", **inputs: str) -> Run:
        files = tmp_path_factory.mktemp("gh")
        env = {
            "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(files / "output"),
            "GITHUB_STEP_SUMMARY": str(files / "summary"), "GITHUB_EVENT_NAME": "push",
            "GITHUB_REF": ref, "GITHUB_SHA": commit or sha(),
            "GITHUB_REPOSITORY": "deploykit/it-app", "GITHUB_ACTOR": "it",
            "GITHUB_WORKSPACE": context, "INPUT_REGISTRY": registry, "INPUT_IMAGE_REPO": repo,
            "INPUT_REGISTRY_USERNAME": user, "INPUT_REGISTRY_PASSWORD": password,
            "INPUT_PLATFORMS": "linux/amd64,linux/arm64",
        }
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        images.add(f"{registry}/{repo}")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["build"], env=env)
        output = files / "output"
        outputs = parse_github_output(output.read_text()) if output.exists() else {}
        return Run(code, outputs, out.getvalue() + err.getvalue())

    yield factory
    for image in images:
        remove_local_images(image)


def cli(*args: str, timeout: float = 120,
        **inputs: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m deploykit ARGS`` as a user runs it (no GitHub environment); its seconds."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("INPUT_", "GITHUB_"))}
    env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "deploykit", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    return result, time.monotonic() - started


def push_scopes(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The scopes of the token requests that asked for `pull,push`."""
    return [entry["scope"] for entry in entries
            if any(scope.endswith(PUSH) for scope in entry["scope"])]


# -- Build & Push ---------------------------------------------------------------------------------
def test_a_two_platform_release_asks_one_push_token_and_is_never_refused(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
) -> None:
    """Issue 23: every build got `401 insufficient_scope` on its first uploads (the `pull`
    token stored as the push token) and each upload thread fetched a token of its own."""
    repo = token_bed.repo("tok-build")
    mark = token_bed.log_mark()

    run = run_build(token_bed.host, repo, token_bed.user, token_bed.password,
                    make_app_context(body="token release"), ref="refs/tags/v1.0.0")

    assert run.code == 0, run.log
    ours, failures = token_bed.token_requests(mark, repo), token_bed.auth_failures(mark, repo)
    assert (run.outputs["status"], run.outputs["tags"]) == ("built", "v1.0.0\nlatest")
    digest = run.outputs["digest"]
    client = RegistryClient(token_bed.host, repo, token_bed.reader, token_bed.password)
    assert client.resolve("v1.0.0") == client.resolve("latest") == digest
    assert sorted(client.platforms(digest)) == ["linux/amd64", "linux/arm64"]
    assert push_scopes(ours) == [[f"repository:{repo}:{PUSH}"]]
    assert all(entry["user"] == token_bed.user and entry["status"] == 200 for entry in ours)
    # The registry refused deploykit nothing but the very first request (no token yet).
    assert [reason for _, _, reason in failures] == ["authorization token required"]
    assert not [f for f in failures if "/blobs/" in f[1] or f[0] in ("PUT", "POST")]


def test_pre_release_tags_and_a_rerun_that_skips(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
) -> None:
    repo, commit = token_bed.repo("tok-pre"), sha()
    context = make_app_context(body="staging")

    staged = run_build(token_bed.host, repo, token_bed.user, token_bed.password, context,
                       ref="refs/heads/pre-release", commit=commit, cache="none")

    assert staged.code == 0, staged.log
    tags = staged.outputs["tags"].splitlines()
    assert tags[0] == "staging-latest" and tags[2] == f"sha-{commit[:7]}"
    assert tags[1].startswith("test-") and tags[1].endswith("-1")
    client = RegistryClient(token_bed.host, repo, token_bed.user, token_bed.password)
    assert {client.resolve(tag) for tag in tags} == {staged.outputs["digest"]}

    again = run_build(token_bed.host, repo, token_bed.user, token_bed.password, context,
                      ref="refs/heads/pre-release", commit=commit, cache="none")
    assert (again.code, again.outputs["status"]) == (0, "skipped"), again.log


# -- tokens that expire ---------------------------------------------------------------------------
def test_a_token_that_expires_mid_upload_is_renewed_before_it_runs_out(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
    faulty_proxy: type[FaultyProxy],
) -> None:
    """USER-short's tokens live 6 s (expires_in says so; deploykit renews them after 3 s);
    the proxy makes each manifest PUT and blob upload take 1.5 s, so the push (five
    manifest PUTs one after the other) outlives its first token."""
    proxy = faulty_proxy(token_bed.host)
    proxy.slow("PUT", r"/manifests/|/blobs/uploads/", 1.5)
    repo = token_bed.repo("tok-expiry")
    mark = token_bed.log_mark()

    run = run_build(proxy.host, repo, token_bed.short, token_bed.password,
                    make_app_context(body="slow upload"), ref="refs/tags/v2.0.0",
                    cache="none")

    assert run.code == 0, run.log
    pushes = push_scopes(token_bed.token_requests(mark, repo))
    assert len(pushes) >= 2, pushes  # renewed while it pushed
    refused = [f for f in token_bed.auth_failures(mark, repo) if f[2] != "authorization "
               "token required" or f[0] != "GET" or "/tags/list" not in f[1]]
    assert refused == []  # never sent an expired token: renewed before expires_in ran out
    client = RegistryClient(token_bed.host, repo, token_bed.user, token_bed.password)
    assert client.resolve("v2.0.0") == run.outputs["digest"]


def test_a_token_that_expires_sooner_than_it_says_is_fetched_again_after_a_401(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
    faulty_proxy: type[FaultyProxy],
) -> None:
    """USER-stale's tokens die after 6 s though expires_in says 300 (a skewed clock): the
    registry refuses one, deploykit fetches a new token and sends the request again."""
    proxy = faulty_proxy(token_bed.host)
    proxy.slow("PUT", r"/manifests/|/blobs/uploads/", 1.5)
    repo = token_bed.repo("tok-stale")
    mark = token_bed.log_mark()

    run = run_build(proxy.host, repo, token_bed.stale, token_bed.password,
                    make_app_context(body="stale token"), ref="refs/tags/v3.0.0",
                    cache="none")

    assert run.code == 0, run.log
    assert len(push_scopes(token_bed.token_requests(mark, repo))) >= 2
    assert "invalid token" in {reason for _, _, reason in token_bed.auth_failures(mark, repo)}


# -- bad credentials versus no permission ---------------------------------------------------------
def test_a_wrong_password_is_bad_credentials_with_its_own_hint(token_bed: TokenBed) -> None:
    result, _ = cli("resolve", f"{token_bed.host}/tok/{uuid.uuid4().hex[:8]}:v1",
                    registry=token_bed.host, registry_username=token_bed.user,
                    registry_password="not-the-password")
    assert result.returncode == 1
    assert (f"error: Registry authentication failed: {token_bed.host} rejected the credentials "
            f"of {token_bed.user} for ") in result.stderr
    assert "UNAUTHORIZED: invalid username or password" in result.stderr
    assert "the password or token is wrong, expired or revoked" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_no_right_on_the_repository_is_no_permission_not_a_bad_password(
    token_bed: TokenBed,
) -> None:
    """The issue's case: the token service accepts the password and grants nothing on
    `denied/x`; it was reported as "rejected the credentials"."""
    repo = f"denied/{uuid.uuid4().hex[:8]}"
    mark = token_bed.log_mark()
    env = {"INPUT_REGISTRY": token_bed.host, "INPUT_IMAGE_REPO": repo,
           "INPUT_REGISTRY_USERNAME": token_bed.user,
           "INPUT_REGISTRY_PASSWORD": token_bed.password,
           "GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/pre-release",
           "GITHUB_SHA": sha()}
    result = subprocess.run([sys.executable, "-m", "deploykit", "tags"],
                            env={**{k: v for k, v in os.environ.items()
                                    if not k.startswith(("INPUT_", "GITHUB_"))}, **env},
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert (f"error: Registry permission denied: {token_bed.host} accepted the credentials of "
            f"{token_bed.user} but denied pull access to {token_bed.host}/{repo} (tag list)"
            ) in result.stderr
    assert "insufficient_scope" in result.stderr
    assert "check the account's permissions in the registry" in result.stderr
    assert "rejected the credentials" not in result.stderr
    granted = [entry["granted"] for entry in token_bed.token_requests(mark, repo)]
    assert granted and all(access == [{"type": "repository", "name": repo, "actions": []}]
                           for access in granted)


def test_a_build_by_a_user_who_may_only_pull_is_denied_the_push(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
) -> None:
    repo = token_bed.repo("tok-reader")
    run = run_build(token_bed.host, repo, token_bed.reader, token_bed.password,
                    make_app_context(body="reader"), ref="refs/tags/v1.0.0", cache="none",
                    platforms="linux/amd64")
    assert run.code == 1
    errors = [line for line in run.log.splitlines() if line.startswith("::error")]
    assert len(errors) == 1, run.log
    assert errors[0].startswith(f"::error title=Registry permission denied::{token_bed.host} "
                                f"accepted the credentials of {token_bed.reader} but denied "
                                f"push access to {token_bed.host}/{repo}@sha256:")
    assert "it needs the right to push" in errors[0]
    assert "rejected the credentials" not in run.log


# -- resolve, with and without credentials --------------------------------------------------------
@pytest.fixture(scope="module")
def token_images(token_bed: TokenBed, base_image: str,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The busybox base copied to a private and a public repository: reference -> digest."""
    config = str(tmp_path_factory.mktemp("docker-config"))
    token_bed.registry(token_bed.user).login(config)
    found = {}
    for repo in (f"tok-resolve/{uuid.uuid4().hex[:8]}", f"public/{uuid.uuid4().hex[:8]}"):
        image = f"{token_bed.host}/{repo}:v1"
        subprocess.run(["docker", "--config", config, "buildx", "imagetools", "create", "-t",
                        image, base_image], check=True, capture_output=True, timeout=120)
        found[image] = RegistryClient(token_bed.host, repo, token_bed.user,
                                      token_bed.password).resolve("v1")
    return found


def test_resolve_with_and_without_credentials(token_bed: TokenBed,
                                              token_images: dict[str, str]) -> None:
    private, public = token_images
    with_reader, _ = cli("resolve", private, registry=token_bed.host,
                         registry_username=token_bed.reader,
                         registry_password=token_bed.password)
    assert with_reader.returncode == 0, with_reader.stderr
    assert with_reader.stdout.startswith(f"digest={token_images[private]}\n")

    anonymous_public, _ = cli("resolve", public)
    assert anonymous_public.returncode == 0, anonymous_public.stderr
    assert anonymous_public.stdout.startswith(f"digest={token_images[public]}\n")

    anonymous_private, _ = cli("resolve", private)
    assert anonymous_private.returncode == 1
    assert (f"error: Registry authentication failed: {token_bed.host} requires a login to read "
            f"{private}") in anonymous_private.stderr
    # a terminal: the hint names flags, or INPUT_* variables for secrets
    assert "Set `--registry-username` and `INPUT_REGISTRY_PASSWORD`" in anonymous_private.stderr


def test_an_unknown_repository_is_named_as_one(token_bed: TokenBed) -> None:
    repo = token_bed.repo("tok-never-pushed")
    result, _ = cli("resolve", f"{token_bed.host}/{repo}:v1", registry=token_bed.host,
                    registry_username=token_bed.user, registry_password=token_bed.password)
    assert result.returncode == 1
    assert (f"error: Repository not found: {token_bed.host}/{repo} does not exist: "
            f"{token_bed.host} knows no repository {repo}") in result.stderr
    assert "Check `INPUT_IMAGE_REPO` and `--registry` for a typo" in result.stderr  # a terminal


# -- deploy ---------------------------------------------------------------------------------------
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    stop_grace_period: 1s
"""


def test_deploy_pulls_from_the_token_registry_with_a_pull_only_user(
    token_bed: TokenBed, run_build: Callable[..., Run], make_app_context: Callable[..., str],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    repo = token_bed.repo("tok-deploy")
    built = run_build(token_bed.host, repo, token_bed.user, token_bed.password,
                      make_app_context(body="deployed from the token registry"),
                      ref="refs/tags/v1.0.0", cache="none", platforms="linux/amd64")
    assert built.code == 0, built.log
    project, port = f"dk-{uuid.uuid4().hex[:10]}", free_port()
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("INPUT_", "GITHUB_"))}
    env.update({
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), "GITHUB_WORKSPACE": str(tmp_path),
        "GITHUB_REPOSITORY": "org/app", "GITHUB_RUN_ID": "1", "GITHUB_ACTOR": "tester",
        "INPUT_REGISTRY": token_bed.host, "INPUT_IMAGE_REPO": repo,
        "INPUT_REGISTRY_USERNAME": token_bed.reader,
        "INPUT_REGISTRY_PASSWORD": token_bed.password, "INPUT_PROJECT_NAME": project,
        "INPUT_ENVIRONMENT": "staging", "INPUT_IMAGE_TAG": "v1.0.0",
        "INPUT_STATE_DIR": str(tmp_path / "state"), "INPUT_HEALTH_SETTLE": "1",
        "INPUT_HEALTH_TIMEOUT": "60", "INPUT_COMPOSE_ENV": f"APP_PORT={port}",
        "INPUT_SMOKE_URL": f"http://127.0.0.1:{port}/",
        "INPUT_SMOKE_CONTAINS": "deployed from the token registry",
    })
    try:
        capsys.readouterr()
        code = main(["deploy"], env=env)
        log = capsys.readouterr().out
        assert code == 0, log
        outputs = parse_github_output((tmp_path / "output").read_text())
        assert outputs["status"] == "deployed"
        assert outputs["digest"] == built.outputs["digest"]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text.strip() == \
            "deployed from the token registry"
    finally:
        subprocess.run(["docker", "compose", "-p", project, "down", "--remove-orphans",
                        "--timeout", "1"], capture_output=True, check=False, timeout=120)
        subprocess.run(["docker", "network", "rm", f"deploykit-lock-{project}"],
                       capture_output=True, check=False, timeout=60)


# -- connection failures fail fast ----------------------------------------------------------------
@pytest.mark.parametrize(("registry", "title", "cause"), [
    (f"127.0.0.1:{free_port()}", "Registry refused the connection", "connection refused"),
    ("[::1]:5001", "Registry refused the connection", "connection refused"),
    (f"dk-{uuid.uuid4().hex[:8]}.invalid", "Registry name not found", "does not resolve"),
])
def test_an_unreachable_registry_fails_in_seconds_naming_the_cause(
    registry: str, title: str, cause: str,
) -> None:
    """Issue 23: refused and unresolvable registries were retried for 55 s."""
    result, seconds = cli("resolve", f"{registry}/org/app:v1", timeout=60)
    assert result.returncode == 1
    assert seconds < 5, (seconds, result.stderr)
    assert f"error: {title}: " in result.stderr and cause in result.stderr
    assert "`--registry`" in result.stderr and "Traceback" not in result.stderr  # a terminal


def test_deploykit_tags_against_a_refused_port_fails_in_seconds() -> None:
    port = free_port()
    env = {"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/pre-release",
           "GITHUB_SHA": sha()}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "deploykit", "tags", "--registry", f"127.0.0.1:{port}",
         "--image-repo", "org/app"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))},
             **env}, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert seconds < 5, (seconds, result.stderr)
    assert f"Nothing accepts connections at 127.0.0.1:{port}: connection refused" \
        in result.stderr


def test_an_overloaded_registry_answering_429_is_waited_for(
    open_registry: TestRegistry, base_image: str, faulty_proxy: type[FaultyProxy],
) -> None:
    proxy = faulty_proxy(open_registry.host)
    proxy.answer("HEAD", r"/manifests/", 429, times=2, headers={"Retry-After": "1"})
    expected = RegistryClient(open_registry.host, "testbed/busybox").resolve("latest")

    result, seconds = cli("resolve", f"{proxy.host}/testbed/busybox:latest", timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"digest={expected}\n")
    assert [status for method, _, status in proxy.seen if method == "HEAD"] == [429, 429, 200]
    assert (f"Registry {proxy.host} answered 429 for {proxy.host}/testbed/busybox:latest; "
            "retrying in 1.0 s (attempt 2 of at most") in result.stderr
    assert seconds >= 2  # both Retry-After waits were honoured
