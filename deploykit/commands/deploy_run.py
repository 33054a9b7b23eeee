"""The ``deploy`` and ``rollback`` commands (modes): the gate, then :mod:`deploykit.deploy`.

They start the deploy's one ``docker compose config`` in a thread *before* they import
:mod:`deploykit.deploy`: the config is a Go process on its own core (0.1-0.2 s on the
test bed), the import is Python loading the Docker SDK and requests (0.2-0.3 s), and the
two now overlap instead of adding up. The deploy takes the project (or the config's
error) where it validates the file, after the registry resolved the tag, as before. This
module imports nothing heavy; keep it that way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from deploykit.actions import Actions
from deploykit.compose import locate_compose_file, project_directory, start_project_load
from deploykit.dockercli import DockerCLI
from deploykit.errors import InputError, shown
from deploykit.policy import check_deploy_target, check_release
from deploykit.settings import DEPLOY, ROLLBACK, Settings


def deploy(settings: Settings, actions: Actions, env: Mapping[str, str]) -> None:
    """``deploykit deploy`` and mode=deploy; ``env``: the environment of its children."""
    target = check_deploy_target(environment=settings.environment,
                                 image_tag=settings.image_tag,
                                 production_environments=settings.production_environments)
    check_local(settings, env)
    docker = DockerCLI(actions, env)
    project = start_project_load(settings, docker)
    from deploykit.deploy.procedure import Deployment, Runtime  # noqa: PLC0415 (after the config started)

    runtime = Runtime.create(settings, actions, env, docker=docker, project=project)
    Deployment(runtime, DEPLOY).run(target)


def rollback(settings: Settings, actions: Actions, env: Mapping[str, str]) -> None:
    """``deploykit rollback``: the previous successful release, or `image_tag`."""
    check_local(settings, env)
    docker = DockerCLI(actions, env)
    project = start_project_load(settings, docker)
    from deploykit.deploy.procedure import Deployment, Runtime  # noqa: PLC0415 (after the config started)

    runtime = Runtime.create(settings, actions, env, docker=docker, project=project)
    deployment = Deployment(runtime, ROLLBACK)
    if settings.image_tag:
        target = check_deploy_target(environment=settings.environment,
                                     image_tag=settings.image_tag,
                                     production_environments=settings.production_environments)
    else:  # the release value itself goes through the gate: no `tag@digest` to parse again
        release = deployment.previous_release()
        target = check_release(environment=settings.environment, tag=release.tag,
                               digest=release.digest,
                               production_environments=settings.production_environments)
    deployment.run(target)


def check_local(settings: Settings, env: Mapping[str, str]) -> None:
    """The project's directory and compose file, before any registry or engine call: a
    typo in ``project_dir`` fails in milliseconds. In Actions, both must really be inside
    the workspace, symbolic links followed (settings checks the spelling only)."""
    compose_file = locate_compose_file(settings)
    if env.get("GITHUB_ACTIONS") != "true":
        return
    workspace = Path(settings.github.workspace or ".").resolve()
    for name, path in (("project_dir", project_directory(settings)),
                       ("compose_file", compose_file.resolve())):
        if not path.is_relative_to(workspace):
            given = settings.project_dir if name == "project_dir" else settings.compose_file
            raise InputError(name, f"{shown(given or path.name)} leads to {path}, outside "
                             f"the workspace {workspace} (through a symbolic link).",
                             hint=f"In Actions, `{name}` stays inside the workspace: check the "
                             "files out there, or point it at the link's target inside it.")


__all__ = ["check_local", "deploy", "rollback"]
