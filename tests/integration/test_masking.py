"""compose_env masking through a real deploy: a port is shown, a URL's password never.

Issue 14's acceptance: a deploy with ``compose_env: PORT=8080`` prints ``8080`` in its
logs; ``DATABASE_URL=postgres://u:pw@db/x`` never shows ``pw``. A one-shot service prints
the values (its logs are printed when it fails), and the smoke test prints its URL.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import TestRegistry, free_port, push_variants, remove_local_images
from tests.integration.test_deploy import VARIANTS, Project, deploy

COMPOSE = """\
services:
  migrate:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    labels: {deploykit.one-shot: "true"}
    environment: [PORT, DATABASE_URL, MIGRATE_EXIT]
    command: ["sh", "-c", "pw=$${DATABASE_URL#*://u:}; echo port=$$PORT url=$$DATABASE_URL \\
      password=$${pw%%@*}; exit $$MIGRATE_EXIT"]
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:${PORT}"]
    depends_on: {migrate: {condition: service_completed_successfully}}
    stop_grace_period: 1s
"""


@pytest.fixture
def project(open_registry: TestRegistry, base_image: str,
            tmp_path: Path) -> Iterator[Project]:
    repo = open_registry.repo("masking")
    digests = push_variants(open_registry.host, repo, base_image, {"v1": VARIANTS["v1"]}, tmp_path)
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "compose.yaml").write_text(COMPOSE)
    project = Project(f"dk-{uuid.uuid4().hex[:10]}", directory, free_port(), directory / "state",
                      open_registry.host, repo, digests)
    yield project
    subprocess.run(["docker", "compose", "-p", project.name, "down", "--remove-orphans",
                    "--timeout", "1"], capture_output=True, check=False, timeout=120)
    subprocess.run(["docker", "network", "rm", f"deploykit-lock-{project.name}"],
                   capture_output=True, check=False, timeout=60)
    remove_local_images(f"{open_registry.host}/{repo}")


def compose_env(project: Project, migrate_exit: int) -> str:
    return (f"APP_PORT={project.port}\nPORT=8080\nDATABASE_URL=postgres://u:pw@db/x\n"
            f"MIGRATE_EXIT={migrate_exit}")


def test_a_port_is_shown_and_a_url_password_never(project: Project,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, outputs, log = deploy(project, capsys, image_tag="v1", smoke_url=project.url,
                                compose_env=compose_env(project, 0))
    masks = [line for line in log.splitlines() if line.startswith("::add-mask::")]
    assert masks == ["::add-mask::postgres://u:pw@db/x", "::add-mask::pw"]
    assert code == 0, log
    assert f"http://127.0.0.1:{project.port}/" in log  # the smoke URL, port included

    # The one-shot service prints every value and fails: its logs are printed.
    code, outputs, log = deploy(project, capsys, image_tag="v1", force_redeploy="true",
                                compose_env=compose_env(project, 3))
    assert code == 1
    assert outputs["status"] == "failed"
    assert "port=8080 url=*** password=***" in log
    unmasked = [line for line in log.splitlines() if not line.startswith("::add-mask::")]
    assert [line for line in unmasked if "pw" in line] == []
