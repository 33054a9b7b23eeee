"""``docker compose`` (v2 only, never ``docker-compose``) for a pull-only deploy.

The three image variables are always passed in compose's process environment,
which wins over a ``.env`` file in compose v2 interpolation: a ``.env`` left in
the project directory cannot silently change the image. ``IMAGE_TAG`` is
``<tag>@sha256:...``, so the containers run exactly the resolved digest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tenacity

from deploykit.dockercli import DockerCLI, private_directory
from deploykit.errors import ComposeError, DockerError, InputError, OneShotError
from deploykit.settings import Settings

DEFAULT_FILES = ("compose.yaml", "docker-compose.yml")
EXPECTED_IMAGE_LINE = "image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}"
# What the image variables are set to in the one `docker compose config` that validates a
# project: a service runs the deployed image exactly when its interpolated image is
# MARKER_IMAGE (`${IMAGE_TAG:-staging-latest}` counts: the variable is set). `.invalid`
# names nothing that exists, and the config run connects nowhere.
MARKER_ENV = {"IMAGE_REGISTRY": "image-registry.deploykit.invalid",
              "IMAGE_REPO": "deploykit/image-repo", "IMAGE_TAG": "deploykit-image-tag"}
MARKER_IMAGE = "{IMAGE_REGISTRY}/{IMAGE_REPO}:{IMAGE_TAG}".format(**MARKER_ENV)
PULL_ATTEMPTS = 3
ONE_SHOT_LABEL = "deploykit.one-shot"
ONE_SHOT_CONDITION = "service_completed_successfully"
ONE_SHOT_LOG_TAIL = 40
_TRUE = ("true", "1", "yes")
_TOP_LEVEL = ("--ansi", "never", "--progress", "plain")


@dataclass(frozen=True)
class ComposeProject:
    """A validated compose project: which services run the deployed image.

    ``image_services`` keep running (their digest is verified and rolled back);
    ``one_shot_services`` run to completion before them (a migration).
    """

    directory: Path
    file: Path
    name: str
    services: tuple[str, ...]
    image_services: tuple[str, ...]
    one_shot_services: tuple[str, ...] = ()
    on_image: tuple[str, ...] = ()  # every service of the deployed image, one-shots too
    # `docker compose config --format json` with the marker image variables: the services'
    # own keys (deploy.update_config, ports) that the rollout strategy reads.
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def other_services(self) -> tuple[str, ...]:
        """The services of other images (a database, a cache)."""
        on_image = self.on_image or self.image_services
        return tuple(s for s in self.services if s not in on_image)

    @property
    def long_running(self) -> tuple[str, ...]:
        return tuple(s for s in self.services if s not in self.one_shot_services)


def image_environment(registry: str, repository: str, tag: str | None,
                      digest: str) -> dict[str, str]:
    """IMAGE_REGISTRY/IMAGE_REPO/IMAGE_TAG so that ``registry/repo:tag@digest`` is pulled.

    The engine resolves ``name:tag@digest`` by the digest alone; the tag is only a
    readable label. The compose line needs one: for a digest no tag is known for,
    it is ``sha256-<first 12 hex digits>`` (the digest's own name, as cosign spells it).
    """
    return {"IMAGE_REGISTRY": registry, "IMAGE_REPO": repository,
            "IMAGE_TAG": f"{tag or digest_label(digest)}@{digest}"}


def digest_label(digest: str) -> str:
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}-{hexdigits[:12]}"


# -- locating the project -------------------------------------------------------
def project_directory(settings: Settings) -> Path:
    workspace = Path(settings.github.workspace or ".")
    directory = (workspace / (settings.project_dir or ".")).resolve()
    if not directory.is_dir():
        raise InputError("project_dir", f"{directory} is not a directory.",
                         hint="`project_dir` is relative to the workspace (GITHUB_WORKSPACE).")
    return directory


def locate_compose_file(settings: Settings) -> Path:
    directory = project_directory(settings)
    if settings.compose_file:
        path = directory / settings.compose_file
        if not path.is_file():
            raise InputError("compose_file", f"{path} does not exist.",
                             hint="`compose_file` is relative to `project_dir`.")
        return path
    for name in DEFAULT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ComposeError(
        f"No compose file in {directory} (looked for {' and '.join(DEFAULT_FILES)}).",
        hint="Set `project_dir` to the directory of the compose project, or `compose_file`.")


# -- validation (pure, over `docker compose config` output) ----------------------
def check_services(config: Mapping[str, Any], file: Path) -> tuple[str, ...]:
    """Names of the services that run the deployed image; raises on a misuse.

    ``config`` is ``docker compose config`` interpolated with :data:`MARKER_ENV`."""
    services = config.get("services") or {}
    users = []
    for name, service in sorted(services.items()):
        image = str((service or {}).get("image") or "")
        if image == MARKER_IMAGE:
            if "build" in (service or {}):
                raise ComposeError(
                    f"Service {name!r} in {file} runs the deployed image but has `build:`; "
                    "a deploy never builds.",
                    hint=f"Remove `build:` from {name!r} and keep `{EXPECTED_IMAGE_LINE}`.")
            users.append(name)
        elif any(value in image for value in MARKER_ENV.values()):
            raise ComposeError(
                f"Service {name!r} in {file} uses the image variables only in part in its "
                "`image:`: deploykit could not pin it to the deployed digest.",
                hint=f"Write exactly `{EXPECTED_IMAGE_LINE}`.")
    if not users:
        raise ComposeError(
            f"No service in {file} runs the image deploykit deploys.",
            hint=f"Give the app's services (e.g. `app` and `worker`) the line\n"
                 f"    {EXPECTED_IMAGE_LINE}")
    return tuple(users)


def one_shot_services(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """Services that run to completion: another service waits for them with
    ``condition: service_completed_successfully``, or they carry the label
    ``deploykit.one-shot: "true"`` (a task nothing depends on)."""
    services = raw.get("services") or {}
    found = set()
    for name, definition in services.items():
        service = definition or {}
        if str(_labels(service).get(ONE_SHOT_LABEL, "")).strip().lower() in _TRUE:
            found.add(name)
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, Mapping):
            found.update(dependency for dependency, spec in depends_on.items()
                         if isinstance(spec, Mapping)
                         and spec.get("condition") == ONE_SHOT_CONDITION)
    return tuple(sorted(found & set(services)))


def _labels(service: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):  # `- key=value`, when not normalised by compose
        return dict(str(item).partition("=")[::2] for item in labels)
    return labels if isinstance(labels, Mapping) else {}


@dataclass(frozen=True)
class OneShotRun:
    """How one container of a one-shot service ended (``exit_code`` None: still running)."""

    service: str
    name: str
    state: str
    exit_code: int | None


def one_shot_runs(rows: Sequence[Mapping[str, Any]],
                  services: Sequence[str]) -> list[OneShotRun]:
    """The one-shot containers in ``docker compose ps --all --format json`` rows."""
    runs = []
    for row in rows:
        if row.get("Service") not in services:
            continue
        state = str(row.get("State") or "")
        done = state in ("exited", "dead")
        runs.append(OneShotRun(str(row["Service"]), str(row.get("Name") or row["Service"]),
                               state, int(row.get("ExitCode") or 0) if done else None))
    return runs


# -- bind mounts seen from inside the action container ---------------------------
def host_path(path: str, mounts: Mapping[str, str]) -> str:
    """Translate ``path`` (as this container sees it) to the host through the longest mount."""
    for destination in sorted(mounts, key=len, reverse=True):
        if path == destination or path.startswith(destination.rstrip("/") + "/"):
            return mounts[destination] + path[len(destination.rstrip("/")):]
    return path


def rewrite_bind_sources(config: Mapping[str, Any], mounts: Mapping[str, str]) -> dict[str, Any]:
    """A copy of a resolved compose config whose bind sources (and file-based secrets and
    configs, which compose also bind-mounts) are host paths."""
    result = json.loads(json.dumps(config))
    for service in (result.get("services") or {}).values():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict) and volume.get("type") == "bind" and volume.get("source"):
                volume["source"] = host_path(str(volume["source"]), mounts)
    for section in ("secrets", "configs"):
        for item in (result.get(section) or {}).values():
            if isinstance(item, dict) and item.get("file"):
                item["file"] = host_path(str(item["file"]), mounts)
    return dict(result)


# -- the compose CLI --------------------------------------------------------------
@dataclass(frozen=True)
class Compose:
    """One compose project, called with an explicit file, directory and project name
    (so COMPOSE_FILE or COMPOSE_PROJECT_NAME in a `.env` change nothing)."""

    docker: DockerCLI
    directory: Path
    file: Path
    name: str = ""
    env: Mapping[str, str] = field(default_factory=dict)

    def args(self, *command: str) -> list[str]:
        project = ["-p", self.name] if self.name else []
        return ["compose", *_TOP_LEVEL, "--project-directory", str(self.directory),
                "-f", str(self.file), *project, *command]

    def with_env(self, service_env: Mapping[str, str],
                 image_env: Mapping[str, str]) -> Compose:
        """The image variables are applied last: nothing can override them."""
        return replace(self, env={**service_env, **image_env})

    def _run(self, *command: str, stream: bool = False, timeout: float | None = None,
             give_up_at: Callable[[], float | None] | None = None,
             detached: bool = False) -> str:
        """``detached``: a step that must finish even if deploykit dies (``up``): its
        output goes through a file, not a pipe (:meth:`DockerCLI.run_detached`)."""
        try:
            args = self.args(*command)
            if detached:
                result = self.docker.run_detached(args, extra_env=self.env,
                                                  cwd=str(self.directory),
                                                  timeout=timeout, give_up_at=give_up_at)
            else:
                result = self.docker.run(args, extra_env=self.env, cwd=str(self.directory),
                                         stream=stream, timeout=timeout,
                                         give_up_at=give_up_at)
        except DockerError as exc:  # name the compose command, not its global flags
            detail = exc.message.partition("\n")[2] or exc.message
            raise DockerError(f"`docker compose {command[0]}` failed for project "
                              f"{self.name or self.directory.name}:\n{detail}",
                              hint=exc.hint) from exc
        return result.stdout

    def config(self) -> dict[str, Any]:
        try:
            output = self._run("config", "--format", "json")
        except DockerError as exc:
            detail = exc.message.partition("\n")[2] or exc.message
            raise ComposeError(f"`docker compose config` rejected {self.file}:\n{detail}",
                               hint="Run `docker compose config` in the project directory "
                               "to see the error.") from exc
        try:
            parsed: dict[str, Any] = json.loads(output)
        except json.JSONDecodeError as exc:
            raise ComposeError(f"`docker compose config` printed no JSON for {self.file}.",
                               hint="Use Docker Compose v2.20 or later.") from exc
        return parsed

    def load(self, service_env: Mapping[str, str]) -> ComposeProject:
        """The deploy's one ``docker compose config``: with ``service_env`` and the image
        variables set to :data:`MARKER_ENV`, it checks the file and its interpolation,
        finds the services that run the deployed image and learns the project's name."""
        config = self.with_env(service_env, MARKER_ENV).config()
        users = check_services(config, self.file)
        one_shots = one_shot_services(config)
        name = self.name or str(config.get("name") or "")
        if not name:
            raise ComposeError(f"Compose found no project name for {self.file}.",
                               hint="Set `project_name`.")
        image_services = tuple(s for s in users if s not in one_shots) or users
        return ComposeProject(self.directory, self.file, name,
                              tuple(sorted(config.get("services") or {})), image_services,
                              one_shots, users, config)

    def pull(self, services: Sequence[str] = (), *, timeout: float | None = None) -> None:
        """Pull ``services`` (none: all), retried; ``timeout`` bounds all attempts."""
        deadline = time.monotonic() + timeout if timeout else None

        def attempt() -> str:
            left = None if deadline is None else max(deadline - time.monotonic(), 1.0)
            return self._run("pull", "--ignore-buildable", *services, stream=True,
                             timeout=left)

        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(PULL_ATTEMPTS)
        if timeout:
            stop = stop | tenacity.stop_after_delay(timeout)
        retrying = tenacity.Retrying(
            stop=stop, wait=tenacity.wait_exponential(multiplier=2, max=20),
            retry=tenacity.retry_if_exception_type(DockerError), reraise=True)
        retrying(attempt)

    def up(self, *, force_recreate: bool = False, timeout: float | None = None,
           give_up_at: Callable[[], float | None] | None = None) -> None:
        recreate = ["--force-recreate"] if force_recreate else []
        self._run("up", "-d", "--no-build", "--remove-orphans", *recreate, detached=True,
                  timeout=timeout, give_up_at=give_up_at)

    def up_release(self, project: ComposeProject, *, force_recreate: bool = False,
                   one_shot_timeout: float = 600, timeout: float | None = None,
                   give_up_at: Callable[[], float | None] | None = None,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[str, ...]:
        """``up``; with one-shot services, in two steps, so that a failing migration
        replaces nothing. Returns the one-shot services that ran to completion.

        Compose itself would recreate (stop) the old ``app`` before it waits for
        ``migrate``. So: 1. ``up`` the one-shot services (and what they depend on) and
        wait until they exit; a non-zero exit raises :class:`OneShotError`, with the
        old release still running. 2. ``up --no-deps`` every other service, so that
        the one-shot services do not run a second time.
        """
        one_shots = self.up_one_shots(project, one_shot_timeout=one_shot_timeout,
                                      timeout=timeout, give_up_at=give_up_at, clock=clock,
                                      sleep=sleep)
        self.up_long_running(project, force_recreate=force_recreate, timeout=timeout,
                             give_up_at=give_up_at)
        return one_shots

    def up_one_shots(self, project: ComposeProject, *, one_shot_timeout: float = 600,
                     timeout: float | None = None,
                     give_up_at: Callable[[], float | None] | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[str, ...]:
        """Step 1 of :meth:`up_release` (nothing without one-shot services)."""
        one_shots = project.one_shot_services
        if not one_shots:
            return ()
        self._run("up", "-d", "--no-build", *one_shots, detached=True, timeout=timeout,
                  give_up_at=give_up_at)
        self.wait_for_one_shots(one_shots, timeout=one_shot_timeout, clock=clock, sleep=sleep,
                                cancelled=give_up_at)
        return one_shots

    def up_long_running(self, project: ComposeProject, *, force_recreate: bool = False,
                        timeout: float | None = None,
                        give_up_at: Callable[[], float | None] | None = None) -> None:
        """Step 2 of :meth:`up_release`: every service that keeps running."""
        if not project.one_shot_services:
            self.up(force_recreate=force_recreate, timeout=timeout, give_up_at=give_up_at)
            return
        recreate = ["--force-recreate"] if force_recreate else []
        self._run("up", "-d", "--no-build", "--remove-orphans", *self.selection(project),
                  *recreate, detached=True, timeout=timeout, give_up_at=give_up_at)

    @staticmethod
    def selection(project: ComposeProject, service: str | None = None) -> list[str]:
        """How :meth:`up_long_running` selects services, for a command that must give
        ``service``'s containers the same config hash. Compose leaves a ``depends_on``
        on an unselected service out of the hash (``--no-deps``)."""
        if project.one_shot_services:
            return ["--no-deps", *project.long_running]
        return [service] if service else []

    def wait_for_one_shots(self, services: Sequence[str], *, timeout: float,
                           clock: Callable[[], float] = time.monotonic,
                           sleep: Callable[[float], None] = time.sleep,
                           interval: float = 1.0,
                           cancelled: Callable[[], float | None] | None = None) -> None:
        """Until every container of ``services`` exited; raises OneShotError with the
        logs of the ones that exited non-zero, or when ``timeout`` passed first, or at
        once on a cancel (``cancelled()`` is not None): nothing else was replaced yet."""
        actions = self.docker.actions
        actions.info(f"Waiting up to {timeout:g} s for the one-shot service(s) "
                     f"{', '.join(services)} to finish; nothing else is replaced before.")
        deadline = clock() + timeout
        while True:
            runs = one_shot_runs(self.ps(), services)
            pending = [r for r in runs if r.exit_code is None]
            if runs and not pending:
                break
            if cancelled is not None and cancelled() is not None:
                raise OneShotError(
                    f"Cancelled while the one-shot service(s) {', '.join(services)} ran: "
                    "nothing else was replaced (the migration may still finish: see "
                    "`docker compose ps`).", title="Deploy cancelled")
            if clock() >= deadline:
                names = ", ".join(r.service for r in pending) or ", ".join(services)
                raise OneShotError(
                    f"One-shot service(s) {names} did not finish within {timeout:g} s; "
                    "nothing else was replaced (it may still run: see `docker compose ps`).",
                    hint="Raise `health_timeout` if the migration needs longer.")
            sleep(interval)
        for run in runs:
            actions.info(f"{run.service} ({run.name}) exited with code {run.exit_code}.")
        failed = [r for r in runs if r.exit_code != 0]
        if failed:
            raise OneShotError(
                "; ".join(f"One-shot service {r.service} ({r.name}) exited with code "
                          f"{r.exit_code}" for r in failed)
                + f". Nothing else was replaced.{self._last_lines(failed)}",
                hint="Its logs are in the log group above; the previous release still "
                "runs. Fix the migration and deploy a new image.")

    def _last_lines(self, failed: Sequence[OneShotRun]) -> str:
        """Each failed one-shot's last log lines, in a log group and in the error."""
        text = ""
        for run in failed:
            with self.docker.actions.group(f"Logs of {run.name} ({run.service}): exited "
                                           f"with code {run.exit_code}"):
                logs = self._run("logs", "--no-color", "--no-log-prefix", "--tail",
                                 str(ONE_SHOT_LOG_TAIL), run.service, stream=True)
            last = [line for line in logs.splitlines() if line.strip()][-3:]
            if last:
                text += f"\nLast lines of {run.service}:\n" + "\n".join(last)
        return text

    def restore(self, project: ComposeProject, *, services: Sequence[str] | None = None,
                timeout: float | None = None,
                give_up_at: Callable[[], float | None] | None = None) -> None:
        """Bring back the image's services of the previous release. With one-shot
        services only the long-running image services, ``--no-deps``: the one-shot
        services do not run again and the other services (db, redis) are not touched.
        ``services``: only these, ``--no-deps`` (what a start-first rollout recreated)."""
        if not project.one_shot_services and services is None:
            self.up(timeout=timeout, give_up_at=give_up_at)
            return
        self._run("up", "-d", "--no-build", "--no-deps",
                  *(project.image_services if services is None else services),
                  detached=True, timeout=timeout, give_up_at=give_up_at)

    def ps(self) -> list[dict[str, Any]]:
        output = self._run("ps", "--all", "--format", "json").strip()
        if output.startswith("["):
            rows: list[dict[str, Any]] = json.loads(output)
            return rows
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    @contextmanager
    def for_engine(self, mounts: Mapping[str, str]) -> Iterator[Compose]:
        """This project as the engine must see it.

        Inside the action container (``mounts`` maps its bind destinations to host
        sources), relative bind mounts resolve to container paths the engine does not
        know; deploy the fully resolved config with host sources instead. The file
        holds interpolated values (secrets too): 0600 in a private directory, removed
        afterwards, and by the next run when this one is killed.
        """
        if not mounts:
            yield self
            return
        resolved = rewrite_bind_sources(self.config(), mounts)
        directory = private_directory("compose")
        path = directory / "compose.resolved.json"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(resolved, handle)
            yield replace(self, file=path, name=self.name or str(resolved.get("name") or ""))
        finally:
            path.unlink(missing_ok=True)
            os.rmdir(directory)


# `docker compose config` of a project, running in a thread
ProjectLoad = Future[tuple[Compose, ComposeProject]]


def start_project_load(settings: Settings, docker: DockerCLI) -> ProjectLoad:
    """``docker compose config`` of the project, running in a thread; ``result()`` gives
    the compose project (named) or raises the error the config met."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose-config")
    try:
        return executor.submit(load_project, settings, docker)
    finally:
        executor.shutdown(wait=False)


def load_project(settings: Settings, docker: DockerCLI) -> tuple[Compose, ComposeProject]:
    """The project of ``settings``, checked by its one ``docker compose config``, named."""
    compose = compose_for(settings, docker)
    project = compose.load(dict(settings.compose_env))
    return replace(compose, name=project.name), project


def compose_for(settings: Settings, docker: DockerCLI) -> Compose:
    directory = project_directory(settings)
    return Compose(docker, directory, locate_compose_file(settings), settings.project_name)

