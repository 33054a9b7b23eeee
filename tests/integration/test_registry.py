"""The registry client against the real local registries (open and htpasswd)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploykit.cli import main
from deploykit.errors import UnauthorizedError
from deploykit.registry import OCI_INDEX, RegistryClient
from deploykit.tags import plan_tags
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry as Registry
from tests.integration.conftest import docker_push

REVISION = "0123456789abcdef0123456789abcdef01234567"
PLATFORMS = "linux/amd64,linux/arm64"


def docker(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", "--config", config, *args], capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def push_image(registry: Registry, repo: str, tags: list[str], context: str, config: str,
               *, revision: str = REVISION) -> str:
    """Build ``context`` for two platforms, push it under ``tags``; return the index digest."""
    registry.login(config)
    metadata = Path(config) / "metadata.json"
    argv = ["buildx", "build", "--platform", PLATFORMS, "--push", "--metadata-file",
            str(metadata), "--label", f"org.opencontainers.image.revision={revision}"]
    for tag in tags:
        argv += ["--tag", f"{registry.host}/{repo}:{tag}"]
    docker_push("--config", config, *argv, context)
    # The registry holds the image now; the engine's local copy would only pile up.
    docker(config, "image", "rm", *(f"{registry.host}/{repo}:{tag}" for tag in tags))
    digest = json.loads(metadata.read_text())["containerimage.digest"]
    assert digest.startswith("sha256:")
    return str(digest)


def add_tags(registry: Registry, repo: str, source: str, tags: list[str], config: str) -> None:
    """Point more tags at ``source``, one PUT at a time (the registry dislikes concurrent PUTs)."""
    for tag in tags:
        docker_push("--config", config, "buildx", "imagetools", "create", "--tag",
                    f"{registry.host}/{repo}:{tag}", f"{registry.host}/{repo}:{source}")


def test_resolves_digest_platforms_and_labels_of_a_multi_arch_image(
    open_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
) -> None:
    repo = open_registry.repo("dk-tags")
    digest = push_image(open_registry, repo, ["v1.0.0", "sha-0123456"], make_app_context("v1"),
                        docker_config)
    client = RegistryClient(open_registry.host, repo)

    assert client.resolve("v1.0.0") == digest
    assert client.find("sha-0123456") == digest
    assert client.find("v9.9.9") is None
    manifest = client.manifest("v1.0.0")
    assert (manifest.media_type, manifest.digest, manifest.is_index) == (OCI_INDEX, digest, True)
    platforms = client.platforms("v1.0.0")
    assert sorted(platforms) == ["linux/amd64", "linux/arm64"]
    for platform, platform_digest in platforms.items():
        assert client.resolve(platform_digest) == platform_digest
        assert client.platforms(platform_digest) == {platform: platform_digest}
        assert client.labels("v1.0.0", platform)["org.opencontainers.image.revision"] == REVISION
    assert client.labels(digest)["org.opencontainers.image.revision"] == REVISION
    assert sorted(client.tags()) == ["sha-0123456", "v1.0.0"]


def test_next_test_number_comes_from_the_registry(
    open_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
) -> None:
    repo = open_registry.repo("dk-tags")
    push_image(open_registry, repo, ["test-20261127-1"], make_app_context(), docker_config)
    add_tags(open_registry, repo, "test-20261127-1",
             ["test-20261127-2", "test-20261127-5", "test-20261126-9", "staging-latest"],
             docker_config)
    existing = RegistryClient(open_registry.host, repo).tags()
    assert sorted(existing) == ["staging-latest", "test-20261126-9", "test-20261127-1",
                                "test-20261127-2", "test-20261127-5"]
    plan = plan_tags(event_name="push", ref="refs/heads/pre-release", sha=REVISION, version="",
                     existing_tags=existing, latest="auto",
                     build_date=datetime(2026, 11, 27, 23, 59, tzinfo=UTC))
    assert plan.tags == ("staging-latest", "test-20261127-6", "sha-0123456")


def test_a_repository_never_pushed_has_no_tags_and_no_manifests(
    open_registry: Registry,
) -> None:
    client = RegistryClient(open_registry.host, open_registry.repo("dk-tags-never"))
    assert client.tags() == []
    assert client.find("v1.0.0") is None


def test_htpasswd_registry_basic_auth(
    auth_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
) -> None:
    repo = auth_registry.repo("dk-tags")
    digest = push_image(auth_registry, repo, ["v2.0.0"], make_app_context("auth"), docker_config)
    client = RegistryClient(auth_registry.host, repo, auth_registry.username,
                            auth_registry.password)
    assert client.resolve("v2.0.0") == digest
    assert client.tags() == ["v2.0.0"]
    assert sorted(client.platforms("v2.0.0")) == ["linux/amd64", "linux/arm64"]

    with pytest.raises(UnauthorizedError) as anonymous:
        RegistryClient(auth_registry.host, repo).find("v2.0.0")
    assert anonymous.value.message == (f"{auth_registry.host} requires a login to read "
                                       f"{auth_registry.host}/{repo}:v2.0.0.")
    with pytest.raises(UnauthorizedError) as wrong:
        RegistryClient(auth_registry.host, repo, auth_registry.username, "wrong").tags()
    assert wrong.value.message == (f"{auth_registry.host} rejected the credentials of "
                                   f"{auth_registry.username} for {auth_registry.host}/{repo} "
                                   "(tag list): UNAUTHORIZED: authentication required")


def test_deploykit_resolve_prints_the_digest(
    auth_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
    tmp_path: Path,
) -> None:
    repo = auth_registry.repo("dk-tags")
    digest = push_image(auth_registry, repo, ["v1.2.3"], make_app_context("resolve"),
                        docker_config)
    output = tmp_path / "github_output"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
           "INPUT_REGISTRY": auth_registry.host, "INPUT_IMAGE_REPO": repo,
           "INPUT_REGISTRY_USERNAME": auth_registry.username,
           "INPUT_REGISTRY_PASSWORD": auth_registry.password}
    assert main(["resolve", f"{auth_registry.host}/{repo}:v1.2.3"], env=env) == 0
    assert parse_github_output(output.read_text()) == {
        "digest": digest, "image": f"{auth_registry.host}/{repo}@{digest}"}
