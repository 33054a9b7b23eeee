"""``Compose.load`` against the real ``docker compose config``: the one config of a deploy,
with the image variables set to markers, finds the services that run the deployed image
in every form compose accepts and refuses the misuses."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from deploykit.actions import Actions
from deploykit.compose import Compose
from deploykit.dockercli import DockerCLI
from deploykit.errors import ComposeError

FILE = """\
name: shop
services:
  app:
    image: {app}
    {extra}
  worker:
    image: ${{IMAGE_REGISTRY}}/${{IMAGE_REPO}}:${{IMAGE_TAG}}
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: ${{DB_PASSWORD:?set DB_PASSWORD}}
"""


def load(tmp_path: Path, app: str, extra: str = "",
         service_env: dict[str, str] | None = None) -> tuple[str, ...]:
    (tmp_path / "compose.yaml").write_text(FILE.format(app=app, extra=extra))
    actions = Actions({}, stdout=io.StringIO(), stderr=io.StringIO())
    compose = Compose(DockerCLI(actions, dict(os.environ)), tmp_path, tmp_path / "compose.yaml")
    project = compose.load({"DB_PASSWORD": "pw"} if service_env is None else service_env)
    assert project.name == "shop"
    return project.image_services


@pytest.mark.parametrize("app", [
    "${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}",
    "${IMAGE_REGISTRY:-ghcr.io}/${IMAGE_REPO}:${IMAGE_TAG:-staging-latest}",
    "$IMAGE_REGISTRY/$IMAGE_REPO:$IMAGE_TAG",
])
def test_the_forms_of_the_image_line_are_found(docker_engine: None, tmp_path: Path,
                                                app: str) -> None:
    assert load(tmp_path, app) == ("app", "worker")


@pytest.mark.parametrize(("app", "extra", "message"), [
    ("ghcr.io/${IMAGE_REPO}:${IMAGE_TAG}", "", "uses the image variables only in part"),
    ("${IMAGE_REGISTRY}/org/app:v1", "", "uses the image variables only in part"),
    ("${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}", "build: .",
     "runs the deployed image but has `build:`"),
])
def test_misuses_are_refused(docker_engine: None, tmp_path: Path, app: str, extra: str,
                             message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        load(tmp_path, app, extra)


def test_a_missing_variable_of_the_service_env_is_refused(docker_engine: None,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="set DB_PASSWORD"):
        load(tmp_path, "${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}", service_env={})


@pytest.mark.parametrize("plugin", ["compose", "buildx"])
def test_the_plugin_runs_directly_and_is_the_one_docker_runs(docker_engine: None,
                                                            plugin: str) -> None:
    """deploykit finds the binary the docker CLI itself runs for `docker <plugin>`."""
    actions = Actions({}, stdout=io.StringIO(), stderr=io.StringIO())
    cli = DockerCLI(actions, dict(os.environ))
    argv = cli.argv([plugin, "version"])
    assert Path(argv[0]).name == f"docker-{plugin}", argv
    direct = cli.run([plugin, "version"]).stdout
    through_docker = subprocess.run(["docker", plugin, "version"], capture_output=True,
                                    text=True, check=True, timeout=60).stdout
    assert direct == through_docker
