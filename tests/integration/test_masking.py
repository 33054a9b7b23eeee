"""compose_env masking through a real deploy: a port is shown, a URL's password never.

Issue 14's acceptance: a deploy with ``compose_env: PORT=8080`` prints ``8080`` in its
logs; ``DATABASE_URL=postgres://u:pw@db/x`` never shows ``pw``. A one-shot service prints
the values (its logs are printed when it fails), and the smoke test prints its URL.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.integration.conftest import TestRegistry, free_port, push_variants, remove_local_images
from tests.integration.test_deploy import VARIANTS, Project, deploy
from tests.runner_log import live_commands

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


# A one-shot that fails after printing a workflow command behind a carriage return.
CARRIAGE_RETURN_COMPOSE = """\
services:
  migrate:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    labels: {deploykit.one-shot: "true"}
    command: ["sh", "-c", "printf 'x\\\\r::error title=Forged::y\\\\n'; exit 3"]
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    depends_on: {migrate: {condition: service_completed_successfully}}
    stop_grace_period: 1s
"""


@pytest.fixture
def project(request: pytest.FixtureRequest, open_registry: TestRegistry, base_image: str,
            tmp_path: Path) -> Iterator[Project]:
    """The project of COMPOSE, or of the compose text given by indirect parametrization."""
    repo = open_registry.repo("masking")
    digests = push_variants(open_registry.host, repo, base_image, {"v1": VARIANTS["v1"]}, tmp_path)
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "compose.yaml").write_text(getattr(request, "param", COMPOSE))
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


# -- issue 20: text that reaches the runner ---------------------------------------------
@pytest.mark.parametrize("project", [CARRIAGE_RETURN_COMPOSE], indirect=True)
def test_a_carriage_return_in_a_failing_one_shots_log_is_no_annotation(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the runner read `::error title=Forged::y` after the `\\r` as an annotation."""
    code, outputs, log = deploy(project, capsys, image_tag="v1",
                                compose_env=f"APP_PORT={project.port}")
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "x\r::error title=Forged::y" in log  # printed, whole
    commands = live_commands(log)
    assert [line for line in commands if line.startswith("::error title=Forged")] == []
    assert [line.split("::")[1] for line in commands if line.startswith("::error")] == [
        "error title=One-shot service failed"]  # ours, its data escaped (`x%0D::error...`)


def test_smoke_url_credentials_are_in_no_output(project: Project,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `http://smoke:PW@...` in the log lines and annotations of the smoke test."""
    password = f"Sm0ke-PW-{uuid.uuid4().hex[:6]}"
    secret_url = f"http://smoke:{password}@127.0.0.1:{project.port}/"
    code, outputs, log = deploy(project, capsys, image_tag="v1", smoke_url=secret_url,
                                compose_env=compose_env(project, 0))
    assert code == 0, log
    assert f"Smoke test: {project.url} answered 200." in log
    summary = (project.directory / "summary.md").read_text()
    assert password not in log + "".join(outputs.values()) + summary

    # The same through a failing smoke test: its error annotation and warnings.
    code, outputs, log = deploy(project, capsys, image_tag="v1", force_redeploy="true",
                                smoke_url=secret_url + "missing", smoke_timeout="1",
                                compose_env=compose_env(project, 0))
    assert (code, outputs["status"]) == (1, "rolled_back"), log
    assert f"Smoke test: {project.url}missing answered 404, expected 200" in log
    assert password not in log + "".join(outputs.values())


class Trickle(http.server.BaseHTTPRequestHandler):
    """A 200 whose 60-byte body comes one byte every 0.5 s (30 s in all)."""

    requests_seen: ClassVar[list[float]] = []

    def do_GET(self) -> None:
        Trickle.requests_seen.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", "60")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(60):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)

    def log_message(self, *args: object) -> None:
        pass


def test_a_trickling_smoke_endpoint_fails_within_smoke_timeout(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: each read got its own timeout; a byte every 2 s held a deploy with
    `smoke_timeout: 5` for 111 s. Here the body would take 30 s."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Trickle.requests_seen.clear()
    try:
        code, outputs, log = deploy(
            project, capsys, image_tag="v1", smoke_timeout="3",
            smoke_url=f"http://127.0.0.1:{server.server_address[1]}/health",
            compose_env=compose_env(project, 0))
        ended = time.monotonic()
    finally:
        server.shutdown()
        server.server_close()
    # The first deploy of the project: nothing to roll back to, so the deploy ends with
    # the smoke test.
    assert (code, outputs["status"]) == (1, "failed"), log
    assert "gave no complete answer in time" in log
    smoke_seconds = ended - Trickle.requests_seen[0]
    print(f"smoke test to the end of the deploy: {smoke_seconds:.1f} s (smoke_timeout 3)")
    assert smoke_seconds < 3 + 5, smoke_seconds
