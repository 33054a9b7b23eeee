"""verify_provenance (issue 25) on real production deploys: the engine, the registry and
compose, a stand-in Sigstore (tests/provenance_fixtures.py) as ``trusted_root`` and a fake
GitHub attestations API on loopback.

A valid attestation deploys and the summary says what was proven; every broken one exits 1
before any pull, with one ``::error`` naming the failed check, and the running containers
stay; ``verify_provenance: false`` asks GitHub nothing and never imports sigstore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.integration.conftest import (
    TestRegistry,
    free_port,
    push_variants,
    remove_local_images,
)
from tests.provenance_fixtures import (
    Build,
    StandInSigstore,
    api_answer,
    tampered,
    without_log_entry,
)

REPOSITORY = "org/app"
HEALTHY = ('HEALTHCHECK --interval=1s --timeout=2s --retries=3 '
           'CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1')
SERVE = 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'
COMPOSE = """\
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    ports: ["127.0.0.1:${APP_PORT}:8080"]
    stop_grace_period: 1s  # busybox httpd as PID 1 ignores SIGTERM
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=120)


class FakeGitHub:
    """``GET /repos/{owner}/{repo}/attestations/{digest}`` from ``answers`` (a 404 for a
    digest it does not know; every other path too); every request path is kept."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.paths.append(self.path)
                path = self.path.split("?")[0]
                prefix = f"/repos/{REPOSITORY}/attestations/"
                answer = fake.answers.get(path[len(prefix):]) if path.startswith(prefix) \
                    else None
                body = json.dumps(answer or {"message": "Not Found"}).encode()
                self.send_response(200 if answer is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PATCH = do_GET  # GitHub deployments: 404, a warning

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def attestation_requests(self) -> list[str]:
        return [path for path in self.paths if "/attestations/" in path]


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def releases(open_registry: TestRegistry, base_image: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    repo = open_registry.repo("provenance")
    variants = {"v1.0.0": (HEALTHY, SERVE), "v1.1.0": (HEALTHY, SERVE)}
    yield repo, push_variants(open_registry.host, repo, base_image, variants,
                              tmp_path_factory.mktemp("images"))
    remove_local_images(f"{open_registry.host}/{repo}")


@dataclass
class Project:
    name: str
    directory: Path
    port: int
    registry: str
    repo: str
    api_url: str

    def env(self, **inputs: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_"))}
        env.update({
            "GITHUB_WORKSPACE": str(self.directory), "GITHUB_REPOSITORY": REPOSITORY,
            "GITHUB_RUN_ID": uuid.uuid4().hex[:8], "GITHUB_ACTOR": "tester",
            "GITHUB_API_URL": self.api_url, "GITHUB_ACTIONS": "true",
            "GITHUB_STEP_SUMMARY": str(self.directory / "summary.md"),
            "INPUT_REGISTRY": self.registry, "INPUT_IMAGE_REPO": self.repo,
            "INPUT_PROJECT_NAME": self.name, "INPUT_ENVIRONMENT": "production",
            "INPUT_STATE_DIR": str(self.directory / "state"), "INPUT_HEALTH_SETTLE": "1",
            "INPUT_HEALTH_TIMEOUT": "60", "INPUT_GITHUB_TOKEN": "ghs_faketoken0123456789",
            "INPUT_COMPOSE_ENV": f"APP_PORT={self.port}",
        })
        env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
        return env

    def containers(self) -> dict[str, str]:
        out = docker("ps", "--filter", f"label=com.docker.compose.project={self.name}",
                     "--format", '{{.Label "com.docker.compose.service"}} {{.ID}} '
                     '{{.Image}}').stdout
        return {line.split()[0]: line for line in out.splitlines()}


@pytest.fixture
def project(releases: tuple[str, dict[str, str]], open_registry: TestRegistry,
            github: FakeGitHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    directory = tmp_path_factory.mktemp("project")
    (directory / "compose.yaml").write_text(COMPOSE)
    made = Project(f"dk-{uuid.uuid4().hex[:10]}", directory, free_port(), open_registry.host,
                   releases[0], github.url)
    yield made
    docker("compose", "-p", made.name, "down", "--remove-orphans", "--timeout", "1",
           check=False)
    docker("network", "rm", f"deploykit-lock-{made.name}", check=False)


def deploy(project: Project, capsys: pytest.CaptureFixture[str],
           **inputs: str) -> tuple[int, dict[str, str], str]:
    output = project.directory / f"output-{uuid.uuid4().hex[:6]}"
    env = project.env(**inputs)
    env["GITHUB_OUTPUT"] = str(output)
    capsys.readouterr()
    code = main(["deploy"], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, capsys.readouterr().out


def image_present(reference: str) -> bool:
    return docker("image", "inspect", reference, check=False).returncode == 0


def test_production_deploys_only_what_this_repositorys_pipeline_built(
        project: Project, releases: tuple[str, dict[str, str]], github: FakeGitHub,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, digests = releases
    v1, v11 = digests["v1.0.0"], digests["v1.1.0"]
    sigstore, foreign = StandInSigstore(), StandInSigstore("foreign")
    roots = tmp_path / "trusted_root.jsonl"
    roots.write_text(json.dumps(sigstore.trusted_root()) + "\n")
    checked = {"verify_provenance": "true", "trusted_root": str(roots)}

    # A valid attestation for this repository and refs/tags/v1.0.0: deployed.
    good = Build(v1, repository=REPOSITORY, ref="refs/tags/v1.0.0")
    github.answers[v1] = api_answer(sigstore.bundle(good))
    code, outputs, log = deploy(project, capsys, image_tag="v1.0.0", **checked)
    assert (code, outputs["status"]) == (0, "deployed"), log
    summary = (project.directory / "summary.md").read_text()
    assert f"### Build provenance verified: {v1}" in summary
    for row in (f"| repository | https://github.com/{REPOSITORY} |",
                "| ref | refs/tags/v1.0.0 |", f"| commit | {good.commit} |",
                f"| workflow | https://github.com/{REPOSITORY}/.github/workflows/release.yml"
                "@refs/tags/v1.0.0 |"):
        assert row in summary
    assert github.attestation_requests() == [
        f"/repos/{REPOSITORY}/attestations/{v1}?per_page=100"]
    running = project.containers()
    assert v1 in running["app"] or "v1.0.0" in running["app"]

    # v1.1.0 with each broken attestation: exit 1 before any pull, containers unchanged.
    docker("image", "rm", "--force", f"{project.registry}/{project.repo}:v1.1.0", check=False)
    assert not image_present(f"{project.registry}/{project.repo}@{v11}")
    v11_build = Build(v11, repository=REPOSITORY, ref="refs/tags/v1.1.0")
    cases: dict[str, tuple[dict[str, Any] | None, str]] = {
        "another repository": (api_answer(sigstore.bundle(
            Build(v11, repository="evil/app", ref="refs/tags/v1.1.0"))), "source repository"),
        "another tag": (api_answer(sigstore.bundle(
            Build(v11, repository=REPOSITORY, ref="refs/tags/v1.0.0"))), "source ref"),
        "no attestation": (None, "attestation found"),
        "no attestation (empty list)": ({"attestations": []}, "attestation found"),
        "tampered statement": (api_answer(tampered(sigstore.bundle(v11_build))), "signature"),
        "another trust root": (api_answer(foreign.bundle(v11_build)), "signature"),
        "another subject digest": (api_answer(sigstore.bundle(
            Build(v1, repository=REPOSITORY, ref="refs/tags/v1.1.0"))), "subject digest"),
        "private repository": (api_answer(without_log_entry(sigstore.bundle(v11_build))),
                               "transparency log"),
    }
    for case, (answer, check) in cases.items():
        github.answers.pop(v11, None)
        if answer is not None:
            github.answers[v11] = answer
        code, outputs, log = deploy(project, capsys, image_tag="v1.1.0", **checked)
        errors = [line for line in log.splitlines() if line.startswith("::error")]
        assert (code, outputs.get("status")) == (1, "failed"), case
        assert len(errors) == 1, (case, log)
        assert f"title=Build provenance not verified%3A {check}::" in errors[0], (case, log)
        assert "Lock " not in log and "docker compose pull" not in log, case
        assert project.containers() == running, case
        assert not image_present(f"{project.registry}/{project.repo}@{v11}"), case
        if case == "private repository":
            assert "provenance of private repositories cannot be verified yet: " in errors[0]

    # The order: resolve first (an unknown tag asks GitHub nothing), and a dry run checks too.
    before = len(github.attestation_requests())
    code, _, log = deploy(project, capsys, image_tag="v9.9.9", **checked)
    assert code == 1 and "Image not found" in log
    assert len(github.attestation_requests()) == before
    code, _, log = deploy(project, capsys, image_tag="v1.1.0", dry_run="true", **checked)
    assert code == 1
    assert "title=Build provenance not verified%3A transparency log::" in log

    # A valid attestation for v1.1.0 (one of two roots in the file) deploys it.
    roots.write_text(f"{json.dumps(foreign.trusted_root())}\n"
                     f"{json.dumps(sigstore.trusted_root())}\n")
    github.answers[v11] = api_answer(foreign.bundle(v11_build))
    code, outputs, log = deploy(project, capsys, image_tag="v1.1.0", **checked)
    assert (code, outputs["status"]) == (0, "deployed"), log


def test_without_verify_provenance_github_is_not_asked_and_sigstore_not_loaded(
        project: Project, github: FakeGitHub, tmp_path: Path) -> None:
    """In a fresh interpreter: the deploy of v1.0.0 with no attestation anywhere."""
    before = len(github.attestation_requests())
    marker = tmp_path / "modules"
    env = project.env(image_tag="v1.0.0", verify_provenance="false")
    env["GITHUB_OUTPUT"] = str(tmp_path / "output")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; from deploykit.cli import main; code = main(['deploy']); "
            f"open({str(marker)!r}, 'w').write(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('sigstore', 'sigstore_models', 'tuf')))); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300, cwd=project.directory, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert parse_github_output((tmp_path / "output").read_text())["status"] == "deployed"
    assert marker.read_text() == ""
    assert len(github.attestation_requests()) == before
