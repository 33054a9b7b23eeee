from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import deploykit.compose as compose_module
from deploykit.actions import Actions
from deploykit.compose import (
    EXPECTED_IMAGE_LINE,
    MARKER_ENV,
    MARKER_IMAGE,
    Compose,
    ComposeProject,
    check_services,
    host_path,
    image_environment,
    locate_compose_file,
    one_shot_services,
    project_directory,
    rewrite_bind_sources,
    start_project_load,
)
from deploykit.dockercli import config_parent
from deploykit.errors import ComposeError, DockerError, InputError, OneShotError
from deploykit.settings import load_settings

IMAGE = MARKER_IMAGE  # what `docker compose config` prints for the expected image line
DIGEST = "sha256:" + "a" * 64


def settings_for(workspace: Path, **inputs: str) -> Any:
    env = {"GITHUB_WORKSPACE": str(workspace), "GITHUB_REPOSITORY": "org/app"}
    env.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
    return load_settings(env, {"mode": "deploy"})


class FakeDocker:
    """Records argv and env of each call; answers from a queue."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], dict[str, str], bool]] = []
        self.log = io.StringIO()
        self.actions = Actions({}, stdout=self.log, stderr=self.log)

    def run(self, args: Sequence[str], *, extra_env: Mapping[str, str] | None = None,
            cwd: str | None = None, stream: bool = False, **_: Any
            ) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(args), dict(extra_env or {}), stream))
        answer = self.answers.pop(0) if self.answers else ""
        if isinstance(answer, Exception):
            raise answer
        return subprocess.CompletedProcess(list(args), 0, answer, "")

    def run_detached(self, args: Sequence[str], **kwargs: Any
                     ) -> subprocess.CompletedProcess[str]:
        """`up`: recorded as a streamed run (its output is followed from a file)."""
        return self.run(args, stream=True, **kwargs)


def compose_with(docker: FakeDocker, tmp_path: Path, name: str = "") -> Compose:
    return Compose(docker, tmp_path, tmp_path / "compose.yaml", name)  # type: ignore[arg-type]


# -- image variables -----------------------------------------------------------
def test_image_environment_pins_the_digest() -> None:
    assert image_environment("127.0.0.1:5000", "org/app", "v1.2.3", DIGEST) == {
        "IMAGE_REGISTRY": "127.0.0.1:5000", "IMAGE_REPO": "org/app",
        "IMAGE_TAG": f"v1.2.3@{DIGEST}"}
    # A bare digest: no `pinned` placeholder, the digest's own short name.
    assert image_environment("ghcr.io", "org/app", None, DIGEST)["IMAGE_TAG"] == \
        f"sha256-aaaaaaaaaaaa@{DIGEST}"


def test_pull_and_up_pass_their_timeouts(tmp_path: Path) -> None:
    seen: list[tuple[float | None, Any]] = []

    class Timed(FakeDocker):
        def run(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            seen.append((kwargs.get("timeout"), kwargs.get("give_up_at")))
            return super().run(args, **kwargs)

    compose = compose_with(Timed(), tmp_path, "shop")
    moment = lambda: 5.0  # noqa: E731
    compose.pull(timeout=900)
    compose.up(timeout=240, give_up_at=moment)
    assert 899 < seen[0][0] <= 900 and seen[0][1] is None  # type: ignore[operator]
    assert seen[1] == (240, moment)


def test_image_variables_win_over_service_env(tmp_path: Path) -> None:
    compose = compose_with(FakeDocker(), tmp_path).with_env(
        {"DATABASE_URL": "postgres://x", "IMAGE_TAG": "evil"},
        image_environment("r", "o/a", "v1", DIGEST))
    assert compose.env == {"DATABASE_URL": "postgres://x", "IMAGE_REGISTRY": "r",
                           "IMAGE_REPO": "o/a", "IMAGE_TAG": f"v1@{DIGEST}"}


# -- locating the file -----------------------------------------------------------
def test_default_compose_file_order(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    assert locate_compose_file(settings_for(tmp_path)) == tmp_path / "docker-compose.yml"
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    assert locate_compose_file(settings_for(tmp_path)) == tmp_path / "compose.yaml"


def test_project_dir_and_compose_file_are_relative_to_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "stack.yml").write_text("services: {}\n")
    settings = settings_for(tmp_path, project_dir="deploy", compose_file="stack.yml")
    assert project_directory(settings) == tmp_path / "deploy"
    assert locate_compose_file(settings) == tmp_path / "deploy" / "stack.yml"


def test_missing_compose_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"looked for compose\.yaml and docker-compose\.yml"):
        locate_compose_file(settings_for(tmp_path))
    with pytest.raises(InputError, match="Input 'compose_file'"):
        locate_compose_file(settings_for(tmp_path, compose_file="nope.yml"))
    with pytest.raises(InputError, match="Input 'project_dir'"):
        project_directory(settings_for(tmp_path, project_dir="missing"))


# -- validation -----------------------------------------------------------------
def test_services_whose_image_is_the_marker_are_found() -> None:
    config = {"services": {"app": {"image": IMAGE}, "worker": {"image": IMAGE},
                           "db": {"image": "postgres:16"}}}
    assert check_services(config, Path("c.yaml")) == ("app", "worker")


def test_build_next_to_the_deployed_image_is_refused() -> None:
    raw = {"services": {"app": {"image": IMAGE, "build": {"context": "."}}}}
    with pytest.raises(ComposeError, match=r"Service 'app' in c\.yaml runs the deployed image "
                       "but has `build:`") as info:
        check_services(raw, Path("c.yaml"))
    assert EXPECTED_IMAGE_LINE in info.value.hint


def test_build_on_another_service_is_allowed() -> None:
    raw = {"services": {"app": {"image": IMAGE}, "tools": {"build": {"context": "."}}}}
    assert check_services(raw, Path("c.yaml")) == ("app",)


def test_no_service_with_the_variables_shows_the_expected_line() -> None:
    raw = {"services": {"app": {"image": "ghcr.io/org/app:latest"}}}
    with pytest.raises(ComposeError) as info:
        check_services(raw, Path("c.yaml"))
    assert info.value.message == "No service in c.yaml runs the image deploykit deploys."
    assert "image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}" in info.value.hint


@pytest.mark.parametrize("image", [
    "ghcr.io/deploykit/image-repo:deploykit-image-tag",  # ghcr.io/${IMAGE_REPO}:${IMAGE_TAG}
    "image-registry.deploykit.invalid/org/app:v1",  # ${IMAGE_REGISTRY}/org/app:v1
    "ghcr.io/org/app:deploykit-image-tag",  # ghcr.io/org/app:${IMAGE_TAG}
])
def test_partial_use_of_the_variables_is_refused(image: str) -> None:
    config = {"services": {"app": {"image": image}}}
    with pytest.raises(ComposeError, match="uses the image variables only in part"):
        check_services(config, Path("c.yaml"))


def test_load_is_one_config_with_the_image_variables_set_to_markers(tmp_path: Path) -> None:
    config = {"name": "shop", "services": {"app": {"image": IMAGE}, "db": {"image": "pg"}}}
    docker = FakeDocker(json.dumps(config))
    project = compose_with(docker, tmp_path).load({"PORT": "8080", "IMAGE_TAG": "mine"})
    assert (project.name, project.services, project.image_services) == \
        ("shop", ("app", "db"), ("app",))
    [(argv, env, _)] = docker.calls
    assert argv == ["compose", "--ansi", "never", "--progress", "plain",
                    "--project-directory", str(tmp_path), "-f", str(tmp_path / "compose.yaml"),
                    "config", "--format", "json"]
    assert env == {"PORT": "8080", **MARKER_ENV}  # the markers win over the service env


def test_config_failure_is_a_compose_error(tmp_path: Path) -> None:
    docker = FakeDocker(DockerError("`docker compose` failed:\nyaml: line 3: bad"))
    with pytest.raises(ComposeError) as info:
        compose_with(docker, tmp_path).load({})
    assert info.value.message == (f"`docker compose config` rejected {tmp_path}/compose.yaml:\n"
                                  "yaml: line 3: bad")


# -- the calls ---------------------------------------------------------------------
def test_up_pull_and_ps_argv(tmp_path: Path) -> None:
    docker = FakeDocker("", "", "", '{"Service":"app","State":"running"}\n'
                        '{"Service":"worker","State":"running"}\n')
    compose = compose_with(docker, tmp_path, "shop").with_env(
        {}, image_environment("r", "o/a", "v1", DIGEST))
    compose.pull()
    compose.up()
    compose.up(force_recreate=True)
    rows = compose.ps()
    prefix = ["compose", "--ansi", "never", "--progress", "plain", "--project-directory",
              str(tmp_path), "-f", str(tmp_path / "compose.yaml"), "-p", "shop"]
    assert [call[0][len(prefix):] for call in docker.calls] == [
        ["pull", "--ignore-buildable"],
        ["up", "-d", "--no-build", "--remove-orphans"],
        ["up", "-d", "--no-build", "--remove-orphans", "--force-recreate"],
        ["ps", "--all", "--format", "json"]]
    assert all(call[0][:len(prefix)] == prefix for call in docker.calls)
    assert all(call[1]["IMAGE_TAG"] == f"v1@{DIGEST}" for call in docker.calls)
    assert [row["Service"] for row in rows] == ["app", "worker"]
    assert "docker-compose" not in json.dumps(docker.calls)


def test_ps_accepts_a_json_array(tmp_path: Path) -> None:
    docker = FakeDocker('[{"Service":"app"}]')
    assert compose_with(docker, tmp_path, "shop").ps() == [{"Service": "app"}]


def test_pull_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    docker = FakeDocker(DockerError("timeout"), DockerError("timeout"), "")
    compose_with(docker, tmp_path, "shop").pull()
    assert len(docker.calls) == 3


def test_compose_failure_names_the_command(tmp_path: Path) -> None:
    docker = FakeDocker(DockerError("`docker compose --ansi` failed:\nno such service: x"))
    with pytest.raises(DockerError) as info:
        compose_with(docker, tmp_path, "shop").up()
    assert info.value.message == "`docker compose up` failed for project shop:\nno such service: x"


def test_pull_gives_up_after_three_attempts(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    docker = FakeDocker(*(DockerError("manifest unknown") for _ in range(4)))
    with pytest.raises(DockerError, match="manifest unknown"):
        compose_with(docker, tmp_path, "shop").pull()
    assert len(docker.calls) == 3


# -- bind mounts from inside the action container ---------------------------------
MOUNTS = {"/github/workspace": "/home/runner/work/app/app",
          "/github/home": "/home/runner/work/_temp/_github_home",
          "/var/run/docker.sock": "/var/run/docker.sock"}


def test_host_path_uses_the_longest_matching_mount() -> None:
    assert host_path("/github/workspace/media", MOUNTS) == "/home/runner/work/app/app/media"
    assert host_path("/github/workspace", MOUNTS) == "/home/runner/work/app/app"
    assert host_path("/github/workspace2/x", MOUNTS) == "/github/workspace2/x"
    assert host_path("/srv/data", MOUNTS) == "/srv/data"
    nested = {**MOUNTS, "/github/workspace/cache": "/mnt/cache"}
    assert host_path("/github/workspace/cache/a", nested) == "/mnt/cache/a"


def test_rewrite_bind_sources_only_touches_binds_secrets_and_configs() -> None:
    resolved = {
        "name": "shop",
        "services": {
            "app": {"image": "r/o/a:v1@" + DIGEST, "volumes": [
                {"type": "bind", "source": "/github/workspace/media", "target": "/app/media"},
                {"type": "volume", "source": "data", "target": "/data"},
                {"type": "bind", "source": "/etc/localtime", "target": "/etc/localtime"}]},
            "worker": {"image": "r/o/a:v1@" + DIGEST}},
        "secrets": {"key": {"file": "/github/workspace/secrets/key"}},
        "configs": {"nginx": {"file": "/github/workspace/nginx.conf"}},
        "volumes": {"data": {"name": "shop_data"}},
    }
    rewritten = rewrite_bind_sources(resolved, MOUNTS)
    volumes = rewritten["services"]["app"]["volumes"]
    assert [v["source"] for v in volumes] == ["/home/runner/work/app/app/media", "data",
                                              "/etc/localtime"]
    assert rewritten["secrets"]["key"]["file"] == "/home/runner/work/app/app/secrets/key"
    assert rewritten["configs"]["nginx"]["file"] == "/home/runner/work/app/app/nginx.conf"
    assert rewritten["volumes"] == {"data": {"name": "shop_data"}}
    assert resolved["services"]["app"]["volumes"][0]["source"] == "/github/workspace/media"


def test_for_engine_without_mounts_is_the_project_itself(tmp_path: Path) -> None:
    compose = compose_with(FakeDocker(), tmp_path, "shop")
    with compose.for_engine({}) as used:
        assert used is compose


def test_for_engine_deploys_the_rewritten_resolved_config(tmp_path: Path) -> None:
    resolved = {"name": "shop", "services": {"app": {"image": "x", "volumes": [
        {"type": "bind", "source": "/github/workspace/media", "target": "/m"}]}}}
    docker = FakeDocker(json.dumps(resolved), "")
    compose = compose_with(docker, tmp_path, "shop").with_env(
        {"SECRET": "s3cret"}, image_environment("r", "o/a", "v1", DIGEST))
    with compose.for_engine(MOUNTS) as used:
        written = Path(used.file)
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
        # Where the next run removes it if this one is killed (dockercli.private_directory).
        assert written.parent.name.startswith(f"compose-{os.getpid()}-")
        assert written.parent.parent == config_parent()
        assert json.loads(written.read_text())["services"]["app"]["volumes"][0]["source"] == \
            "/home/runner/work/app/app/media"
        used.up()
    assert not written.exists() and not written.parent.exists()
    config_call, up_call = docker.calls
    assert config_call[0][-3:] == ["config", "--format", "json"]
    assert up_call[0][up_call[0].index("-f") + 1] == str(written)
    assert up_call[0][up_call[0].index("--project-directory") + 1] == str(tmp_path)
    assert up_call[1]["SECRET"] == "s3cret"


def test_for_engine_removes_the_file_on_error(tmp_path: Path) -> None:
    docker = FakeDocker('{"name": "shop", "services": {}}')
    compose = compose_with(docker, tmp_path, "shop")
    with pytest.raises(RuntimeError), compose.for_engine(MOUNTS) as used:
        path = Path(used.file)
        raise RuntimeError
    assert not path.exists()


# -- one-shot services (a migration before the release) ------------------------------
DJANGO = {"name": "shop", "services": {
    "migrate": {"image": IMAGE, "restart": "no",
                "depends_on": {"db": {"condition": "service_healthy"}}},
    "app": {"image": IMAGE, "depends_on": {
        "migrate": {"condition": "service_completed_successfully", "required": True},
        "db": {"condition": "service_healthy"}}},
    "worker": {"image": IMAGE, "depends_on": {
        "migrate": {"condition": "service_completed_successfully"}}},
    "db": {"image": "postgres:16"},
    "redis": {"image": "redis:7-alpine"},
}}


def test_one_shot_services_from_depends_on_conditions_and_labels() -> None:
    assert one_shot_services(DJANGO) == ("migrate",)
    labelled = {"services": {
        "app": {"image": IMAGE, "depends_on": {"db": {"condition": "service_started"}}},
        "db": {"image": "pg"},
        "warm": {"image": IMAGE, "labels": {"deploykit.one-shot": "true"}},
        "seed": {"image": IMAGE, "labels": ["deploykit.one-shot=True"]},
        "other": {"image": IMAGE, "labels": {"deploykit.one-shot": "false"}},
        "ghost": {"image": IMAGE, "depends_on": {
            "missing": {"condition": "service_completed_successfully"}}},
    }}
    assert one_shot_services(labelled) == ("seed", "warm")
    assert one_shot_services({"services": {"app": {"image": IMAGE}}}) == ()


def test_load_keeps_one_shot_services_out_of_the_image_services(tmp_path: Path) -> None:
    project = compose_with(FakeDocker(json.dumps(DJANGO)), tmp_path).load({})
    assert project.services == ("app", "db", "migrate", "redis", "worker")
    assert project.image_services == ("app", "worker")
    assert project.one_shot_services == ("migrate",)
    assert project.long_running == ("app", "db", "redis", "worker")


def test_a_project_of_one_shot_image_services_only_still_has_image_services(
        tmp_path: Path) -> None:
    raw = {"name": "jobs", "services": {
        "task": {"image": IMAGE, "labels": {"deploykit.one-shot": "true"}}}}
    project = compose_with(FakeDocker(json.dumps(raw)), tmp_path).load({})
    assert (project.image_services, project.one_shot_services) == (("task",), ("task",))


def django_project(tmp_path: Path) -> ComposeProject:
    return ComposeProject(tmp_path, tmp_path / "compose.yaml", "shop",
                          ("app", "db", "migrate", "redis", "worker"), ("app", "worker"),
                          ("migrate",))


def ps_row(state: str, code: int = 0, service: str = "migrate") -> str:
    return json.dumps({"Service": service, "Name": f"shop-{service}-1", "State": state,
                       "ExitCode": code}) + "\n" + json.dumps(
        {"Service": "db", "Name": "shop-db-1", "State": "running", "ExitCode": 0})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def commands(docker: FakeDocker) -> list[list[str]]:
    return [call[0][call[0].index("shop") + 1:] for call in docker.calls]


def test_up_release_without_one_shots_is_one_up(tmp_path: Path) -> None:
    docker = FakeDocker()
    project = replace(django_project(tmp_path), one_shot_services=())
    done = compose_with(docker, tmp_path, "shop").up_release(project, force_recreate=True)
    assert done == ()
    assert commands(docker) == [["up", "-d", "--no-build", "--remove-orphans",
                                 "--force-recreate"]]


def test_up_release_runs_the_one_shots_first_then_the_rest_without_them(
        tmp_path: Path) -> None:
    docker = FakeDocker("", ps_row("running"), ps_row("exited", 0), "")
    clock = Clock()
    done = compose_with(docker, tmp_path, "shop").up_release(
        django_project(tmp_path), one_shot_timeout=60, clock=clock, sleep=clock.sleep)
    assert done == ("migrate",)
    assert commands(docker) == [
        ["up", "-d", "--no-build", "migrate"],
        ["ps", "--all", "--format", "json"],
        ["ps", "--all", "--format", "json"],
        # --no-deps: migrate does not run a second time; db and redis are listed, so
        # compose starts them when they are missing and leaves them alone otherwise.
        ["up", "-d", "--no-build", "--remove-orphans", "--no-deps",
         "app", "db", "redis", "worker"]]
    log = docker.log.getvalue()
    assert "Waiting up to 60 s for the one-shot service(s) migrate to finish" in log
    assert "migrate (shop-migrate-1) exited with code 0." in log


def test_a_failing_one_shot_replaces_nothing_and_shows_its_logs(tmp_path: Path) -> None:
    logs = "Operations to perform:\n  Apply all migrations\n" \
           "django.db.utils.ProgrammingError: relation \"x\" does not exist\n"
    docker = FakeDocker("", ps_row("exited", 1), logs)
    clock = Clock()
    with pytest.raises(OneShotError) as info:
        compose_with(docker, tmp_path, "shop").up_release(
            django_project(tmp_path), one_shot_timeout=60, clock=clock, sleep=clock.sleep)
    assert commands(docker) == [
        ["up", "-d", "--no-build", "migrate"], ["ps", "--all", "--format", "json"],
        ["logs", "--no-color", "--no-log-prefix", "--tail", "40", "migrate"]]
    assert info.value.message == (
        "One-shot service migrate (shop-migrate-1) exited with code 1. Nothing else was "
        "replaced.\nLast lines of migrate:\nOperations to perform:\n  Apply all migrations"
        "\ndjango.db.utils.ProgrammingError: relation \"x\" does not exist")
    assert info.value.status == "failed"
    assert "==> Logs of shop-migrate-1 (migrate): exited with code 1" in docker.log.getvalue()


def test_a_one_shot_that_does_not_finish_in_time_replaces_nothing(tmp_path: Path) -> None:
    docker = FakeDocker("", *[ps_row("running")] * 10)
    clock = Clock()
    with pytest.raises(OneShotError) as info:
        compose_with(docker, tmp_path, "shop").up_release(
            django_project(tmp_path), one_shot_timeout=3, clock=clock, sleep=clock.sleep)
    assert info.value.message.startswith(
        "One-shot service(s) migrate did not finish within 3 s; nothing else was replaced")
    assert not any(c[0] == "up" and "--no-deps" in c for c in commands(docker))
    assert clock.now == 3


def test_a_cancel_stops_the_wait_for_the_one_shots_at_once(tmp_path: Path) -> None:
    docker = FakeDocker("", ps_row("running"), ps_row("running"), ps_row("running"))
    clock = Clock()
    signalled: list[float | None] = [None, 12.5]
    with pytest.raises(OneShotError) as info:
        compose_with(docker, tmp_path, "shop").up_release(
            django_project(tmp_path), one_shot_timeout=60, clock=clock, sleep=clock.sleep,
            give_up_at=lambda: signalled.pop(0) if len(signalled) > 1 else signalled[0])
    assert info.value.message.startswith(
        "Cancelled while the one-shot service(s) migrate ran: nothing else was replaced")
    assert info.value.title == "Deploy cancelled"
    assert [c[0] for c in commands(docker)] == ["up", "ps", "ps"]
    assert clock.now == 1


def test_restore_brings_back_the_image_services_only(tmp_path: Path) -> None:
    docker = FakeDocker()
    compose = compose_with(docker, tmp_path, "shop")
    compose.restore(django_project(tmp_path))
    compose.restore(replace(django_project(tmp_path), one_shot_services=()))
    assert commands(docker) == [["up", "-d", "--no-build", "--no-deps", "app", "worker"],
                                ["up", "-d", "--no-build", "--remove-orphans"]]


def test_compose_reads_only_the_projects_file(tmp_path: Path) -> None:
    """No override file: deploykit adds nothing to the configuration compose hashes, so a
    hand-run `docker compose up -d` of the same release recreates nothing (issue 22)."""
    docker = FakeDocker()
    compose = compose_with(docker, tmp_path, "shop")  # type: ignore[arg-type]
    compose.up()
    compose.restore(django_project(tmp_path))
    assert len(docker.calls) == 2
    for argv, _, _ in docker.calls:
        assert argv.count("-f") == 1 and argv[argv.index("-f") + 1] == str(compose.file)


# -- the config in the background (deploy_command starts it before the heavy imports) --
THREADED_PROJECT = ComposeProject(Path("."), Path("compose.yaml"), "shop", ("app",), ("app",))


@dataclass(frozen=True)
class GatedCompose:
    """A compose whose config finishes only when the test opens the gate."""

    gate: threading.Event
    seen_env: list[dict[str, str]] = field(default_factory=list)
    name: str = ""
    failure: Exception | None = None

    def load(self, service_env: dict[str, str]) -> ComposeProject:
        self.seen_env.append(service_env)
        if not self.gate.wait(timeout=10):
            raise AssertionError("the config ran in the caller's thread: it waited for itself")
        if self.failure:
            raise self.failure
        return THREADED_PROJECT


def deploy_settings() -> Any:
    return load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "org/app",
                          "INPUT_COMPOSE_ENV": "PORT=8080"})


def test_the_config_runs_in_the_background_until_its_result_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    compose = GatedCompose(gate)
    monkeypatch.setattr(compose_module, "compose_for", lambda settings, docker: compose)
    loading = start_project_load(deploy_settings(), docker=None)  # type: ignore[arg-type]
    assert not loading.done()  # returned while the config still runs
    gate.set()
    named, project = loading.result(timeout=10)
    assert (named.name, project) == ("shop", THREADED_PROJECT)
    assert compose.seen_env == [{"PORT": "8080"}]


def test_the_configs_error_is_raised_where_the_result_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    gate.set()
    failure = ComposeError("`docker compose config` rejected compose.yaml:\nyaml: bad")
    monkeypatch.setattr(compose_module, "compose_for",
                        lambda settings, docker: GatedCompose(gate, failure=failure))
    loading = start_project_load(deploy_settings(), docker=None)  # type: ignore[arg-type]
    with pytest.raises(ComposeError) as info:
        loading.result(timeout=10)
    assert info.value is failure
