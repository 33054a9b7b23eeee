"""Unit tests of deploykit.buildx: argv, builder choice, progress parsing (no daemon)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import tenacity

from deploykit import buildx
from deploykit.buildx import Builder, BuildRequest
from deploykit.errors import BuildError, DeniedError, InputError

INSPECT_DEFAULT = """\
Name:          default
Driver:        docker
Last Activity: 2026-11-27 21:55:31 +0000 UTC

Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.0.0+unknown
Platforms:        linux/amd64, linux/amd64/v2, linux/arm64, linux/386
Labels:
 org.mobyproject.buildkit.worker.executor:             containerd
"""

INSPECT_AMD64_ONLY = INSPECT_DEFAULT.replace("linux/arm64, ", "")

# The docker driver on the containerd image store (docker 26, buildx 0.13 on the test bed).
INSPECT_CONTAINERD = INSPECT_DEFAULT + """\
 org.mobyproject.buildkit.worker.containerd.namespace: moby
 org.mobyproject.buildkit.worker.snapshotter:          overlayfs
"""

INSPECT_CONTAINER = """\
Name:          deploykit
Driver:        docker-container

Nodes:
Name:      deploykit0
Endpoint:  unix:///var/run/docker.sock
Status:    running
Platforms: linux/amd64*, linux/arm64, linux/arm/v7
"""

SUCCESS_OUTPUT = """\
#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 230B done
#1 DONE 0.0s

#2 [linux/amd64 internal] load metadata for 127.0.0.1:5000/testbed/busybox:latest
#2 DONE 0.0s

#3 [linux/amd64 1/3] FROM 127.0.0.1:5000/testbed/busybox:latest@sha256:aa
#3 CACHED

#4 [linux/arm64 1/3] FROM 127.0.0.1:5000/testbed/busybox:latest@sha256:aa
#4 CACHED

#5 [linux/amd64 2/3] COPY index.html /www/index.html
#5 CACHED

#6 [linux/arm64 2/3] COPY index.html /www/index.html
#6 DONE 0.1s

#7 [linux/amd64 3/3] RUN echo built
#7 0.120 built
#7 DONE 0.2s

#8 [linux/arm64 3/3] RUN echo built
#8 0.410 built
#8 DONE 0.5s

#9 exporting to image
#9 CACHED
#9 DONE 0.1s
"""

FAILURE_OUTPUT = """\
#0 building with "default" instance using docker driver

#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s

#5 [linux/amd64 2/3] RUN echo boom-marker && false
#5 0.151 boom-marker
#5 ERROR: process "/bin/sh -c echo boom-marker && false" did not complete successfully: exit code: 1

#6 [linux/arm64 2/3] RUN echo boom-marker && false
#6 CANCELED
------
 > [linux/amd64 2/3] RUN echo boom-marker && false:
0.151 boom-marker
------
Dockerfile:3
--------------------
   3 | >>> RUN echo boom-marker && false
--------------------
ERROR: failed to solve: process "/bin/sh -c echo boom-marker && false" did not complete \
successfully: exit code: 1
"""


class FakeActions:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.masked: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def notice(self, message: str, *, title: str = "") -> None:
        self.lines.append(f"notice: {title}: {message}")

    def warning(self, message: str, *, title: str = "") -> None:
        self.lines.append(f"warning: {title}: {message}")

    def mask(self, secret: str | None) -> None:
        if secret:
            self.masked.append(secret)

    def redact(self, text: str) -> str:
        for secret in self.masked:
            text = text.replace(secret, "***")
        return text


class FakeDocker:
    """Answers ``run`` from a list of (argv prefix, returncode, stdout) rules."""

    def __init__(self, rules: Sequence[tuple[Sequence[str], int, str]],
                 env: dict[str, str] | None = None,
                 on_build: Callable[[list[str]], None] | None = None) -> None:
        self.rules = list(rules)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.actions = FakeActions()
        self.env = env or {}
        self.on_build = on_build

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        self.calls.append((argv, kwargs))
        if argv[:2] == ["buildx", "build"] and self.on_build:
            self.on_build(argv)
        for prefix, code, out in self.rules:
            if argv[:len(prefix)] == list(prefix):
                if kwargs.get("check", True) and code:
                    raise AssertionError(f"check=True call failed: {argv}")
                return subprocess.CompletedProcess(["docker", *argv], code, out, out)
        raise AssertionError(f"unexpected docker call {argv}")


def request(**changes: Any) -> BuildRequest:
    base: dict[str, Any] = dict(
        context="/ws/app", dockerfile="/ws/app/Dockerfile",
        platforms=("linux/amd64", "linux/arm64"), push=True, oci_layout="/tmp/oci",
        cache="registry", cache_ref="127.0.0.1:5001/org/app:buildcache")
    base.update(changes)
    return BuildRequest(**base)


# -- argv ------------------------------------------------------------------------
def test_build_argv_is_exact_with_every_input() -> None:
    req = request(
        labels=(("org.opencontainers.image.revision", "abc123"),
                ("org.opencontainers.image.title", "app")),
        build_args=(("PY", "3.12"), ("EMPTY", "")),
        secrets=(("npm", "NPM_TOKEN"),),
        target="runtime", provenance=True, sbom=False,
        builder=Builder("deploykit", "docker-container", ("linux/amd64",), created=True))
    assert buildx.build_argv(req, "/tmp/m.json") == [
        "buildx", "build", "--builder", "deploykit", "--progress=plain",
        "--platform", "linux/amd64,linux/arm64", "-f", "/ws/app/Dockerfile",
        "--metadata-file", "/tmp/m.json", "--provenance=true", "--sbom=false",
        "--label", "org.opencontainers.image.revision=abc123",
        "--label", "org.opencontainers.image.title=app",
        "--build-arg", "PY=3.12", "--build-arg", "EMPTY=",
        "--secret", "id=npm,env=NPM_TOKEN",
        "--target", "runtime",
        "--cache-from", "type=registry,ref=127.0.0.1:5001/org/app:buildcache",
        "--cache-to", "type=registry,ref=127.0.0.1:5001/org/app:buildcache,mode=max",
        "--output", "type=oci,dest=/tmp/oci,tar=false", "/ws/app",
    ]


def test_validation_build_neither_pushes_nor_exports_cache() -> None:
    argv = buildx.build_argv(request(push=False), "/m.json")
    assert "--push" not in argv
    assert "-t" not in argv
    assert argv[-5:] == ["--cache-from",
                         "type=registry,ref=127.0.0.1:5001/org/app:buildcache",
                         "--output", "type=cacheonly", "/ws/app"]


@pytest.mark.parametrize(("cache", "export", "flags"), [
    ("registry", True, ["--cache-from", "type=registry,ref=r:buildcache",
                        "--cache-to", "type=registry,ref=r:buildcache,mode=max"]),
    ("gha", True, ["--cache-from", "type=gha", "--cache-to", "type=gha,mode=max"]),
    ("gha", False, ["--cache-from", "type=gha"]),
    ("none", True, []),
])
def test_cache_flags(cache: str, export: bool, flags: list[str]) -> None:
    assert buildx.cache_flags(cache, "r:buildcache", export=export) == flags


def test_a_registry_cache_not_there_yet_is_exported_but_not_imported() -> None:
    """buildx would print `ERROR: failed to configure registry cache importer` for it."""
    assert buildx.cache_flags("registry", "r:buildcache", export=True, cache_exists=False) \
        == ["--cache-to", "type=registry,ref=r:buildcache,mode=max"]
    argv = buildx.build_argv(request(cache_exists=False), "/m.json")
    assert "--cache-from" not in argv


def test_secret_values_and_gha_token_stay_out_of_argv() -> None:
    env = {"NPM_TOKEN": "s3cr3t-npm-value", "ACTIONS_CACHE_URL": "https://cache.example/",
           "ACTIONS_RUNTIME_TOKEN": "runtime-tok-value", "UNRELATED": "unrelated-value"}
    req = request(secrets=(("npm", "NPM_TOKEN"),), cache="gha")
    argv = buildx.build_argv(req, "/m.json")
    assert not any(value in " ".join(argv) for value in env.values())
    assert buildx.build_env(req, env) == {
        "NPM_TOKEN": "s3cr3t-npm-value", "ACTIONS_CACHE_URL": "https://cache.example/",
        "ACTIONS_RUNTIME_TOKEN": "runtime-tok-value"}


def test_missing_secret_variable_names_the_input() -> None:
    with pytest.raises(InputError) as info:
        buildx.build_env(request(secrets=(("npm", "NPM_TOKEN"),)), {})
    assert info.value.message == ("Input 'build_secrets': environment variable NPM_TOKEN "
                                  "is not set.")
    assert "secrets.NPM_TOKEN" in info.value.hint


def test_gha_cache_outside_actions_is_an_input_error() -> None:
    with pytest.raises(InputError) as info:
        buildx.build_env(request(cache="gha"), {"ACTIONS_CACHE_URL": "u"})
    assert info.value.message == ("Input 'cache': `gha` needs ACTIONS_RUNTIME_TOKEN, which "
                                  "only GitHub Actions sets.")


# -- builder ---------------------------------------------------------------------
def test_parse_inspect_reads_name_driver_platforms() -> None:
    assert buildx.parse_inspect(INSPECT_CONTAINER) == Builder(
        "deploykit", "docker-container", ("linux/amd64", "linux/arm64", "linux/arm/v7"))


def test_current_builder_is_used_when_it_lists_every_platform() -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_DEFAULT),
                         (["info"], 0, '[["driver-type","io.containerd.snapshotter.v1"]]')])
    builder = buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                                    machine="x86_64")
    assert builder.name == "default"
    assert builder.argv == ["--builder", "default"]
    assert [c[0] for c in docker.calls] == [
        ["buildx", "inspect"], ["info", "--format", "{{json .DriverStatus}}"]]
    assert docker.actions.lines == [
        "Using buildx builder default (docker): it builds linux/amd64, linux/arm64."]


def test_missing_platform_creates_a_container_builder_and_says_so(tmp_path: Path) -> None:
    docker = FakeDocker([
        (["buildx", "inspect", "deploykit", "--bootstrap"], 1, "no builder deploykit"),
        (["buildx", "inspect", "deploykit"], 0, INSPECT_CONTAINER),
        (["buildx", "inspect"], 0, INSPECT_AMD64_ONLY),
        (["buildx", "create"], 0, "deploykit"),
    ])
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64\n")
    builder = buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                                    machine="x86_64", binfmt_dir=str(tmp_path))
    assert builder == Builder("deploykit", "docker-container",
                              ("linux/amd64", "linux/arm64", "linux/arm/v7"), created=True)
    assert [c[0] for c in docker.calls] == [
        ["buildx", "inspect"],
        ["buildx", "inspect", "deploykit", "--bootstrap"],
        ["buildx", "create", "--name", "deploykit", "--driver", "docker-container",
         "--driver-opt", "network=host", "--bootstrap"],
        ["buildx", "inspect", "deploykit"],
    ]
    assert docker.actions.lines == [
        "notice: buildx builder: Builder default cannot be used (it lists no linux/arm64); "
        "using a docker-container builder `deploykit` instead."]


def test_missing_platform_without_qemu_fails_before_creating_anything(tmp_path: Path) -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_AMD64_ONLY)])
    with pytest.raises(BuildError) as info:
        buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                              machine="x86_64", binfmt_dir=str(tmp_path))
    assert info.value.message == (
        "Input 'platforms': linux/arm64 cannot be built on this x86_64 runner: QEMU is not "
        "registered in binfmt_misc and builder default does not list it.")
    assert info.value.title == "QEMU missing for multi-arch build"
    assert [c[0] for c in docker.calls] == [["buildx", "inspect"]]


def test_classic_image_store_needs_a_container_builder_for_multi_platform() -> None:
    docker = FakeDocker([
        (["buildx", "inspect", "deploykit", "--bootstrap"], 0, INSPECT_CONTAINER),
        (["buildx", "inspect"], 0, INSPECT_DEFAULT),
        (["info"], 0, '[["Backing Filesystem","extfs"]]'),
    ])
    builder = buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                                    machine="x86_64")
    assert builder.name == "deploykit"
    assert docker.actions.lines[0] == (
        "notice: buildx builder: Builder default cannot be used (the docker driver without "
        "the containerd image store cannot do multi-platform builds); using a "
        "docker-container builder `deploykit` instead.")


def test_classic_image_store_needs_a_container_builder_for_cache_export() -> None:
    docker = FakeDocker([
        (["buildx", "inspect", "deploykit", "--bootstrap"], 0, INSPECT_CONTAINER),
        (["buildx", "inspect"], 0, INSPECT_DEFAULT),
        (["info"], 0, '[["Backing Filesystem","extfs"]]'),
    ])
    builder = buildx.select_builder(docker, ("linux/amd64",),  # type: ignore[arg-type]
                                    exports_cache=True, machine="x86_64")
    assert builder.name == "deploykit"
    assert "cannot do cache export" in docker.actions.lines[0]


def test_classic_image_store_builds_one_platform_without_cache_export() -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_DEFAULT)])
    builder = buildx.select_builder(docker, ("linux/amd64",),  # type: ignore[arg-type]
                                    exports_cache=False, machine="x86_64")
    assert builder.name == "default"
    assert [c[0] for c in docker.calls] == [["buildx", "inspect"]]


def test_select_builder_uses_the_probe_s_answers_asked_ahead() -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_DEFAULT),
                         (["info"], 0, '[["driver-type","io.containerd.snapshotter.v1"]]')])
    with buildx.BuilderProbe(docker, store=True) as probe:  # type: ignore[arg-type]
        builder = buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                                        machine="x86_64", probe=probe)
    assert builder.name == "default"
    assert sorted(tuple(c[0]) for c in docker.calls) == [  # each asked once, by the probe
        ("buildx", "inspect"), ("info", "--format", "{{json .DriverStatus}}")]
    assert all(kwargs["give_up_at"]() is not None for _, kwargs in docker.calls)  # left


def test_select_builder_asks_the_store_itself_when_the_probe_did_not() -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_DEFAULT),
                         (["info"], 0, '[["Backing Filesystem","extfs"]]'),
                         (["buildx", "inspect", "deploykit", "--bootstrap"], 0,
                          INSPECT_CONTAINER)])
    with buildx.BuilderProbe(docker, store=False) as probe:  # type: ignore[arg-type]
        builder = buildx.select_builder(docker, ("linux/amd64",),  # type: ignore[arg-type]
                                        exports_cache=True, machine="x86_64", probe=probe)
    assert builder.name == "deploykit"
    assert [c[0] for c in docker.calls] == [
        ["buildx", "inspect"], ["info", "--format", "{{json .DriverStatus}}"],
        ["buildx", "inspect", "deploykit", "--bootstrap"]]


def test_a_failed_inspect_asked_ahead_is_raised_where_it_is_read() -> None:
    docker = FakeDocker([(["buildx", "inspect"], 1, "ERROR: no builder")])
    with buildx.BuilderProbe(docker, store=False) as probe:  # type: ignore[arg-type]
        with pytest.raises(AssertionError, match="check=True call failed"):
            buildx.select_builder(docker, ("linux/amd64",),  # type: ignore[arg-type]
                                  machine="x86_64", probe=probe)
    assert docker.calls[0][1]["check"] is True  # a failed inspect stays an error


def test_parse_inspect_reads_the_containerd_store_from_the_worker_labels() -> None:
    assert buildx.parse_inspect(INSPECT_CONTAINERD).containerd_store is True
    assert buildx.parse_inspect(INSPECT_DEFAULT).containerd_store is False
    assert buildx.parse_inspect(INSPECT_CONTAINERD).store_unknown is False
    assert buildx.parse_inspect(INSPECT_DEFAULT).store_unknown is True
    assert buildx.parse_inspect(INSPECT_CONTAINER).store_unknown is False


@pytest.mark.parametrize("ahead", [False, True])
def test_a_builder_labelled_containerd_needs_no_docker_info(ahead: bool) -> None:
    docker = FakeDocker([(["buildx", "inspect"], 0, INSPECT_CONTAINERD)])
    with buildx.BuilderProbe(docker, store=True) as probe:  # type: ignore[arg-type]
        builder = buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                                        exports_cache=True, machine="x86_64",
                                        probe=probe if ahead else None)
    assert builder.name == "default"
    assert [c[0] for c in docker.calls] == [["buildx", "inspect"]] * (2 - ahead)


def test_failed_builder_creation_explains_the_buildkit_image() -> None:
    docker = FakeDocker([
        (["buildx", "inspect", "deploykit", "--bootstrap"], 1, "not found"),
        (["buildx", "inspect"], 0, INSPECT_DEFAULT),
        (["info"], 0, "[]"),
        (["buildx", "create"], 1, "ERROR: pull access denied for moby/buildkit"),
    ])
    with pytest.raises(BuildError) as info:
        buildx.select_builder(docker, ("linux/amd64", "linux/arm64"),  # type: ignore[arg-type]
                              machine="x86_64")
    assert info.value.message == ("Could not create the docker-container builder "
                                  "`deploykit`: ERROR: pull access denied for moby/buildkit")
    assert "moby/buildkit" in info.value.hint


def test_foreign_platform_without_qemu_fails_early_with_the_fix(tmp_path: Path) -> None:
    builder = Builder("default", "docker", ("linux/amd64",))
    with pytest.raises(BuildError) as info:
        buildx.check_emulation(builder, ("linux/amd64", "linux/arm64", "linux/arm/v7"),
                               machine="x86_64", binfmt_dir=str(tmp_path))
    assert info.value.message == (
        "Input 'platforms': linux/arm64, linux/arm/v7 cannot be built on this x86_64 "
        "runner: QEMU is not registered in binfmt_misc and builder default does not list "
        "them.")
    assert "docker run --privileged --rm tonistiigi/binfmt --install all" in info.value.hint
    assert "apt-get install qemu-user-static binfmt-support" in info.value.hint


def test_disabled_binfmt_handler_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "qemu-aarch64").write_text("disabled\n")
    assert not buildx.qemu_registered("linux/arm64", str(tmp_path))
    (tmp_path / "qemu-aarch64").write_text("enabled\n")
    assert buildx.qemu_registered("linux/arm64", str(tmp_path))


def test_platform_listed_by_builder_needs_no_binfmt_file(tmp_path: Path) -> None:
    builder = Builder("default", "docker", ("linux/amd64", "linux/arm64"))
    buildx.check_emulation(builder, ("linux/amd64", "linux/arm64"), machine="x86_64",
                           binfmt_dir=str(tmp_path))


@pytest.mark.parametrize(("machine", "foreign"), [
    ("x86_64", ["linux/arm64", "linux/arm/v7"]),
    ("aarch64", ["linux/amd64"]),
])
def test_foreign_platforms_depend_on_the_host(machine: str, foreign: list[str]) -> None:
    wanted = ("linux/amd64", "linux/arm64", "linux/arm/v7")
    assert buildx.foreign_platforms(wanted, machine) == foreign


# -- progress output -----------------------------------------------------------
def test_cache_hits_count_dockerfile_steps_but_not_from() -> None:
    assert buildx.count_cache_hits(SUCCESS_OUTPUT) == (1, 4)


def test_failing_step_output_keeps_the_step_and_the_final_error() -> None:
    assert buildx.failing_step_output(FAILURE_OUTPUT) == (
        "#5 [linux/amd64 2/3] RUN echo boom-marker && false\n"
        "#5 0.151 boom-marker\n"
        '#5 ERROR: process "/bin/sh -c echo boom-marker && false" did not complete '
        "successfully: exit code: 1\n"
        'ERROR: failed to solve: process "/bin/sh -c echo boom-marker && false" did not '
        "complete successfully: exit code: 1")


def test_failing_step_output_falls_back_to_the_last_lines() -> None:
    text = "\n".join(f"line {n}" for n in range(50))
    assert buildx.failing_step_output(text) == "\n".join(f"line {n}" for n in range(20, 50))


def test_failing_step_output_keeps_only_the_last_thirty_step_lines() -> None:
    body = "\n".join(f"#4 0.{n:03d} out {n}" for n in range(40))
    text = f"#4 [linux/amd64 2/2] RUN loop\n{body}\n#4 ERROR: exit code: 1\nERROR: failed"
    lines = buildx.failing_step_output(text).splitlines()
    assert lines[0] == "#4 0.011 out 11"
    assert lines[-2:] == ["#4 ERROR: exit code: 1", "ERROR: failed"]
    assert len(lines) == 31


# -- run_build -----------------------------------------------------------------
def _write_metadata(argv: list[str]) -> None:
    path = argv[argv.index("--metadata-file") + 1]
    Path(path).write_text(json.dumps({
        "containerimage.digest": "sha256:" + "a" * 64,
        "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.index.v1+json",
                                      "digest": "sha256:" + "a" * 64, "size": 1607},
    }))


def test_run_build_reads_digest_and_cache_hits() -> None:
    docker = FakeDocker([(["buildx", "build"], 0, SUCCESS_OUTPUT)],
                        env={"NPM_TOKEN": "npm-secret-value"}, on_build=_write_metadata)
    result = buildx.run_build(docker, request(secrets=(("npm", "NPM_TOKEN"),)))  # type: ignore[arg-type]
    assert result.digest == "sha256:" + "a" * 64
    assert result.descriptor["size"] == 1607
    assert (result.cached_steps, result.total_steps) == (1, 4)
    argv, kwargs = docker.calls[0]
    assert kwargs == {"stream": True, "check": False,
                      "extra_env": {"NPM_TOKEN": "npm-secret-value"}}
    assert "npm-secret-value" not in argv
    assert docker.actions.masked == ["npm-secret-value"]


def test_failed_build_raises_build_error_with_the_step_output() -> None:
    docker = FakeDocker([(["buildx", "build"], 1, FAILURE_OUTPUT)])
    with pytest.raises(BuildError) as info:
        buildx.run_build(docker, request())  # type: ignore[arg-type]
    message = info.value.message
    assert message.startswith("docker buildx build failed (exit 1):\n"
                              "#5 [linux/amd64 2/3] RUN echo boom-marker && false\n"
                              "#5 0.151 boom-marker\n")
    assert "#6 CANCELED" not in message
    assert "Traceback" not in str(info.value)


def test_ghcr_write_package_denial_is_a_denied_error_with_the_fix() -> None:
    output = ("#12 pushing layers 0.3s done\n"
              "ERROR: failed to solve: failed to push ghcr.io/org/app:v1.2.3: denied: "
              "permission_denied: write_package\n")
    docker = FakeDocker([(["buildx", "build"], 1, output)])
    with pytest.raises(DeniedError) as info:
        buildx.run_build(docker, request())  # type: ignore[arg-type]
    assert info.value.message == ("ghcr.io denied access to push ghcr.io/org/app:v1.2.3: "
                                  "denied: permission_denied: write_package")
    assert "Manage Actions access" in info.value.hint
    assert "write:packages" in info.value.hint


# -- a registry that fails the push (5xx, 429) is pushed to again ---------------------
PUSH_500 = ("#14 exporting to image\n"
            "ERROR: failed to solve: failed to push 127.0.0.1:5001/org/app:v1.2.3: "
            "unexpected status from HEAD request to "
            "http://127.0.0.1:5001/v2/org/app/manifests/v1.2.3: 500 Internal Server Error\n")


class SequenceDocker(FakeDocker):
    """``buildx build`` answers (returncode, output) from a list, in order."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        super().__init__([], on_build=_write_metadata)
        self.answers = answers

    def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(args), kwargs))
        code, out = self.answers.pop(0)
        if code == 0 and self.on_build:
            self.on_build(list(args))
        return subprocess.CompletedProcess(["docker", *args], code, out, out)


@pytest.fixture
def no_push_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildx, "PUSH_RETRY_WAIT", tenacity.wait_none())


def test_a_push_the_registry_failed_is_pushed_again(no_push_wait: None) -> None:
    docker = SequenceDocker([(1, PUSH_500), (0, SUCCESS_OUTPUT)])
    result = buildx.run_build(docker, request())  # type: ignore[arg-type]
    assert result.digest == "sha256:" + "a" * 64
    assert len(docker.calls) == 2
    assert docker.actions.lines[-1] == (
        "warning: Registry error during the push: The registry failed the push: unexpected "
        "status from HEAD request to http://127.0.0.1:5001/v2/org/app/manifests/v1.2.3: 500 "
        "Internal Server Error. Pushing again (attempt 2 of 3).")


def test_a_registry_that_keeps_failing_stops_after_three_pushes(no_push_wait: None) -> None:
    docker = SequenceDocker([(1, PUSH_500)] * 3)
    with pytest.raises(buildx.TransientPushError) as info:
        buildx.run_build(docker, request())  # type: ignore[arg-type]
    assert len(docker.calls) == 3
    assert info.value.message.endswith("500 Internal Server Error.")
    assert "status page" in info.value.hint


def test_a_failed_step_or_a_validation_build_is_never_retried(no_push_wait: None) -> None:
    docker = SequenceDocker([(1, FAILURE_OUTPUT)])
    with pytest.raises(BuildError):
        buildx.run_build(docker, request())  # type: ignore[arg-type]
    docker = SequenceDocker([(1, PUSH_500)])
    with pytest.raises(BuildError) as info:
        buildx.run_build(docker, request(push=False))  # type: ignore[arg-type]
    assert not isinstance(info.value, buildx.TransientPushError)
    assert len(docker.calls) == 1
