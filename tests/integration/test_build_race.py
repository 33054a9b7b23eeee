"""Two builds of one branch at the same time, and a build that fails half-way through
publishing, against the real registries (issue 16).

The race: two ``deploykit build`` processes for two commits of ``pre-release``, started
together, with the same ``SOURCE_DATE_EPOCH``, ``cache: none``, one platform, on the
htpasswd registry. The failure: a fault-injecting HTTP proxy on loopback in front of the
open registry answers 400 to every tag PUT after the first one.
Digests are read back with plain ``requests``, independently of deploykit's client.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import deploykit
from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry

ACCEPT = ("application/vnd.oci.image.index.v1+json,"
          "application/vnd.docker.distribution.manifest.list.v2+json,"
          "application/vnd.oci.image.manifest.v1+json,"
          "application/vnd.docker.distribution.manifest.v2+json")
EPOCH = "1796040000"  # 2026-11-30T12:00:00Z
DAY = "20261130"
_DIGEST_PATH = re.compile(r"/manifests/sha256:[0-9a-f]{64}$")
SOURCE_ROOT = str(Path(deploykit.__file__).resolve().parent.parent)  # the code under test


@dataclass
class Run:
    code: int
    outputs: dict[str, str]
    log: str
    summary: str


def commit() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def build_env(registry: TestRegistry, repo: str, context: str, sha: str,
              files: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": SOURCE_ROOT, "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(files / "output"),
        "GITHUB_STEP_SUMMARY": str(files / "summary"), "GITHUB_EVENT_NAME": "push",
        "GITHUB_REF": "refs/heads/pre-release", "GITHUB_SHA": sha,
        "GITHUB_REPOSITORY": "deploykit/it-app", "GITHUB_ACTOR": "it",
        "GITHUB_WORKSPACE": context, "SOURCE_DATE_EPOCH": EPOCH,
        "INPUT_REGISTRY": registry.host, "INPUT_IMAGE_REPO": repo,
        "INPUT_REGISTRY_USERNAME": registry.username,
        "INPUT_REGISTRY_PASSWORD": registry.password,
        "INPUT_PLATFORMS": "linux/amd64", "INPUT_CACHE": "none",
    }


def read_run(code: int, log: str, files: Path) -> Run:
    output, summary = files / "output", files / "summary"
    return Run(code, parse_github_output(output.read_text()) if output.exists() else {}, log,
               summary.read_text() if summary.exists() else "")


class Tags:
    """Plain HTTP reads of one repository."""

    def __init__(self, host: str, repo: str, auth: tuple[str, str] | None) -> None:
        self.base, self.auth = f"http://{host}/v2/{repo}", auth

    def digest(self, tag: str) -> str | None:
        response = requests.head(f"{self.base}/manifests/{tag}", auth=self.auth, timeout=10,
                                 headers={"Accept": ACCEPT})
        return response.headers["Docker-Content-Digest"] if response.ok else None

    def all(self) -> list[str]:
        response = requests.get(f"{self.base}/tags/list", auth=self.auth, timeout=10)
        return sorted(response.json().get("tags") or []) if response.ok else []


# -- the race -----------------------------------------------------------------------------
def test_two_builds_of_one_branch_at_once_get_their_own_tags(
    auth_registry: TestRegistry, make_app_context: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = auth_registry.repo("race")
    shas = [commit(), commit()]
    files = [tmp_path_factory.mktemp("gh") for _ in shas]
    envs = [build_env(auth_registry, repo, make_app_context(body=f"build {index}"), sha,
                      files[index]) for index, sha in enumerate(shas)]
    processes = [subprocess.Popen([sys.executable, "-m", "deploykit", "build"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for env in envs]
    logs = [process.communicate(timeout=300)[0] for process in processes]
    runs = [read_run(process.returncode, log, files[index])
            for index, (process, log) in enumerate(zip(processes, logs, strict=True))]

    context = "\n\n".join(logs)  # both logs with every failure below
    assert [run.code for run in runs] == [0, 0], context
    assert [line for line in context.splitlines() if auth_registry.password in line
            and not line.startswith("::add-mask::")] == []
    planned = f"test-{DAY}-1"
    assert all(re.search(rf"^{planned}\s+new\s", run.log, re.MULTILINE) for run in runs), \
        f"the two builds did not overlap: both must plan {planned}\n{context}"
    assert sum("was taken by another build" in run.log for run in runs) == 1, context
    registry = Tags(auth_registry.host, repo, (auth_registry.username, auth_registry.password))
    digests = [run.outputs["digest"] for run in runs]
    assert digests[0] != digests[1], context
    test_tags = [next(t for t in run.outputs["tags"].splitlines() if t.startswith("test-"))
                 for run in runs]
    assert sorted(test_tags) == [f"test-{DAY}-1", f"test-{DAY}-2"], context
    for sha, digest, test_tag in zip(shas, digests, test_tags, strict=True):
        assert registry.digest(test_tag) == digest, context
        assert registry.digest(f"sha-{sha[:7]}") == digest, context
    # The documented rule: same build time (SOURCE_DATE_EPOCH), so the higher N wins.
    newest = digests[test_tags.index(f"test-{DAY}-2")]
    assert registry.digest("staging-latest") == newest, context
    assert registry.all() == sorted(["staging-latest", *test_tags,
                                     *(f"sha-{sha[:7]}" for sha in shas)]), context


# -- a failure after the first tag, then a re-run ------------------------------------------
class FaultyProxy(ThreadingHTTPServer):
    """Forwards everything to ``upstream``; after ``tag_puts_allowed`` tag PUTs, answers 400."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.tag_puts_allowed: int | None = None
        self.tag_puts: list[str] = []
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def refuses(self, method: str, path: str) -> bool:
        """Count a tag PUT; True when it is one too many."""
        if method != "PUT" or "/manifests/" not in path or _DIGEST_PATH.search(path):
            return False
        with self.lock:
            if self.tag_puts_allowed is not None and len(self.tag_puts) >= self.tag_puts_allowed:
                return True
            self.tag_puts.append(path.rsplit("/", 1)[1])
            return False


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultyProxy
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.refuses(self.command, self.path):
            self._answer(400, {"Content-Type": "application/json"},
                         b'{"errors":[{"code":"MANIFEST_INVALID","message":"injected fault"}]}')
            return
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        content = response.read()
        kept = {k: v for k, v in response.getheaders()
                if k.lower() not in ("connection", "transfer-encoding", "content-length")}
        self._answer(response.status, kept, content)
        upstream.close()

    def _answer(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def faulty_proxy(open_registry: TestRegistry) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(open_registry.host)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def run_in_process(env: dict[str, str], files: Path) -> Run:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["build"], env=env)
    return read_run(code, out.getvalue(), files)


def test_failure_after_the_first_tag_is_reported_and_a_rerun_completes_it(
    faulty_proxy: FaultyProxy, make_app_context: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo, sha = f"partial/{uuid.uuid4().hex[:10]}", commit()
    registry = TestRegistry(faulty_proxy.host)
    context = make_app_context(body="partial")
    tags = Tags(faulty_proxy.upstream, repo, None)
    faulty_proxy.tag_puts_allowed = 1

    files = tmp_path_factory.mktemp("gh")
    failed = run_in_process(build_env(registry, repo, context, sha, files), files)

    assert failed.code == 1, failed.log
    assert faulty_proxy.tag_puts == [f"sha-{sha[:7]}"]
    digest = tags.digest(f"sha-{sha[:7]}")
    assert digest is not None
    assert tags.all() == [f"sha-{sha[:7]}"]
    errors = [line for line in failed.log.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert errors[0].startswith("::error title=Tags partly published::")
    assert f"This run had already published sha-{sha[:7]} (naming {digest})" in errors[0]
    assert "injected fault" in errors[0]
    assert f"| `sha-{sha[:7]}` | `{digest}` |" in failed.summary
    assert "failed after publishing 1 tag(s)" in failed.summary

    faulty_proxy.tag_puts_allowed = None  # the registry works again
    files = tmp_path_factory.mktemp("gh")
    rerun = run_in_process(build_env(registry, repo, context, sha, files), files)

    assert rerun.code == 0, rerun.log
    assert (rerun.outputs["status"], rerun.outputs["digest"]) == ("built", digest)
    assert rerun.outputs["tags"].splitlines() == [
        "staging-latest", f"test-{DAY}-1", f"sha-{sha[:7]}"]
    assert "::group::Build and push" not in rerun.log  # nothing built again
    assert f"published test-{DAY}-1, staging-latest" in rerun.summary
    assert [tags.digest(t) for t in ("staging-latest", f"test-{DAY}-1", f"sha-{sha[:7]}")] \
        == [digest] * 3

    files = tmp_path_factory.mktemp("gh")
    third = run_in_process(build_env(registry, repo, context, sha, files), files)

    assert third.code == 0, third.log
    assert third.outputs["status"] == "skipped"
    assert tags.all() == sorted(["staging-latest", f"test-{DAY}-1", f"sha-{sha[:7]}"])
