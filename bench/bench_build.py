"""Benchmark: building, the registry and the action image (issue 13, rows P4-P7).

One command; each row prints its goal and whether it is met:

- **P4**: ``deploykit build`` of a small two-platform app (``linux/amd64,linux/arm64``,
  a shell loop that runs under QEMU on arm64), cold (a new repository and a nonce that
  no cache holds) next to a rebuild with one changed file (``cache: registry``, the
  local build cache warm). The issue sets no goal: reported.
- **P4'**: ``deploykit build`` next to a bare ``docker buildx build --push`` with the
  same tags (``sha-<7>``, ``test-YYYYMMDD-N``, ``staging-latest``) and the same registry
  cache flags, one platform, one changed file per run, alternating, each side in its own
  repository (after one warm-up build each). Goal: <= 1.15x. deploykit's phases (from
  its ``::group::`` lines) say where its time goes.
- **P5**: registry requests to resolve one tag: a fresh client and one holding its
  credentials, against the real htpasswd registry (``127.0.0.1:5001``, through a
  counting proxy on loopback) and a fake Bearer-token registry. Goal: 1 request with a
  token held.
- **P6**: the tag plan (``make_plan``: the paged list and the plan, in-process) and the
  whole ``deploykit tags`` command (process start to exit), over a repository of 5,000
  tags served by a fake registry on loopback that pages ``/tags/list`` by 100 with
  ``Link`` headers. Goal: < 1 s for the plan (the command's is shown too).
- **P7**: the action image built from the repository's Dockerfile as
  ``tests/integration/test_action_image.py`` builds it: compressed size (the engine's
  ``Size``, the layers pushed and pulled), size on disk, and ``docker run`` to the first
  log line of a deploy (dry run). Goal: no regression over 114.9 MB compressed.

Merges its section into ``bench/results.md`` (between ``<!-- bench_build.py -->``
markers; the rows of ``bench_compare.py`` stay). The images pushed stay in the
registry (repositories ``bench-build/<run id>-*``); the local images it builds are
removed.

    .venv/bin/python bench/bench_build.py [--runs 5] [--skip-p7]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_compare import Stats, clean_env, machine, merge_section  # noqa: E402

from deploykit.plan import make_plan  # noqa: E402
from deploykit.registry import RegistryClient  # noqa: E402
from deploykit.settings import load_settings  # noqa: E402

OPEN, AUTH = "127.0.0.1:5000", "127.0.0.1:5001"
USER, PASSWORD = "deploykit", "deploykit-test-pass"
BASE = f"{OPEN}/testbed/busybox:latest"
TWO_PLATFORMS, ONE_PLATFORM = "linux/amd64,linux/arm64", "linux/amd64"
P7_BASELINE_MB = 114.9
P7_TOLERANCE = 1.01  # the project's own files change between two measurements
DOCKERFILE = """\
FROM {base}
RUN echo {nonce} > /nonce && i=0; while [ $i -lt {loops} ]; do i=$((i+1)); done
COPY www/ /www/
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""
BEGIN, END = "<!-- bench_build.py -->", "<!-- /bench_build.py -->"


def run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                            check=False, cwd=cwd)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                 f"{result.stderr[-2000:]}")
    return result


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def new_sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


# -- P4, P4': builds ------------------------------------------------------------------
@dataclass
class App:
    """One app's build context in its own repository of the open registry."""

    context: Path
    repo: str
    loops: int
    edits: int = 0

    def write(self, nonce: str) -> None:
        (self.context / "www").mkdir(parents=True, exist_ok=True)
        (self.context / "www" / "index.html").write_text("bench\n")
        (self.context / "Dockerfile").write_text(
            DOCKERFILE.format(base=BASE, nonce=nonce, loops=self.loops))

    def change_one_file(self) -> None:
        self.edits += 1
        (self.context / "www" / "index.html").write_text(f"bench, edit {self.edits}\n")


@dataclass
class Timed:
    seconds: float
    phases: dict[str, float]


def deploykit_build(app: App, platforms: str, log: Path) -> Timed:
    """``python -m deploykit build`` of a ``pre-release`` push; phases from its groups."""
    env = {**clean_env(), "PYTHONPATH": str(ROOT), "GITHUB_ACTIONS": "true",
           "GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/pre-release",
           "GITHUB_SHA": new_sha(), "GITHUB_REPOSITORY": "bench/app",
           "GITHUB_WORKSPACE": str(app.context), "GITHUB_OUTPUT": str(log) + ".out",
           "GITHUB_STEP_SUMMARY": str(log) + ".summary", "INPUT_REGISTRY": OPEN,
           "INPUT_IMAGE_REPO": app.repo, "INPUT_PLATFORMS": platforms,
           "INPUT_CACHE": "registry"}
    t0 = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "deploykit", "build"], env=env,
                               cwd=app.context, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in process.stdout]
    code = process.wait()
    seconds = time.monotonic() - t0
    with log.open("a") as handle:
        handle.write(f"\n### deploykit build {app.repo}: exit {code}, {seconds:.2f} s\n")
        handle.writelines(f"[{when:7.3f}] {line}\n" for when, line in lines)
    if code != 0:
        sys.exit(f"deploykit build of {app.repo} failed (exit {code}); see {log}")
    return Timed(seconds, build_phases(lines, seconds))


# The builder probe (buildx inspect; docker info when needed) starts before the registry
# client is made (requests loads then) and runs while the plan reads the registry; the
# builder check is what is left of it once the plan is done. (The probe's own ::debug::
# lines are not flushed: they show up with the plan's group line.)
START = "Python start-up, settings, registry client"
PHASES = (  # (phase, the log line that starts it), in order
    ("tag plan (builder probe running)", "::group::Tag plan"),
    ("builder check (the probe's rest)", "::endgroup::"),
    # "$ docker buildx build", or the plugin binary run directly ("$ .../docker-buildx buildx
    # build"): see BUILDX_RE.
    ("buildx build (OCI layout, cache export)", "::debug::$ "),
    ("push by digest, tags", "::group::Push"),
    ("summary, clean-up, exit", "Build built"),
)


BUILDX_RE = re.compile(r"^::debug::\$ \S*docker(-buildx)? buildx build ")
OCI_EXPORT, CACHE_EXPORT, IMAGE_EXPORT = (
    "exporting to oci image format", "exporting cache to registry", "exporting to image")


def buildkit_step(lines: list[str], title: str) -> float:
    """What buildkit reports for a step (``#9 DONE 0.3s``), 0 when absent."""
    step = next((line.split(" ", 1)[0] for line in lines if line.endswith(f" {title}")), "")
    done = [line for line in lines if step and line.startswith(f"{step} DONE ")]
    return float(done[-1].split()[-1].rstrip("s")) if done else 0.0


def build_phases(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds of each phase of a deploykit build, from the lines that start them."""
    marks = [(0.0, START)]
    for name, prefix in PHASES:
        when = next((t for t, line in lines if line.startswith(prefix)
                     and (prefix != "::debug::$ " or BUILDX_RE.search(line))), None)
        if when is not None:
            marks.append((when, name))
    phases = {name: end - when for (when, name), (end, _) in
              zip(marks, [*marks[1:], (total, "")], strict=True)}
    texts = [line for _, line in lines]
    phases[OCI_EXPORT] = buildkit_step(texts, OCI_EXPORT)
    phases[CACHE_EXPORT] = buildkit_step(texts, CACHE_EXPORT)
    return phases


def bare_build(app: App, platforms: str, number: int, log: Path
               ) -> tuple[float, dict[str, float]]:
    """``docker buildx build --push`` with deploykit's tags and registry cache flags."""
    image, sha = f"{OPEN}/{app.repo}", new_sha()
    today = datetime.now(UTC).strftime("%Y%m%d")
    argv = ["docker", "buildx", "build", "--progress=plain", "--platform", platforms,
            "--provenance=false", "--sbom=false",
            "--cache-from", f"type=registry,ref={image}:buildcache",
            "--cache-to", f"type=registry,ref={image}:buildcache,mode=max",
            "-t", f"{image}:sha-{sha[:7]}", "-t", f"{image}:test-{today}-{number}",
            "-t", f"{image}:staging-latest", "--push", str(app.context)]
    t0 = time.monotonic()
    result = run(argv, env=clean_env())
    seconds = time.monotonic() - t0
    with log.open("a") as handle:
        handle.write(f"\n### bare buildx {app.repo}: {seconds:.2f} s\n{result.stderr}")
    lines = result.stderr.splitlines()
    return seconds, {IMAGE_EXPORT: buildkit_step(lines, IMAGE_EXPORT),
                     CACHE_EXPORT: buildkit_step(lines, CACHE_EXPORT)}


@dataclass
class Builds:
    cold: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    deploykit: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    bare_phases: list[dict[str, float]] = field(default_factory=list)


def remove_local_images(run_id: str) -> None:
    """The bare side's ``--push`` also stores the image in the engine: remove those."""
    listed = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                 check=False).stdout.split()
    mine = [name for name in listed if name.startswith(f"{OPEN}/bench-build/{run_id}-")]
    if mine:
        run(["docker", "image", "rm", *mine], check=False)


def measure_p4(workdir: Path, run_id: str, runs: int, loops: int, log: Path,
               out: Builds) -> None:
    for index in range(runs):
        app = App(workdir / f"p4-{index}", f"bench-build/{run_id}-p4-{index}", loops)
        app.write(uuid.uuid4().hex)
        out.cold.append(deploykit_build(app, TWO_PLATFORMS, log).seconds)
        app.change_one_file()
        out.cached.append(deploykit_build(app, TWO_PLATFORMS, log).seconds)
        print(f"P4 run {index + 1}: cold {out.cold[-1]:.2f} s, "
              f"cached rebuild {out.cached[-1]:.2f} s", flush=True)


def measure_p4_prime(workdir: Path, run_id: str, runs: int, loops: int, log: Path,
                     out: Builds) -> App:
    nonce = uuid.uuid4().hex  # the same content on both sides
    ours = App(workdir / "p4p-deploykit", f"bench-build/{run_id}-deploykit", loops)
    bare = App(workdir / "p4p-bare", f"bench-build/{run_id}-bare", loops)
    for app in (ours, bare):
        app.write(nonce)
    deploykit_build(ours, ONE_PLATFORM, log)  # warm-up: fills the registry cache
    bare_build(bare, ONE_PLATFORM, 1, log)  # (the warm-ups are not counted)
    for index in range(runs):
        sides = [("deploykit", ours), ("bare", bare)]
        for name, app in sides if index % 2 == 0 else reversed(sides):
            app.change_one_file()
            if name == "deploykit":
                timed = deploykit_build(app, ONE_PLATFORM, log)
                out.deploykit.append(timed.seconds)
                out.phases.append(timed.phases)
            else:
                seconds, steps = bare_build(app, ONE_PLATFORM, index + 2, log)
                out.bare.append(seconds)
                out.bare_phases.append(steps)
        print(f"P4' run {index + 1}: deploykit {out.deploykit[-1]:.2f} s, "
              f"bare buildx {out.bare[-1]:.2f} s", flush=True)
    return ours


# -- loopback servers: a counting proxy and a fake registry -----------------------------
@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body in one send (no delayed-ACK stall per answer)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def counting_proxy(upstream: str, seen: list[str]) -> type[BaseHTTPRequestHandler]:
    class Proxy(Quiet):
        def forward(self) -> None:
            seen.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("authorization", "accept", "content-type")}
            reply = requests.request(self.command, f"http://{upstream}{self.path}",
                                     headers=headers, data=self.rfile.read(length) or None,
                                     allow_redirects=False, timeout=30)
            passed = {k: v for k, v in reply.headers.items() if k.lower() in (
                "docker-content-digest", "content-type", "www-authenticate", "link",
                "location")}
            self.answer(reply.status_code, passed, reply.content)

        do_GET = do_HEAD = forward

    return Proxy


def fake_registry(repo: str, tags: list[str], page: int, seen: list[str],
                  digest: str) -> type[BaseHTTPRequestHandler]:
    """A Bearer-token registry: ``/token``, HEAD of manifests, paged ``/tags/list``."""
    token = uuid.uuid4().hex

    class Fake(Quiet):
        def do_GET(self) -> None:
            self.route()

        def do_HEAD(self) -> None:
            self.route()

        def route(self) -> None:
            seen.append(f"{self.command} {self.path}")
            path, _, query = self.path.partition("?")
            host = self.headers.get("Host", "")
            if path == "/token":
                self.answer(200, {"Content-Type": "application/json"},
                            json.dumps({"token": token}).encode())
                return
            if self.headers.get("Authorization") != f"Bearer {token}":
                challenge = (f'Bearer realm="http://{host}/token",service="fake",'
                             f'scope="repository:{repo}:pull"')
                self.answer(401, {"WWW-Authenticate": challenge,
                                  "Content-Type": "application/json"},
                            b'{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}')
                return
            if path == f"/v2/{repo}/tags/list":
                self.tags_page(dict(part.partition("=")[::2] for part in query.split("&")
                                    if part))
            elif path.startswith(f"/v2/{repo}/manifests/") and \
                    path.rsplit("/", 1)[1] in ("v1.0.0", digest):
                self.answer(200, {"Docker-Content-Digest": digest,
                                  "Content-Type": "application/vnd.oci.image.index.v1+json"})
            else:
                self.answer(404, {"Content-Type": "application/json"},
                            b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')

        def tags_page(self, query: dict[str, str]) -> None:
            size = min(int(query.get("n") or page), page)
            start = tags.index(query["last"]) + 1 if query.get("last") else 0
            chunk = tags[start:start + size]
            headers = {"Content-Type": "application/json"}
            if start + size < len(tags):
                headers["Link"] = (f'</v2/{repo}/tags/list?n={size}&last={chunk[-1]}>; '
                                   'rel="next"')
            self.answer(200, headers, json.dumps({"name": repo, "tags": chunk}).encode())

    return Fake


def many_tags(count: int) -> list[str]:
    """A long-lived repository: sha-, test-, v-tags and the mutable ones."""
    today = datetime.now(UTC).strftime("%Y%m%d")
    tags = ["latest", "staging-latest", "buildcache"]
    tags += [f"v1.{minor}.{patch}" for minor in range(20) for patch in range(25)]
    tags += [f"test-{today}-{n}" for n in range(1, 1001)]
    while len(tags) < count:
        tags.append(f"sha-{uuid.uuid4().hex[:7]}")
    return sorted(tags[:count])


# -- P5 -----------------------------------------------------------------------------------
@dataclass
class Requests:
    rows: list[tuple[str, list[str], list[str]]] = field(default_factory=list)


def measure_p5(repo_on_auth: str, out: Requests) -> None:
    seen: list[str] = []
    with serving(counting_proxy(AUTH, seen)) as proxy:
        client = RegistryClient(proxy, repo_on_auth, USER, PASSWORD)
        client.resolve("staging-latest")
        fresh = list(seen)
        seen.clear()
        client.resolve("staging-latest")
        out.rows.append((f"htpasswd registry {AUTH} (Basic)", fresh, list(seen)))
    digest = "sha256:" + "a" * 64
    seen = []
    with serving(fake_registry("org/app", ["v1.0.0"], 100, seen, digest)) as fake:
        client = RegistryClient(fake, "org/app", "user", "token")
        client.resolve("v1.0.0")
        fresh = list(seen)
        seen.clear()
        client.resolve("v1.0.0")
        out.rows.append(("fake Bearer-token registry (GHCR's flow)", fresh, list(seen)))


def push_for_p5(run_id: str, workdir: Path) -> str:
    """One image in the htpasswd registry (its own repository)."""
    config = workdir / "docker-config"
    config.mkdir(exist_ok=True)
    subprocess.run(["docker", "--config", str(config), "login", AUTH, "--username", USER,
                    "--password-stdin"], input=PASSWORD, text=True, capture_output=True,
                   check=True, timeout=60)
    repo = f"bench-build/{run_id}-p5"
    run(["docker", "--config", str(config), "buildx", "imagetools", "create", "-t",
         f"{AUTH}/{repo}:staging-latest", BASE])
    return repo


# -- P6 -----------------------------------------------------------------------------------
@dataclass
class Plans:
    command: list[float] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)
    pages: int = 0
    tags: int = 0
    planned: str = ""


def measure_p6(runs: int, workdir: Path, out: Plans) -> None:
    tags = many_tags(5000)
    seen: list[str] = []
    repo = "org/many"
    with serving(fake_registry(repo, tags, 100, seen, "sha256:" + "b" * 64)) as fake:
        env = {**clean_env(), "PYTHONPATH": str(ROOT), "GITHUB_EVENT_NAME": "push",
               "GITHUB_REF": "refs/heads/pre-release", "GITHUB_SHA": new_sha(),
               "GITHUB_WORKSPACE": str(workdir), "INPUT_REGISTRY": fake,
               "INPUT_IMAGE_REPO": repo, "INPUT_REGISTRY_USERNAME": "user",
               "INPUT_REGISTRY_PASSWORD": "token"}
        for _ in range(runs):
            t0 = time.monotonic()
            result = run([sys.executable, "-m", "deploykit", "tags"], env=env, cwd=workdir)
            out.command.append(time.monotonic() - t0)
            out.planned = " ".join(line.removeprefix("tags=") for line in
                                   result.stdout.splitlines() if line.startswith("tags="))
        for _ in range(runs):
            seen.clear()
            settings = load_settings({**env, "INPUT_MODE": "build"})
            client = RegistryClient(fake, repo, "user", "token")
            t0 = time.monotonic()
            plan = make_plan(settings, client)
            out.in_process.append(time.monotonic() - t0)
        out.pages = sum(1 for line in seen if line.startswith("GET /v2/") and
                        "/tags/list" in line)
        out.tags = len(plan.registry_tags)
        out.planned = out.planned or ", ".join(plan.tags)


# -- P7 -----------------------------------------------------------------------------------
@dataclass
class ActionImage:
    compressed_mb: float = 0.0
    disk_mb: float = 0.0
    build_seconds: float = 0.0
    first_line: list[float] = field(default_factory=list)
    line: str = ""


def measure_p7(runs: int, workdir: Path, deploy_repo: str, out: ActionImage) -> None:
    from tests.integration.actionbed import (  # noqa: PLC0415  (pytest, only for P7)
        build_action_image,
        copy_project,
        require_python_base,
    )

    base = require_python_base()
    project = copy_project(workdir / "action")
    t0 = time.monotonic()
    image = build_action_image(project, base)
    out.build_seconds = time.monotonic() - t0
    try:
        size = int(run(["docker", "image", "inspect", image, "--format", "{{.Size}}"]).stdout)
        disk = run(["docker", "run", "--rm", "--entrypoint", "du", image, "-sxb", "/"]).stdout
        out.compressed_mb, out.disk_mb = size / 1e6, int(disk.split()[0]) / 1e6
        inputs = {"INPUT_MODE": "deploy", "INPUT_REGISTRY": OPEN, "INPUT_IMAGE_REPO":
                  deploy_repo, "INPUT_IMAGE_TAG": "staging-latest", "INPUT_ENVIRONMENT":
                  "staging", "INPUT_DRY_RUN": "true"}
        argv = ["docker", "run", "--rm", "--network", "host"]
        for key, value in inputs.items():
            argv += ["-e", f"{key}={value}"]
        for _ in range(runs):
            t0 = time.monotonic()
            process = subprocess.Popen([*argv, image], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            out.line = process.stdout.readline().strip()
            out.first_line.append(time.monotonic() - t0)
            process.stdout.read()
            process.wait(timeout=120)
    finally:
        run(["docker", "rmi", "--force", image], check=False)


# -- the table ----------------------------------------------------------------------------
HEADERS = ["id", "what", "deploykit median (min, max)", "compared with", "ratio / delta",
           "goal", "met"]


def rows(b: Builds, r: Requests, p: Plans, a: ActionImage | None) -> list[list[str]]:
    cold, cached = Stats(b.cold), Stats(b.cached)
    ours, bare = Stats(b.deploykit), Stats(b.bare)
    ratio = ours.median / bare.median if b.bare else float("nan")
    body = [
        ["P4", "cached rebuild, one changed file, two platforms (`cache: registry`)",
         cached.show(), f"cold build: {cold.show()}",
         f"{cached.median / cold.median:.2f}x of cold", "report (no goal)", "-"],
        ["P4'", "pre-release rebuild, one changed file, registry cache, 1 platform",
         ours.show(), f"bare `buildx build --push`, same tags + cache: {bare.show()}",
         f"{ratio:.2f}x", "<= 1.15x bare", met(ratio <= 1.15)],
    ]
    for name, fresh, held in r.rows:
        body.append(["P5", f"requests to resolve one tag, {name}", f"{len(held)} with the "
                     "credentials held", f"a fresh client: {len(fresh)}", "-",
                     "1 with a token held", met(len(held) == 1)])
    command, plan = Stats(p.command), Stats(p.in_process)
    body.append(["P6", f"tag plan over {p.tags} tags, {p.pages} pages of 100 (list + plan, "
                 "in-process)", plan.show("ms"), f"the whole `deploykit tags` command, Python "
                 f"start-up included: {command.show()}", "-", "< 1 s (the plan; the command: "
                 f"{met(command.median < 1.0)})", met(plan.median < 1.0)])
    if a is not None:
        body.append(["P7", "action image: compressed / on disk", f"{a.compressed_mb:.1f} MB"
                     f" / {a.disk_mb:.1f} MB", f"README: {P7_BASELINE_MB} MB compressed",
                     f"{a.compressed_mb - P7_BASELINE_MB:+.1f} MB", "report; no regression "
                     f"over {P7_BASELINE_MB} MB (+1 %)",
                     met(a.compressed_mb <= P7_BASELINE_MB * P7_TOLERANCE)])
        body.append(["P7", "`docker run` of the action to its first log line (deploy, dry "
                     "run)", Stats(a.first_line).show(), "-", "-", "report", "-"])
    return body


def table(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def phase_table(b: Builds) -> str:
    names = [START, *(name for name, _ in PHASES)]
    steps = [OCI_EXPORT, IMAGE_EXPORT, CACHE_EXPORT]

    def median(runs: list[dict[str, float]], name: str) -> str:
        return f"{statistics.median(r.get(name, 0.0) for r in runs):.2f}" if runs else "-"

    header = ["side", *names, *(f"buildkit: {step}" for step in steps)]
    ours = ["deploykit", *(median(b.phases, n) for n in names),
            *(median(b.phases, s) if s != IMAGE_EXPORT else "-" for s in steps)]
    bare = ["bare buildx", *("-" for _ in names),
            *(median(b.bare_phases, s) if s != OCI_EXPORT else "-" for s in steps)]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in (ours, bare))])


def section(args: argparse.Namespace, body: list[list[str]], b: Builds, r: Requests,
            p: Plans, a: ActionImage | None, load_before: str) -> str:
    raw = {"p4_cold": b.cold, "p4_cached": b.cached, "p4p_deploykit": b.deploykit,
           "p4p_bare": b.bare, "p6_command": p.command, "p6_in_process": p.in_process,
           "p7_first_line": a.first_line if a else []}
    requests_text = []
    for name, fresh, held in r.rows:
        requests_text.append(f"- {name}: a fresh client `{'`, `'.join(fresh)}`; with the "
                             f"credentials held `{'`, `'.join(held)}`")
    return "\n".join([
        BEGIN, "", "## bench_build.py results (P4-P7)", "",
        f"`.venv/bin/python bench/bench_build.py --runs {args.runs}`, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.", "",
        f"Machine: {machine()}; load average at the start {load_before}.", "",
        f"Fixture: `FROM {BASE}` (busybox, two platforms), a shell loop of {args.loops} "
        "iterations behind a nonce (QEMU on arm64), `COPY www/`; each rebuild changes "
        f"`www/index.html`. Builds push to the open registry {OPEN} (no login on either "
        "side), `pre-release` tags; times are whole commands (process start to exit).", "",
        table(body), "",
        "P4': where deploykit's time goes (median seconds; each phase runs from the line of "
        "deploykit's log that starts it to the next; the `buildkit:` columns are buildkit's "
        "own `DONE` times of those steps, inside `buildx build`, on both sides):", "",
        phase_table(b), "",
        "P5, the requests:", "", *requests_text, "",
        f"P6: planned tags `{p.planned}`.", "",
        *([f"P7: built in {a.build_seconds:.0f} s; first log line `{a.line}`.", ""]
          if a else ["P7: skipped (`--skip-p7`).", ""]),
        "Raw seconds:", "", "```", json.dumps(
            {k: [round(v, 4) for v in vs] for k, vs in raw.items()}, indent=1), "```", "",
        END, ""])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (>= 5)")
    parser.add_argument("--p4-runs", type=int, default=3, help="cold/cached pairs of P4")
    parser.add_argument("--loops", type=int, default=100_000,
                        help="iterations of the Dockerfile's shell loop")
    parser.add_argument("--skip-p7", action="store_true", help="no action image build")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    run_id = uuid.uuid4().hex[:10]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    log = Path(tempfile.gettempdir()) / f"deploykit-bench-build-{run_id}.log"
    builds, asked, plans = Builds(), Requests(), Plans()
    action = None if args.skip_p7 else ActionImage()
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-build-") as tmp:
        workdir = Path(tmp)
        measure_p5(push_for_p5(run_id, workdir), asked)
        print(f"P5: {[(name, len(fresh), len(held)) for name, fresh, held in asked.rows]}",
              flush=True)
        measure_p6(args.runs, workdir, plans)
        print(f"P6: command {Stats(plans.command).show()}", flush=True)
        measure_p4(workdir, run_id, args.p4_runs, args.loops, log, builds)
        try:
            deployed = measure_p4_prime(workdir, run_id, args.runs, args.loops, log, builds)
        finally:
            remove_local_images(run_id)
        if action is not None:
            measure_p7(args.runs, workdir, deployed.repo, action)
    print(f"logs: {log}")
    body = rows(builds, asked, plans, action)
    print(table(body))
    print(phase_table(builds))
    merge_section(args.results, section(args, body, builds, asked, plans, action,
                                        load_before), BEGIN, END)
    print(f"merged into: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
