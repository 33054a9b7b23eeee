"""The deploy's collaborators, built once from the settings and the environment.

:meth:`Runtime.create` is the one place that builds what the procedure and its engines
talk to: the docker CLI, the compose project (its ``docker compose config`` may already
run: :mod:`deploykit.deploy_command`), the registry client, the engine client (made on
first use), the GitHub recorder, the history store, the cancel guard, the clock and the
environment. Everything is passed down from here; tests hand in fakes with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from deploykit.actions import Actions
from deploykit.cancel import CancelGuard
from deploykit.compose import ProjectLoad, start_project_load
from deploykit.containers import (
    docker_client,
    own_container,
    own_container_candidates,
    running_services,
)
from deploykit.dockercli import DockerCLI
from deploykit.github import GitHubRecorder
from deploykit.health import HealthWatch, report_failures
from deploykit.history import History, state_directory
from deploykit.lock import Timeouts, create_config_only_network, engine_lock
from deploykit.prune import prune_after_deploy
from deploykit.registry import registry_client as settings_registry_client
from deploykit.settings import Settings
from deploykit.smoke import smoke_test
from deploykit.startfirst import StartFirst

if TYPE_CHECKING:
    from deploykit.compose import Compose, ComposeProject
    from deploykit.github_api import PyGithubRecorder


class Resolver(Protocol):
    def resolve(self, reference: str) -> str: ...


def registry_client(settings: Settings, actions: Actions) -> Resolver:
    return settings_registry_client(settings, actions)


@dataclass
class Runtime:
    """One deploy's collaborators (see the module docstring)."""

    settings: Settings
    actions: Actions
    environ: Mapping[str, str]
    docker: DockerCLI
    project_load: ProjectLoad
    github: PyGithubRecorder | None
    history: History
    cancel: CancelGuard
    clock: Callable[[], float]
    hostname: str
    registry_client: Callable[[Settings, Actions], Resolver] = registry_client
    engine_client: Callable[[Mapping[str, str]], Any] = docker_client
    engine_lock: Callable[..., Any] = engine_lock
    own_container: Callable[[Any, Iterable[str]], dict[str, Any] | None] = own_container
    running_services: Callable[..., Any] = running_services
    health_watch: Callable[..., Any] = HealthWatch
    report_failures: Callable[[Any, Any, Actions], None] = report_failures
    smoke_test: Callable[..., Any] = smoke_test
    mark_network: Callable[[Any, str, Mapping[str, str]], str] = create_config_only_network
    prune: Callable[[Runtime, str, Any], None] = prune_after_deploy
    start_first_steps: Callable[[Any, DockerCLI, str], StartFirst] = StartFirst
    _engine: Any = field(default=None, init=False, repr=False)
    _own: tuple[dict[str, Any] | None] | None = field(default=None, init=False, repr=False)
    _project: tuple[Compose, ComposeProject] | None = field(default=None, init=False,
                                                            repr=False)

    @classmethod
    def create(cls, settings: Settings, actions: Actions, env: Mapping[str, str] | None = None,
               *, docker: DockerCLI | None = None, project: ProjectLoad | None = None,
               ) -> Runtime:
        environ = dict(os.environ if env is None else env)
        docker = docker or DockerCLI(actions, environ)
        actions.mask_env(settings.compose_env)  # what can be a secret; a port stays readable
        return cls(
            settings=settings, actions=actions, environ=environ, docker=docker,
            project_load=project or start_project_load(settings, docker),
            github=GitHubRecorder.from_settings(settings, actions),
            history=History(state_directory(settings.state_dir), warn=lambda text:
                            actions.warning(text, title="Deploy history")),
            cancel=CancelGuard(time.monotonic), clock=time.monotonic,
            hostname=os.environ.get("HOSTNAME", ""))

    @property
    def image_name(self) -> str:
        return self.settings.image_name

    @property
    def timeouts(self) -> Timeouts:
        settings = self.settings
        return Timeouts.of(settings.health_timeout, settings.health_settle,
                           settings.smoke_timeout)

    @property
    def service_env(self) -> dict[str, str]:
        return dict(self.settings.compose_env)

    @property
    def engine(self) -> Any:
        """The Docker SDK client of the target engine, made once (on first use)."""
        if self._engine is None:
            self._engine = self.engine_client(self.environ)
        return self._engine

    def project(self) -> tuple[Compose, ComposeProject]:
        """The compose project, from its one ``docker compose config`` (local only)."""
        if self._project is None:
            self._project = self.project_load.result()
        return self._project

    def own_container_info(self) -> dict[str, Any] | None:
        """The container we run in, on this engine (the action container), or None."""
        if self._own is None:
            self._own = (self.own_container(self.engine.api, own_container_candidates(
                hostname=self.hostname)),)
        return self._own[0]

    def elapsed(self, since: float) -> float:
        return round(self.clock() - since, 1)


__all__ = ["Resolver", "Runtime", "registry_client"]
