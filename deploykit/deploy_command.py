"""The ``deploy`` and ``rollback`` commands (modes): the gate, then :mod:`deploykit.deploy`.

They start the deploy's one ``docker compose config`` in a thread *before* they import
:mod:`deploykit.deploy`: the config is a Go process on its own core (0.1-0.2 s on the
test bed), the import is Python loading the Docker SDK and requests (0.2-0.3 s), and the
two now overlap instead of adding up. The deploy takes the project (or the config's
error) where it validates the file, after the registry resolved the tag, as before. This
module imports nothing heavy; keep it that way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from deploykit.actions import Actions
from deploykit.compose import Compose, ComposeProject, compose_for
from deploykit.dockercli import DockerCLI
from deploykit.policy import check_deploy_target
from deploykit.settings import DEPLOY, ROLLBACK, Settings

ProjectLoad = Future[tuple[Compose, ComposeProject]]


def deploy(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit deploy`` and mode=deploy."""
    target = check_deploy_target(environment=settings.environment,
                                 image_tag=settings.image_tag,
                                 production_environments=settings.production_environments)
    env = _env(args)
    docker = DockerCLI(actions, env)
    project = start_project_load(settings, docker)
    from deploykit.deploy import Deployment  # noqa: PLC0415 (after the config started)

    Deployment(settings, actions, DEPLOY, env=env, docker=docker, project=project).run(target)


def rollback(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit rollback``: the previous successful release, or `image_tag`."""
    env = _env(args)
    docker = DockerCLI(actions, env)
    project = start_project_load(settings, docker)
    from deploykit.deploy import Deployment  # noqa: PLC0415 (after the config started)

    deployment = Deployment(settings, actions, ROLLBACK, env=env, docker=docker,
                            project=project)
    image_tag = settings.image_tag or deployment.previous_release_tag()
    target = check_deploy_target(environment=settings.environment, image_tag=image_tag,
                                 production_environments=settings.production_environments)
    deployment.run(target)


def start_project_load(settings: Settings, docker: DockerCLI) -> ProjectLoad:
    """``docker compose config`` of the project, running in a thread; ``result()`` gives
    the compose project (named) or raises the error the config met."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose-config")
    try:
        return executor.submit(load_project, settings, docker)
    finally:
        executor.shutdown(wait=False)


def load_project(settings: Settings, docker: DockerCLI) -> tuple[Compose, ComposeProject]:
    compose = compose_for(settings, docker)
    project = compose.load(dict(settings.compose_env))
    return replace(compose, name=project.name), project


def _env(args: argparse.Namespace) -> Mapping[str, str]:
    env: Mapping[str, str] | None = getattr(args, "env", None)
    return dict(os.environ if env is None else env)


__all__ = ["ProjectLoad", "deploy", "load_project", "rollback", "start_project_load"]
