"""Unit tests of deploykit.build with fake docker and registry (no daemon, no HTTP)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from deploykit import build
from deploykit.errors import (
    BuildError,
    DockerError,
    InputError,
    ManifestUnknownError,
    RegistryUnreachableError,
    WriteOnceTagError,
)
from deploykit.github import GitHubRecorder
from deploykit.settings import Settings, load_settings
from tests.conftest import CapturedActions, parse_github_output

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
IMAGE = "127.0.0.1:5001/org/app"
OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
AMD, ARM = "sha256:" + "a" * 64, "sha256:" + "b" * 64
PASSWORD = "registry-pass-123"

INSPECT = """\
Name:          default
Driver:        docker
Nodes:
Name:      default
Platforms: linux/amd64, linux/arm64
"""

BUILD_OUTPUT = """\
#3 [linux/amd64 1/2] FROM 127.0.0.1:5000/testbed/busybox:latest
#3 CACHED
#4 [linux/arm64 1/2] FROM 127.0.0.1:5000/testbed/busybox:latest
#4 CACHED
#5 [linux/amd64 2/2] COPY index.html /www/index.html
#5 CACHED
#6 [linux/arm64 2/2] COPY index.html /www/index.html
#6 DONE 0.1s
"""


CREATED = "2024-06-01T12:00:00Z"
INDEX_BODY = b'{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'


class FakeRegistry:
    """tags -> digests, digest -> revision label and platforms; manifest PUTs by content."""

    name = IMAGE

    def __init__(self) -> None:
        self.tag_digests: dict[str, str] = {}
        self.revisions: dict[str, str] = {}
        self.created: dict[str, str] = {}
        self.index: dict[str, dict[str, str]] = {}
        self.manifests: dict[bytes, str] = {}
        self.calls: list[tuple[str, str]] = []

    def publish(self, tag: str, digest: str, revision: str, created: str = CREATED) -> None:
        self.tag_digests[tag] = digest
        self.revisions[digest] = revision
        self.created[digest] = created
        self.index[digest] = {"linux/amd64": AMD, "linux/arm64": ARM}
        self.manifests[digest.encode()] = digest

    def blob_exists(self, digest: str) -> bool:
        return True

    def upload_blob(self, digest: str, path: Path) -> None:
        raise AssertionError("every blob exists")

    def manifest_bytes(self, digest: str) -> tuple[str, bytes]:
        self.calls.append(("manifest", digest))
        content = next(body for body, known in self.manifests.items() if known == digest)
        return "application/vnd.oci.image.index.v1+json", content

    def put_manifest(self, reference: str, content: bytes, media_type: str) -> None:
        self.calls.append(("put", reference))
        if reference.startswith("sha256:"):
            self.manifests[content] = reference
            self.revisions.setdefault(reference, SHA)
            self.created.setdefault(reference, CREATED)
            self.index.setdefault(reference, {"linux/amd64": AMD, "linux/arm64": ARM})
        else:
            self.tag_digests[reference] = self.manifests[content]

    def tags(self) -> list[str]:
        self.calls.append(("tags", ""))
        return list(self.tag_digests)

    def resolve(self, reference: str) -> str:
        self.calls.append(("resolve", reference))
        if reference.startswith("sha256:"):
            return reference
        if reference not in self.tag_digests:
            raise ManifestUnknownError(f"{reference} unknown")
        return self.tag_digests[reference]

    def find(self, reference: str) -> str | None:
        try:
            return self.resolve(reference)
        except ManifestUnknownError:
            return None

    def labels(self, reference: str, platform: str | None = None) -> dict[str, str]:
        self.calls.append(("labels", reference))
        digest = self.resolve(reference)
        return {"org.opencontainers.image.revision": self.revisions[digest],
                "org.opencontainers.image.created": self.created[digest]}

    def platforms(self, reference: str) -> dict[str, str]:
        self.calls.append(("platforms", reference))
        return self.index[self.resolve(reference)]


class FakeDocker:
    """Records docker calls; a ``buildx build`` "pushes" into the fake registry."""

    def __init__(self, actions: CapturedActions, registry: FakeRegistry,
                 push: Callable[[list[str]], None] | None = None,
                 build_code: int = 0, build_output: str = BUILD_OUTPUT,
                 inspect: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.actions = actions
        self.inspect = inspect or (lambda kwargs: INSPECT)
        self.env: dict[str, str] = {}
        self.registry = registry
        self.calls: list[list[str]] = []
        self.call_configs: list[str] = []  # DOCKER_CONFIG of each call
        self.configs = 0
        self.logins: list[tuple[str, str, str]] = []
        self.push = push or self.push_all
        self.build_code = build_code
        self.build_output = build_output

    @contextmanager
    def temporary_config(self) -> Iterator[str]:
        self.configs += 1
        self.env["DOCKER_CONFIG"] = f"/tmp/config-{self.configs}"
        yield self.env["DOCKER_CONFIG"]
        del self.env["DOCKER_CONFIG"]

    def login(self, registry: str, username: str, password: str) -> None:
        assert "DOCKER_CONFIG" in self.env, "a login outside the temporary config"
        self.logins.append((registry, username, password))

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        self.calls.append(argv)
        self.call_configs.append(self.env.get("DOCKER_CONFIG", "(the user's)"))
        if argv[:2] == ["buildx", "inspect"]:
            return subprocess.CompletedProcess(argv, 0, self.inspect(kwargs), "")
        if argv[:1] == ["info"]:
            return subprocess.CompletedProcess(argv, 0, "io.containerd.snapshotter.v1", "")
        assert argv[:2] == ["buildx", "build"], argv
        if self.build_code == 0:
            self.push(argv)
        return subprocess.CompletedProcess(argv, self.build_code, self.build_output, "")

    def push_all(self, argv: list[str], digest: str = NEW) -> None:
        """Write the metadata file and an OCI layout holding one (empty) index."""
        metadata = argv[argv.index("--metadata-file") + 1]
        Path(metadata).write_text(json.dumps({"containerimage.digest": digest}))
        output = argv[argv.index("--output") + 1]
        if output.startswith("type=oci,dest="):
            layout = Path(output.removeprefix("type=oci,dest=").split(",")[0])
            blobs = layout / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            (blobs / digest.removeprefix("sha256:")).write_bytes(INDEX_BODY)

    def only_asked(self) -> bool:
        """Nothing but the builder probe's read-only questions ran: no build, no login,
        no builder created."""
        return not self.logins and all(
            argv in (["buildx", "inspect"], ["info", "--format", "{{json .DriverStatus}}"])
            for argv in self.calls)

    @property
    def builds(self) -> list[list[str]]:
        return [argv for argv in self.calls if argv[:2] == ["buildx", "build"]]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    app = tmp_path / "ws" / "app"
    app.mkdir(parents=True)
    (app / "Dockerfile").write_text("FROM scratch\n")
    return tmp_path / "ws"


def settings_for(workspace: Path, ref: str = "refs/tags/v1.2.3", sha: str = SHA,
                 **inputs: str) -> Settings:
    env = {
        "GITHUB_EVENT_NAME": "push", "GITHUB_REF": ref, "GITHUB_SHA": sha,
        "GITHUB_REPOSITORY": "org/app", "GITHUB_WORKSPACE": str(workspace),
        "SOURCE_DATE_EPOCH": "1717243200",  # 2024-06-01T12:00:00Z
        "INPUT_REGISTRY": "127.0.0.1:5001", "INPUT_REGISTRY_USERNAME": "deploykit",
        "INPUT_REGISTRY_PASSWORD": PASSWORD, "INPUT_CONTEXT": "app",
    }
    env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
    return load_settings(env, {"mode": "build"})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # time.monotonic is the time module's: tenacity reads it too, so only the first
    # reading (the start) differs from the rest.
    ticks = itertools.chain([100.0], itertools.repeat(112.34))
    monkeypatch.setattr(build.time, "monotonic", lambda: next(ticks))


def execute(settings: Settings, actions: CapturedActions, registry: FakeRegistry,
            docker: FakeDocker) -> build.Outcome:
    return build.execute(settings, actions, registry, docker)  # type: ignore[arg-type]


def outputs(tmp_path: Path) -> dict[str, str]:
    return parse_github_output((tmp_path / "github_output").read_text())


# -- built ---------------------------------------------------------------------------
def test_release_build_pushes_verifies_and_reports(
    workspace: Path, tmp_path: Path, make_actions: Callable[..., CapturedActions], clock: None,
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace), actions, registry, docker)
    assert outcome.status == "built"
    assert outputs(tmp_path) == {
        "digest": NEW,
        "image": f"{IMAGE}@{NEW}",
        "tags": "v1.2.3\nlatest",
        "images": f"{IMAGE}:v1.2.3\n{IMAGE}:latest",
        "metadata": json.dumps({
            "digest": NEW, "image": IMAGE,
            "labels": {"org.opencontainers.image.created": "2024-06-01T12:00:00Z",
                       "org.opencontainers.image.revision": SHA},
            "platforms": {"linux/amd64": AMD, "linux/arm64": ARM}, "status": "built",
            "tags": [{"reference": f"{IMAGE}:v1.2.3", "tag": "v1.2.3"},
                     {"reference": f"{IMAGE}:latest", "tag": "latest"}]}),
        "version": "v1.2.3",
        "platforms": f'{{"linux/amd64":"{AMD}","linux/arm64":"{ARM}"}}',
        "status": "built",
    }
    assert ("labels", NEW) in registry.calls  # read back from the registry, not assumed
    assert docker.logins == [("127.0.0.1:5001", "deploykit", PASSWORD)]
    assert actions.summary_parts == [
        f"### Build & Push `{IMAGE}`: built\n\n"
        "| Tag | Digest |\n| --- | --- |\n"
        f"| `v1.2.3` | `{NEW}` |\n| `latest` | `{NEW}` |\n\n"
        "- Platforms: linux/amd64, linux/arm64\n"
        "- Cache: 1 of 2 steps cached\n"
        "- Duration: 12.3 s\n"]
    assert ("resolve", "v1.2.3") in registry.calls and ("resolve", "latest") in registry.calls


def test_build_argv_has_labels_tags_and_no_password(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("buildcache", OLD, "")
    docker = FakeDocker(actions, registry)
    execute(settings_for(workspace, build_args="A=1"), actions, registry, docker)
    [argv] = docker.builds
    metadata = argv[argv.index("--metadata-file") + 1]
    layout = argv[argv.index("--output") + 1].split(",")[1].removeprefix("dest=")
    app = str(workspace / "app")
    assert argv == [
        "buildx", "build", "--builder", "default", "--progress=plain",
        "--platform", "linux/amd64,linux/arm64", "-f", f"{app}/Dockerfile",
        "--metadata-file", metadata, "--provenance=false", "--sbom=false",
        "--label", "org.opencontainers.image.source=https://github.com/org/app",
        "--label", f"org.opencontainers.image.revision={SHA}",
        "--label", "org.opencontainers.image.version=v1.2.3",
        "--label", "org.opencontainers.image.created=2024-06-01T12:00:00Z",
        "--label", "org.opencontainers.image.title=app",
        "--build-arg", "A=1",
        "--cache-from", f"type=registry,ref={IMAGE}:buildcache",
        "--cache-to", f"type=registry,ref={IMAGE}:buildcache,mode=max",
        "--output", f"type=oci,dest={layout},tar=false", app,
    ]
    assert all(PASSWORD not in " ".join(call) for call in docker.calls)
    assert not Path(layout).exists()  # the temporary OCI layout is gone


def test_first_build_says_there_is_no_cache_yet_and_imports_none(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    execute(settings_for(workspace), actions, registry, docker)
    [argv] = docker.builds
    assert "--cache-from" not in argv
    assert argv[argv.index("--cache-to") + 1] == \
        f"type=registry,ref={IMAGE}:buildcache,mode=max"
    assert f"No build cache yet at {IMAGE}:buildcache: this first build fills it.\n" \
        in actions.out.getvalue().splitlines(keepends=True)
    assert ("resolve", "buildcache") in registry.calls


def test_image_is_pushed_by_digest_before_any_tag_and_write_once_tags_first(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace, ref="refs/heads/pre-release"), actions,
                      registry, docker)
    puts = [ref for call, ref in registry.calls if call == "put"]
    assert puts == [NEW, "sha-0123456", "test-20240601-1", "staging-latest"]
    assert outcome.tags == ("staging-latest", "test-20240601-1", "sha-0123456")
    assert registry.tag_digests == dict.fromkeys(
        ("sha-0123456", "test-20240601-1", "staging-latest"), NEW)


def test_staging_build_labels_its_test_tag_as_version(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace, ref="refs/heads/pre-release"), actions,
                      registry, docker)
    assert outcome.tags == ("staging-latest", "test-20240601-1", "sha-0123456")
    [argv] = docker.builds
    assert "org.opencontainers.image.version=test-20240601-1" in argv


# -- validation ----------------------------------------------------------------------
def test_feature_branch_is_a_validation_build_without_push_or_login_of_tags(
    workspace: Path, tmp_path: Path, make_actions: Callable[..., CapturedActions], clock: None,
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    execute(settings_for(workspace, ref="refs/heads/feature/x", cache="none"), actions,
            registry, docker)
    [argv] = docker.builds
    assert "--push" not in argv and "-t" not in argv and "--cache-from" not in argv
    assert argv[-3:] == ["--output", "type=cacheonly", str(workspace / "app")]
    assert registry.calls == []
    assert outputs(tmp_path) == {
        "digest": "", "image": "", "tags": "", "images": "", "version": "",
        "metadata": json.dumps({
            "digest": "", "image": IMAGE,
            "labels": {"org.opencontainers.image.created": "2024-06-01T12:00:00Z",
                       "org.opencontainers.image.revision": SHA,
                       "org.opencontainers.image.source": "https://github.com/org/app",
                       "org.opencontainers.image.title": "app"},
            "platforms": {}, "status": "validated", "tags": []}),
        "platforms": "{}", "status": "validated"}
    assert actions.summary_parts[0].startswith(
        f"### Build & Push `{IMAGE}`: validated\n\nValidation build for branch "
        "`feature/x`: the image is built but nothing is pushed.")
    assert actions.summary_parts[0].endswith(
        "Nothing was pushed.\n\n- Platforms: linux/amd64, linux/arm64\n"
        "- Cache: 1 of 2 steps cached\n- Duration: 12.3 s\n")


# -- the write-once guard ------------------------------------------------------------
def test_same_revision_rerun_is_skipped_without_building(
    workspace: Path, tmp_path: Path, make_actions: Callable[..., CapturedActions], clock: None,
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, SHA)
    registry.publish("latest", OLD, SHA)
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace), actions, registry, docker)
    assert outcome.status == "skipped"
    assert docker.only_asked() and docker.logins == []
    assert outputs(tmp_path)["digest"] == OLD
    assert outputs(tmp_path)["status"] == "skipped"
    assert outputs(tmp_path)["tags"] == "v1.2.3\nlatest"
    assert actions.summary_parts == [
        f"### Build & Push `{IMAGE}`: skipped\n\n"
        "Skipped: v1.2.3 already published (an idempotent re-run of the same revision).\n\n"
        "| Tag | Digest |\n| --- | --- |\n"
        f"| `v1.2.3` | `{OLD}` |\n| `latest` | `{OLD}` |\n\n"
        "- Platforms: linux/amd64, linux/arm64\n"
        "- Cache: not built\n"
        "- Duration: 12.3 s\n"]


def test_tag_from_another_revision_is_refused_naming_tag_digest_revision(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, OTHER_SHA)
    docker = FakeDocker(actions, registry)
    with pytest.raises(WriteOnceTagError) as info:
        execute(settings_for(workspace), actions, registry, docker)
    assert info.value.message == (
        f"Tag {IMAGE}:v1.2.3 is already published at {OLD} from revision {OTHER_SHA}; "
        f"this build is revision {SHA}. A build never moves a write-once tag.")
    assert "skip_build_if_image_present: true" in info.value.hint
    assert docker.only_asked()
    assert registry.tag_digests == {"v1.2.3": OLD}


def test_skip_build_if_image_present_reuses_a_foreign_revision(
    workspace: Path, tmp_path: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, OTHER_SHA)
    docker = FakeDocker(actions, registry)
    settings = settings_for(workspace, skip_build_if_image_present="true")
    outcome = execute(settings, actions, registry, docker)
    assert (outcome.status, outcome.digest, outcome.tags) == ("skipped", OLD, ("v1.2.3",))
    assert docker.only_asked()
    assert outcome.note == (f"Skipped: v1.2.3 already published (published from revision "
                            f"{OTHER_SHA}; skip_build_if_image_present is true).")


def test_staging_rerun_of_same_commit_skips_on_its_sha_tag(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("sha-0123456", OLD, SHA)
    registry.publish("test-20240601-1", OLD, SHA)
    registry.publish("staging-latest", OLD, SHA)
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace, ref="refs/heads/pre-release"), actions,
                      registry, docker)
    assert (outcome.status, outcome.digest) == ("skipped", OLD)
    assert outcome.tags == ("staging-latest", "test-20240601-1", "sha-0123456")
    assert docker.only_asked()
    assert [call for call in registry.calls if call[0] == "put"] == []


def test_rerun_after_a_partial_publish_completes_the_missing_tags(
    workspace: Path, tmp_path: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    """The earlier run pushed OLD and published sha-<7> only, then died."""
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("sha-0123456", OLD, SHA)
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace, ref="refs/heads/pre-release"), actions,
                      registry, docker)
    assert (outcome.status, outcome.digest) == ("built", OLD)
    assert outcome.tags == ("staging-latest", "test-20240601-1", "sha-0123456")
    assert registry.tag_digests == dict.fromkeys(
        ("sha-0123456", "test-20240601-1", "staging-latest"), OLD)
    assert docker.only_asked()
    assert outcome.note == (f"Completed: an earlier run of this revision pushed {OLD}; this "
                            "run published test-20240601-1, staging-latest. Nothing was built.")
    assert outputs(tmp_path)["status"] == "built"


def test_release_rerun_after_a_partial_publish_moves_latest_and_releases_again(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    """The earlier run published v1.2.3 and died before `latest`."""
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, SHA)
    registry.publish("latest", NEW, OTHER_SHA)  # an older release, v1.2.2
    registry.publish("v1.2.2", NEW, OTHER_SHA)
    outcome = execute(settings_for(workspace), actions, registry, FakeDocker(actions, registry))
    assert (outcome.status, outcome.tags) == ("built", ("v1.2.3", "latest"))
    assert registry.tag_digests["latest"] == OLD
    assert outcome.release_version == "v1.2.3"  # the GitHub release is (re)published


def test_failure_after_a_tag_names_the_published_tags_in_error_and_summary(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    put = registry.put_manifest

    def failing_put(reference: str, content: bytes, media_type: str) -> None:
        if reference.startswith("test-"):
            raise build.BuildError("127.0.0.1:5001 answered 400 for the PUT.", hint="h")
        put(reference, content, media_type)

    registry.put_manifest = failing_put  # type: ignore[method-assign]
    with pytest.raises(build.PartlyPublishedError) as info:
        execute(settings_for(workspace, ref="refs/heads/pre-release"), actions, registry,
                docker)
    assert info.value.message == (
        "127.0.0.1:5001 answered 400 for the PUT. This run had already published "
        f"sha-0123456 (naming {NEW}); the other tags of the plan are not published.")
    assert info.value.published == ("sha-0123456",)
    assert actions.summary_parts == [
        f"### Build & Push `{IMAGE}`: failed after publishing 1 tag(s)\n\n"
        f"{info.value.message}\n\n"
        "| Tag published by this run | Digest |\n| --- | --- |\n"
        f"| `sha-0123456` | `{NEW}` |\n\n"
        "Run the job again: it publishes the missing tags of this image.\n"]


def test_mutable_tags_never_trigger_the_guard(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("latest", OLD, OTHER_SHA)
    docker = FakeDocker(actions, registry)
    outcome = execute(settings_for(workspace), actions, registry, docker)
    assert (outcome.status, outcome.digest) == ("built", NEW)
    assert registry.tag_digests == {"latest": NEW, "v1.2.3": NEW}


# -- the builder probe (asked while the plan is read) -------------------------------------
def test_the_probe_login_and_build_share_one_temporary_docker_config(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    """The probe answers for the builder the build uses: same DOCKER_CONFIG (contexts)."""
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry)
    execute(settings_for(workspace, ref="refs/heads/pre-release"), actions, registry, docker)
    assert docker.calls[-1][:2] == ["buildx", "build"]
    assert sorted(map(tuple, docker.calls[:2])) == [
        ("buildx", "inspect"), ("info", "--format", "{{json .DriverStatus}}")]
    assert docker.call_configs == ["/tmp/config-1"] * 3
    assert docker.configs == 1 and "DOCKER_CONFIG" not in docker.env  # removed at the end
    assert docker.logins == [("127.0.0.1:5001", "deploykit", PASSWORD)]


def test_a_refused_build_stops_a_probe_still_running_before_it_returns(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    """No child outlives the run: a probe still asking is given up and waited for."""
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, OTHER_SHA)
    stopped = threading.Event()

    def slow_inspect(kwargs: dict[str, Any]) -> str:
        deadline = time.monotonic() + 10
        while kwargs["give_up_at"]() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if kwargs["give_up_at"]() is not None:
            stopped.set()
            raise DockerError("`docker buildx inspect` was still running; it was stopped.")
        return INSPECT

    docker = FakeDocker(actions, registry, inspect=slow_inspect)
    with pytest.raises(WriteOnceTagError):
        execute(settings_for(workspace), actions, registry, docker)
    assert stopped.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("deploykit-buildx")]
    assert docker.only_asked()


def docker_missing(kwargs: dict[str, Any]) -> str:
    """The builder probe's `docker buildx inspect` with no docker CLI on PATH."""
    raise DockerError("`docker` was not found.", hint="Install the Docker CLI.")


def test_a_probe_error_fails_a_build_with_its_own_message(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry, inspect=docker_missing)
    with pytest.raises(DockerError) as info:
        execute(settings_for(workspace), actions, registry, docker)
    assert info.value.message == "`docker` was not found."
    assert docker.builds == [] and [c for c in registry.calls if c[0] == "put"] == []


def test_a_probe_error_does_not_fail_a_run_that_builds_nothing(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    registry.publish("v1.2.3", OLD, SHA)
    registry.publish("latest", OLD, SHA)
    outcome = execute(settings_for(workspace), actions, registry,
                      FakeDocker(actions, registry, inspect=docker_missing))
    assert (outcome.status, outcome.digest) == ("skipped", OLD)


def test_a_plan_error_is_reported_rather_than_a_probe_error(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()

    def unreachable() -> list[str]:
        raise RegistryUnreachableError("127.0.0.1:5001 did not answer.", hint="h")

    registry.tags = unreachable  # type: ignore[method-assign]
    with pytest.raises(RegistryUnreachableError) as info:
        execute(settings_for(workspace), actions, registry,
                FakeDocker(actions, registry, inspect=docker_missing))
    assert info.value.message == "127.0.0.1:5001 did not answer."


IMPORTED = """
import sys
import deploykit.cli, deploykit.build
print(sorted(name for name in ("requests", "tenacity", "concurrent.futures", "email.utils",
                               "deploykit.github") if name in sys.modules))
"""


def test_importing_the_build_command_leaves_requests_and_tenacity_for_later() -> None:
    """They load when run() makes the registry client, after the probe started (the
    thread pool of the upload and the Retry-After date parser when they are used)."""
    result = subprocess.run([sys.executable, "-c", IMPORTED], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"


def test_run_starts_the_probe_before_it_makes_the_registry_client(
    workspace: Path, make_actions: Callable[..., CapturedActions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []

    class Probe:
        def __init__(self, docker: Any, *, store: bool) -> None:
            order.append("probe")

        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: object) -> None:
            order.append("probe left")

    def client(*args: Any, **kwargs: Any) -> FakeRegistry:
        order.append("client")
        return FakeRegistry()

    monkeypatch.setattr(build, "BuilderProbe", Probe)
    monkeypatch.setattr(build, "registry_client", client)
    monkeypatch.setattr(build, "execute", lambda *a: order.append("execute") or
                        build.Outcome(build.SKIPPED))
    build.run(settings_for(workspace), make_actions(), {})
    assert order == ["probe", "client", "execute", "probe left"]


# -- verification ----------------------------------------------------------------------
def test_index_missing_a_platform_fails_loudly(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()

    def amd64_only(argv: list[str]) -> None:
        docker.push_all(argv)
        registry.index[NEW] = {"linux/amd64": AMD}

    docker = FakeDocker(actions, registry, push=amd64_only)
    with pytest.raises(BuildError) as info:
        execute(settings_for(workspace), actions, registry, docker)
    assert info.value.message == (
        f"The pushed index {NEW} has no manifest for linux/arm64 (it holds linux/amd64).")


def test_missing_digest_in_metadata_is_an_error(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    docker = FakeDocker(actions, registry, push=lambda argv: None)
    with pytest.raises(BuildError) as info:
        execute(settings_for(workspace), actions, registry, docker)
    assert info.value.message == ("buildx built, but reported no image digest in its "
                                  "metadata file.")
    assert [call for call in registry.calls if call[0] == "put"] == []


def test_failed_build_is_a_build_error_and_nothing_is_verified(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    output = ("#5 [linux/amd64 2/2] RUN echo boom-marker && false\n#5 0.1 boom-marker\n"
              "#5 ERROR: process did not complete successfully: exit code: 1\n"
              "ERROR: failed to solve: exit code: 1\n")
    docker = FakeDocker(actions, registry, build_code=1, build_output=output)
    with pytest.raises(BuildError) as info:
        execute(settings_for(workspace), actions, registry, docker)
    assert info.value.message == "docker buildx build failed (exit 1):\n" + output.rstrip()
    assert [call for call in registry.calls if call[0] == "platforms"] == []


# -- paths and dry run -------------------------------------------------------------------
def test_missing_dockerfile_names_the_input(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    with pytest.raises(InputError) as info:
        execute(settings_for(workspace, dockerfile="docker/Dockerfile.prod"), actions,
                registry, FakeDocker(actions, registry))
    assert info.value.message == (f"Input 'dockerfile': {workspace}/docker/Dockerfile.prod "
                                  "does not exist.")


def test_missing_context_names_the_input(
    workspace: Path, make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    registry = FakeRegistry()
    with pytest.raises(InputError) as info:
        execute(settings_for(workspace, context="nope"), actions, registry,
                FakeDocker(actions, registry))
    assert info.value.message == f"Input 'context': {workspace}/nope is not a directory."


def test_dry_run_delegates_to_the_plan_command(
    workspace: Path, make_actions: Callable[..., CapturedActions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(build, "plan_command", lambda settings, actions:
                        seen.append(settings))
    monkeypatch.setattr(build, "execute", lambda *a: pytest.fail("must not build"))
    settings = settings_for(workspace, dry_run="true")
    build.run(settings, make_actions(), {})
    assert seen == [settings]


# -- GitHub release (the recorder itself is tested in test_github.py) ----------------------
class FakeRecorder:
    def __init__(self) -> None:
        self.releases: list[dict[str, Any]] = []

    def publish_release(self, **kwargs: Any) -> Any:
        self.releases.append(kwargs)
        return type("Release", (), {"tag": kwargs["version"],
                                    "html_url": "https://github.com/org/app/releases/x"})()


@pytest.mark.parametrize(
    ("ref", "version", "create_tag", "prerelease"),
    [("refs/tags/v1.2.3", "", False, False),
     ("refs/heads/release", "2.0.0-rc.1", True, True)])
def test_a_built_release_is_published_on_github(
    workspace: Path, make_actions: Callable[..., CapturedActions],
    monkeypatch: pytest.MonkeyPatch, ref: str, version: str, create_tag: bool,
    prerelease: bool,
) -> None:
    fake = FakeRecorder()
    monkeypatch.setattr(GitHubRecorder, "from_settings",
                        staticmethod(lambda settings, actions: fake))
    actions = make_actions()
    registry = FakeRegistry()
    settings = settings_for(workspace, ref=ref, version=version)
    outcome = execute(settings, actions, registry, FakeDocker(actions, registry))
    build.publish_release(settings, actions, outcome)
    expected_version = f"v{version}" if version else "v1.2.3"
    assert fake.releases == [{
        "version": expected_version, "sha": SHA, "digest": NEW, "image": IMAGE,
        "platforms": {"linux/amd64": AMD, "linux/arm64": ARM},
        "prerelease": prerelease, "create_tag": create_tag}]
    assert actions.summary_parts[-1] == (
        f"- GitHub release: [{expected_version}](https://github.com/org/app/releases/x)\n")


def test_staging_and_skipped_builds_publish_no_release(
    workspace: Path, make_actions: Callable[..., CapturedActions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRecorder()
    monkeypatch.setattr(GitHubRecorder, "from_settings",
                        staticmethod(lambda settings, actions: fake))
    actions = make_actions()
    registry = FakeRegistry()
    settings = settings_for(workspace, ref="refs/heads/pre-release")
    outcome = execute(settings, actions, registry, FakeDocker(actions, registry))
    build.publish_release(settings, actions, outcome)
    assert fake.releases == []
