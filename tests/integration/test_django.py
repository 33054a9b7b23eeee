"""Issue 12: the decision record's own stack, deployed end to end on the real engine.

examples/django (Django + gunicorn, a Celery worker, a one-shot `migrate`) with PostgreSQL
and Redis built from Debian's packages (examples/django/testbed/, pushed once to the open
registry as testbed/postgres:trixie and testbed/redis:trixie and reused from there).

v1 migrates 0001 and keeps a row written through the app; v2 adds migration 0002 and a
field; v3's migration fails, so app and worker are never replaced; v4 migrates (0003) but
its health view fails, so it is rolled back to v2 without running a migration again, with
db and redis never recreated. No COMPOSE_ENV value (passwords, also inside the URLs)
appears in any log, summary or output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploykit.cli import main
from deploykit.history import History
from tests.conftest import parse_github_output
from tests.integration.conftest import (
    TestRegistry,
    _unavailable,
    docker_push,
    free_port,
    remove_local_images,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
PYTHON_BASE = "testbed/python:3-trixie"
SERVICE_IMAGES = {"postgres": "testbed/postgres:trixie", "redis": "testbed/redis:trixie"}
DB_PASSWORD, REDIS_PASSWORD = "Pg-s3cret-9fQv2", "Rd-s3cret-Zt8Lm"
SECRET_KEY = "dj-s3cret-key-6d1f0c9a8b7e"
COMPOSE_ENV = "\n".join([
    f"DATABASE_URL=postgres://shop:{DB_PASSWORD}@db:5432/shop",
    f"POSTGRES_PASSWORD={DB_PASSWORD}",
    f"BROKER_URL=redis://:{REDIS_PASSWORD}@redis:6379/0",
    f"REDIS_PASSWORD={REDIS_PASSWORD}",
    f"DJANGO_SECRET_KEY={SECRET_KEY}",
])
SECRETS = (DB_PASSWORD, REDIS_PASSWORD, SECRET_KEY)

FAILING_MIGRATION = '''\
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("notes", "0002_note_pinned")]
    operations = [migrations.RunSQL("ALTER TABLE notes_missing ADD COLUMN broken integer")]
'''
# Expand only: a nullable column, so v2 still writes notes after v4 is rolled back.
ARCHIVED_MIGRATION = '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0002_note_pinned")]
    operations = [migrations.AddField("note", "archived",
                                      models.BooleanField(null=True))]
'''


def docker(*args: str, check: bool = True, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def in_registry(registry: str, reference: str) -> bool:
    repository, _, tag = reference.partition(":")
    response = requests.head(
        f"http://{registry}/v2/{repository}/manifests/{tag}", timeout=5,
        headers={"Accept": "application/vnd.oci.image.index.v1+json,"
                 "application/vnd.oci.image.manifest.v1+json,"
                 "application/vnd.docker.distribution.manifest.v2+json"})
    return response.status_code == 200


def build_service_image(registry: str, name: str, image: str) -> None:
    docker_push("buildx", "build", "--platform", "linux/amd64", "--push", "--provenance=false",
                "--build-arg", f"BASE_IMAGE={registry}/{PYTHON_BASE}", "-t", image,
                str(EXAMPLE / "testbed" / name), timeout=900)


def variant_context(root: Path, tag: str) -> Path:
    """examples/django as release ``tag`` of the story."""
    context = root / tag
    shutil.copytree(EXAMPLE, context, ignore=shutil.ignore_patterns("testbed", "__pycache__"))
    migrations = context / "notes" / "migrations"
    if tag == "v1":  # before the field and its migration
        models = context / "notes" / "models.py"
        lines = models.read_text().splitlines(keepends=True)
        kept = [line for line in lines if "pinned" not in line]
        assert len(kept) == len(lines) - 1
        models.write_text("".join(kept))
        (migrations / "0002_note_pinned.py").unlink()
    elif tag == "v3":
        (migrations / "0003_fails.py").write_text(FAILING_MIGRATION)
    elif tag == "v4":
        (migrations / "0003_note_archived.py").write_text(ARCHIVED_MIGRATION)
        models = context / "notes" / "models.py"
        field = "    pinned = models.BooleanField(default=False)"
        assert field in models.read_text()
        models.write_text(models.read_text().replace(
            field, "    archived = models.BooleanField(null=True)\n" + field))
        views = context / "notes" / "views.py"
        healthy = 'healthy = all(value == "ok" for value in checks.values())'
        assert healthy in views.read_text()
        views.write_text(views.read_text().replace(healthy, "healthy = False  # v4's bug"))
    return context


def build_releases(registry: str, repo: str, root: Path) -> dict[str, str]:
    """The example built as v1..v4 (one after the other: v2..v4 reuse v1's layers)."""
    digests = {}
    for tag in ("v1", "v2", "v3", "v4"):
        context = variant_context(root, tag)
        metadata = root / f"{tag}.json"
        docker_push("buildx", "build", "--platform", "linux/amd64", "--push",
                    "--provenance=false", "--metadata-file", str(metadata), "--build-arg",
                    f"BASE_IMAGE={registry}/{PYTHON_BASE}",
                    "-t", f"{registry}/{repo}:{tag}", str(context), timeout=900)
        digests[tag] = json.loads(metadata.read_text())["containerimage.digest"]
    return digests


@dataclass(frozen=True)
class Images:
    services: dict[str, str]  # postgres/redis -> stand-in image
    repo: str
    digests: dict[str, str]  # v1..v4 -> digest


@pytest.fixture(scope="module")
def images(open_registry: TestRegistry,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """The stand-ins for postgres:16 and redis:7-alpine (built once, then reused from the
    registry) and the releases v1..v4 of the example, built side by side."""
    registry = open_registry.host
    if not in_registry(registry, PYTHON_BASE):
        _unavailable(f"base image {registry}/{PYTHON_BASE} missing "
                     "(provision-debian.sh --with-python-base)")
    services = {name: f"{registry}/{reference}" for name, reference in SERVICE_IMAGES.items()}
    repo = open_registry.repo("django")
    with ThreadPoolExecutor(max_workers=3) as pool:
        builds = [pool.submit(build_service_image, registry, name, services[name])
                  for name, reference in SERVICE_IMAGES.items()
                  if not in_registry(registry, reference)]
        releases = pool.submit(build_releases, registry, repo,
                               tmp_path_factory.mktemp("django-releases"))
        digests = releases.result()
        for build in builds:
            build.result()
    yield Images(services, repo, digests)
    remove_local_images(f"{registry}/{repo}")


@dataclass
class Stack:
    name: str
    directory: Path
    port: int
    registry: str
    repo: str
    digests: dict[str, str]
    transcript: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def containers(self) -> dict[str, str]:
        """service -> container ID, stopped containers too."""
        out = docker("ps", "--all", "--filter", f"label=com.docker.compose.project={self.name}",
                     "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}').stdout
        return dict(line.split() for line in out.splitlines())

    def image_of(self, service: str) -> str:
        return docker("inspect", "--format", "{{.Config.Image}}",
                      self.containers()[service]).stdout.strip()

    def logs(self, service: str) -> str:
        result = docker("logs", self.containers()[service])
        return result.stdout + result.stderr

    def deploy(self, capsys: pytest.CaptureFixture[str], tag: str
               ) -> tuple[int, dict[str, str], str]:
        output = self.directory / f"output-{tag}-{uuid.uuid4().hex[:6]}"
        summary = self.directory / "summary.md"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("INPUT_", "GITHUB_"))}
        env.update({
            "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(self.directory),
            "GITHUB_REPOSITORY": "org/shop", "GITHUB_RUN_ID": uuid.uuid4().hex[:8],
            "GITHUB_ACTOR": "tester", "INPUT_REGISTRY": self.registry,
            "INPUT_IMAGE_REPO": self.repo, "INPUT_PROJECT_NAME": self.name,
            "INPUT_ENVIRONMENT": "staging", "INPUT_IMAGE_TAG": tag,
            "INPUT_STATE_DIR": str(self.directory / "state"), "INPUT_HEALTH_SETTLE": "2",
            "INPUT_HEALTH_TIMEOUT": "90", "INPUT_SMOKE_TIMEOUT": "20",
            "INPUT_SMOKE_URL": f"{self.url}/health/", "INPUT_LOCK_TIMEOUT": "120",
            "INPUT_COMPOSE_ENV": COMPOSE_ENV,
        })
        capsys.readouterr()
        code = main(["deploy"], env=env)
        captured = capsys.readouterr()
        outputs = parse_github_output(output.read_text()) if output.exists() else {}
        self.transcript += [captured.out, captured.err,
                            output.read_text() if output.exists() else "",
                            summary.read_text() if summary.exists() else ""]
        return code, outputs, captured.out + captured.err

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=15)

    def post(self, path: str, data: dict[str, object]) -> requests.Response:
        return requests.post(self.url + path, data=json.dumps(data), timeout=15)


@pytest.fixture
def stack(images: Images, open_registry: TestRegistry,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The example's compose file as it is, beside a `.env` with what is no secret."""
    directory = tmp_path_factory.mktemp("django-stack")
    shutil.copy(EXAMPLE / "compose.yaml", directory / "compose.yaml")
    port = free_port()
    (directory / ".env").write_text(f"APP_PORT={port}\n"
                                    f"POSTGRES_IMAGE={images.services['postgres']}\n"
                                    f"REDIS_IMAGE={images.services['redis']}\n")
    name = f"dj-{uuid.uuid4().hex[:10]}"
    yield Stack(name, directory, port, open_registry.host, images.repo, images.digests, [])
    docker("compose", "-p", name, "down", "--volumes", "--remove-orphans", "--timeout", "2",
           check=False)
    docker("volume", "rm", f"{name}_pgdata", f"{name}_redisdata", check=False)
    docker("network", "rm", f"deploykit-lock-{name}", check=False)


def test_django_stack_migrations_failed_migration_and_rollback(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    image = f"{stack.registry}/{stack.repo}"
    digests = stack.digests

    # v1: migrate runs 0001 before app and worker; a row written through the app.
    code, outputs, log = stack.deploy(capsys, "v1")
    assert (code, outputs.get("status")) == (0, "deployed"), log
    assert "completed: exited 0 (one-shot)" in log  # migrate in the health verdict
    assert "Applying notes.0001_initial... OK" in stack.logs("migrate")
    created = stack.post("/notes/", {"text": "kept across releases"})
    assert created.status_code == 201, created.text
    assert created.json()["text"] == "kept across releases"
    assert "pinned" not in created.json()
    assert stack.get("/notes/count/").json() == {"count": 1}  # through redis and the worker
    assert stack.get("/static/notes/notes.css").status_code == 200  # collectstatic

    # v2: migration 0002 adds a field; the row is still there and the field works.
    code, outputs, log = stack.deploy(capsys, "v2")
    assert (code, outputs.get("status")) == (0, "deployed"), log
    migrate_log = stack.logs("migrate")
    assert "Applying notes.0002_note_pinned... OK" in migrate_log
    assert migrate_log.count("Operations to perform:") == 1  # it ran once, not twice
    assert [n["text"] for n in stack.get("/notes/").json()["notes"]] == \
        ["kept across releases"]
    assert stack.get("/notes/").json()["notes"][0]["pinned"] is False
    pinned = stack.post("/notes/", {"text": "pinned in v2", "pinned": True})
    assert (pinned.status_code, pinned.json()["pinned"]) == (201, True)
    v2_containers = stack.containers()
    assert stack.image_of("app") == f"{image}:v2@{digests['v2']}"

    # v3: its migration fails; app and worker are never replaced; exit 1 with its log.
    code, outputs, log = stack.deploy(capsys, "v3")
    assert (code, outputs.get("status")) == (1, "failed"), log
    assert "One-shot service migrate (" in log and "exited with code 1" in log
    assert 'relation "notes_missing" does not exist' in log  # the migration's own log
    assert "Rolling back" not in log
    after_v3 = stack.containers()
    assert {s: after_v3[s] for s in ("app", "worker", "db", "redis")} == \
        {s: v2_containers[s] for s in ("app", "worker", "db", "redis")}
    assert stack.image_of("app") == stack.image_of("worker") == f"{image}:v2@{digests['v2']}"
    assert len(stack.get("/notes/").json()["notes"]) == 2
    assert [e.status for e in History(stack.directory / "state").entries()] == \
        ["deployed", "deployed", "failed"]

    # v4: migrates (0003), but its health view fails: rolled back to v2, without running
    # a migration again; db and redis never recreated; the data intact.
    code, outputs, log = stack.deploy(capsys, "v4")
    assert (code, outputs.get("status")) == (1, "rolled_back"), log
    assert "Health check failed: app (" in log
    assert f"{image}@{digests['v2']} runs again and is healthy" in log
    assert "The schema is not rolled back" in log
    summary = (stack.directory / "summary.md").read_text()
    assert "migrate completed in the failed release" in summary
    assert "the schema is not rolled back with the code" in summary
    migrate_log = stack.logs("migrate")
    assert "Applying notes.0003_note_archived... OK" in migrate_log
    assert migrate_log.count("Operations to perform:") == 1  # not re-run by the rollback
    after_v4 = stack.containers()
    assert (after_v4["db"], after_v4["redis"]) == (v2_containers["db"], v2_containers["redis"])
    assert stack.image_of("app") == stack.image_of("worker") == f"{image}:v2@{digests['v2']}"
    notes = stack.get("/notes/").json()["notes"]
    assert [(n["text"], n["pinned"]) for n in notes] == \
        [("kept across releases", False), ("pinned in v2", True)]
    assert stack.post("/notes/", {"text": "after the rollback"}).status_code == 201
    assert stack.get("/notes/count/").json() == {"count": 3}
    assert docker("volume", "inspect", f"{stack.name}_pgdata").returncode == 0

    # No COMPOSE_ENV value in any log, summary or output (the runner's mask lines aside).
    for text in stack.transcript:
        shown = "\n".join(line for line in text.splitlines()
                          if not line.startswith("::add-mask::"))
        for secret in SECRETS:
            assert secret not in shown
    durations = [e.duration_seconds for e in History(stack.directory / "state").entries()]
    with capsys.disabled():  # the measured time, in pytest's output (-s)
        print(f"\ndjango story: {time.monotonic() - started:.1f} s; deploys v1..v4: "
              f"{durations} s")
