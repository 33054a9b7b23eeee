"""Benchmark: deploykit deploy next to the bare compose commands (issue 13, rows P1-P3).

One command, one fixture, both sides alternating in one run:

- a busybox ``app`` (httpd, 1 s healthcheck, ``stop_signal: SIGKILL``) and a ``worker``
  without a healthcheck that traps TERM, on one image pushed to the htpasswd registry
  ``127.0.0.1:5001`` (tag ``good``), plus a crash-at-start variant (tag ``crash``:
  ``app`` exits 3 at once);
- **bare**: ``docker compose pull -q && docker compose up -d --no-build --force-recreate
  --wait`` then ``curl`` of the app's URL (what a workflow without deploykit runs);
- **deploykit**: ``python -m deploykit deploy --force-redeploy --smoke-url URL`` with
  default inputs (P1) and with ``--health-settle 0`` (P1', the guarantees of
  ``up --wait``: healthy/running, no stability window).

deploykit does not pull a digest the engine already has (a redeploy, as here: bare
compose's ``pull`` asks the registry every time); a second P1' row makes the engine forget
``image@digest`` before each run, so that deploykit pulls as well (a new release).

Rows: P1, P1' (whole command, process start to exit); P2 (the engine's last
``health_status: healthy`` event of a P1' deploy to the moment deploykit prints its
verdict, the health table); P3 (a deploy of ``crash``: deploykit's verdict after the
engine's ``die`` of the app, and the restore, from ``==> Restore`` to the verdict on
the restored containers, next to a bare ``up -d --no-build --wait`` of ``good`` from the
same crashed state). Each row: median, min, max of ``--runs`` runs (>= 5), its goal and
whether it is met. Writes ``bench/results.md`` (``--results`` to change) with the
machine, the commit and the raw numbers. P4-P7 are not measured here.

Everything it creates is removed afterwards (``compose down -v`` of its own project,
the lock network, its local images); the pushed images stay in the registry.

    .venv/bin/python bench/bench_compare.py [--runs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REGISTRY, USER, PASSWORD = "127.0.0.1:5001", "deploykit", "deploykit-test-pass"
BASE = "127.0.0.1:5000/testbed/busybox:latest"
SETTLE = 5  # deploykit's default health_settle
APP = """\
FROM {base}
RUN mkdir -p /www && echo "bench release {tag}" > /www/index.html
CMD {command}
"""
SERVE = '["httpd", "-f", "-p", "8080", "-h", "/www"]'
CRASH = '["sh", "-c", "echo cannot open the database; exit 3"]'
COMPOSE = """\
services:
  app:
    image: ${{IMAGE_REGISTRY}}/${{IMAGE_REPO}}:${{IMAGE_TAG}}
    ports: ["127.0.0.1:{port}:8080"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1"]
      interval: 1s
      timeout: 2s
      retries: 3
  worker:  # no healthcheck (the image has none)
    image: ${{IMAGE_REGISTRY}}/${{IMAGE_REPO}}:${{IMAGE_TAG}}
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $$!; done"]
"""


# -- helpers -------------------------------------------------------------------------
def run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def show(self, unit: str = "s") -> str:
        if not self.values:
            return "-"
        scale, digits = (1000, 0) if unit == "ms" else (1, 2)
        low, high = min(self.values) * scale, max(self.values) * scale
        return (f"{self.median * scale:.{digits}f} {unit} (min {low:.{digits}f}, "
                f"max {high:.{digits}f})")


@dataclass
class Fixture:
    workdir: Path
    project: str
    port: int
    repo: str
    config: Path  # DOCKER_CONFIG logged in to REGISTRY, for the bare commands
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def image_name(self) -> str:
        return f"{REGISTRY}/{self.repo}"

    def compose_env(self, tag: str) -> dict[str, str]:
        return {**clean_env(), "DOCKER_CONFIG": str(self.config), "IMAGE_REGISTRY": REGISTRY,
                "IMAGE_REPO": self.repo, "IMAGE_TAG": tag}

    def compose(self, tag: str, *args: str, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        return run(["docker", "compose", "-p", self.project, "--project-directory",
                    str(self.workdir), *args], env=self.compose_env(tag), check=check)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("INPUT_", "GITHUB_")) and k != "DOCKER_CONFIG"}


def build(fixture: Fixture) -> None:
    subprocess.run(["docker", "--config", str(fixture.config), "login", REGISTRY,
                    "--username", USER, "--password-stdin"], input=PASSWORD, text=True,
                   capture_output=True, check=True, timeout=60)
    for tag, command in (("good", SERVE), ("crash", CRASH)):
        context = fixture.workdir / f"image-{tag}"
        context.mkdir()
        (context / "Dockerfile").write_text(APP.format(base=BASE, tag=tag, command=command))
        metadata = context / "metadata.json"
        run(["docker", "--config", str(fixture.config), "buildx", "build", "--platform",
             "linux/amd64", "--push", "--provenance=false", "--metadata-file", str(metadata),
             "-t", f"{fixture.image_name}:{tag}", str(context)])
        fixture.digests[tag] = json.loads(metadata.read_text())["containerimage.digest"]


# -- the engine's clock ----------------------------------------------------------------
def engine_events(fixture: Fixture, since: float, until: float) -> list[dict[str, Any]]:
    """The project's container events between two wall-clock times (this machine is
    the engine's host: one clock)."""
    out = run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
               "--filter", f"label=com.docker.compose.project={fixture.project}",
               "--filter", "type=container", "--format", "{{json .}}"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def event_times(events: list[dict[str, Any]], action: str, service: str = "") -> list[float]:
    found = []
    for event in events:
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if event.get("Action") == action and (
                not service or attributes.get("com.docker.compose.service") == service):
            found.append(int(event["timeNano"]) / 1e9)
    return found


# -- one run of each side ------------------------------------------------------------
@dataclass
class Timed:
    seconds: float
    code: int
    started: float  # wall clock
    lines: list[tuple[float, str]] = field(default_factory=list)  # (wall clock, line)

    def phases(self) -> dict[str, float]:
        """Seconds of each phase, from the ``==>`` lines of deploykit's log."""
        marks = [("start", self.started)]
        marks += [(name, at) for name, prefix in PHASES
                  if (at := self.first(prefix)) is not None]
        marks.append(("end", self.started + self.seconds))
        return {name: end - begin
                for (name, begin), (_, end) in itertools.pairwise(marks)}

    def first(self, prefix: str, after: str = "") -> float | None:
        seen_after = not after
        for when, line in self.lines:
            if not seen_after:
                seen_after = line.startswith(after)
                continue
            if line.startswith(prefix):
                return when
        return None


def bare_deploy(fixture: Fixture) -> Timed:
    env = fixture.compose_env("good")
    base = ["docker", "compose", "-p", fixture.project, "--project-directory",
            str(fixture.workdir)]
    started, t0 = time.time(), time.monotonic()
    code = subprocess.run([*base, "pull", "-q"], env=env, capture_output=True,
                          check=False).returncode
    if code == 0:
        code = subprocess.run([*base, "up", "-d", "--no-build", "--force-recreate", "--wait"],
                              env=env, capture_output=True, check=False).returncode
    if code == 0:
        code = subprocess.run(["curl", "-fsS", "-o", "/dev/null", fixture.url],
                              capture_output=True, check=False).returncode
    return Timed(time.monotonic() - t0, code, started)


def deploykit(fixture: Fixture, tag: str, *flags: str) -> Timed:
    env = {**clean_env(), "PYTHONPATH": str(ROOT), "GITHUB_WORKSPACE": str(fixture.workdir),
           "DEPLOYKIT_STATE_DIR": str(fixture.workdir / "state"),
           "INPUT_REGISTRY_PASSWORD": PASSWORD,
           # Bare compose removes no image: the deploy is compared without pruning
           # (keep_images lists the engine's images after the verdict: about 0.6 s here).
           "INPUT_KEEP_IMAGES": "0"}
    argv = [sys.executable, "-m", "deploykit", "deploy", "--registry", REGISTRY,
            "--registry-username", USER, "--image-repo", fixture.repo, "--environment",
            "staging", "--image-tag", tag, "--project-name", fixture.project,
            "--smoke-url", fixture.url, "--force-redeploy", *flags]
    started, t0 = time.time(), time.monotonic()
    process = subprocess.Popen(argv, env=env, cwd=fixture.workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = [(time.time(), line.rstrip("\n")) for line in process.stderr]
    code = process.wait()
    timed = Timed(time.monotonic() - t0, code, started, lines)
    with (fixture.workdir / "deploykit.log").open("a") as log:
        log.write(f"\n### {' '.join(argv[3:])}: exit {code}, {timed.seconds:.2f} s\n")
        log.writelines(f"[{when - started:7.3f}] {line}\n" for when, line in lines)
    return timed


# -- the rows ------------------------------------------------------------------------
@dataclass
class Measured:
    bare: list[float] = field(default_factory=list)
    p1: list[float] = field(default_factory=list)
    p1_settle0: list[float] = field(default_factory=list)
    p1_new: list[float] = field(default_factory=list)  # P1' with the digest new to the engine
    to_healthy: list[float] = field(default_factory=list)  # app start -> healthy (P1 runs)
    p2: list[float] = field(default_factory=list)
    p3_verdict: list[float] = field(default_factory=list)
    p3_restore: list[float] = field(default_factory=list)
    p3_bare_restore: list[float] = field(default_factory=list)
    phases: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    load_before: str = ""
    failures: list[str] = field(default_factory=list)


PHASES = (("pull", "==> Pull "), ("up", "==> docker compose up"),
          ("health", "==> Health of the new containers"), ("smoke and finish", "==> Smoke test"))
# The health table's header, printed the moment the verdict falls (a terminal gets it as
# plain columns since the summary's Markdown went to GITHUB_STEP_SUMMARY only).
VERDICT = "service  container "


def measure_p1(fixture: Fixture, runs: int, results: Measured,
               note: Callable[[str], None]) -> None:
    fixture.compose("good", "up", "-d", "--no-build", "--wait")  # a release runs already
    for index in range(runs):
        bare = bare_deploy(fixture)
        results.bare.append(bare.seconds)
        default = deploykit(fixture, "good")
        results.p1.append(default.seconds)
        events = engine_events(fixture, default.started, time.time())
        starts = event_times(events, "start", "app")
        healthy = event_times(events, "health_status: healthy", "app")
        if starts and healthy:
            results.to_healthy.append(healthy[-1] - starts[-1])
        settle0 = deploykit(fixture, "good", "--health-settle", "0")
        results.p1_settle0.append(settle0.seconds)
        forget_digest(fixture, "good")  # as on a host that never ran it: deploykit pulls
        new = deploykit(fixture, "good", "--health-settle", "0")
        results.p1_new.append(new.seconds)
        verdict = settle0.first(VERDICT, after="==> Health of the new containers")
        events = engine_events(fixture, settle0.started, time.time())
        healthy = event_times(events, "health_status: healthy")
        if verdict and healthy:
            results.p2.append(verdict - max(t for t in healthy if t <= verdict + 1))
        for name, timed in (("bare", bare), ("P1", default), ("P1'", settle0),
                            ("P1' new digest", new)):
            if name != "bare":
                results.phases.setdefault(name, []).append(timed.phases())
            if timed.code != 0:
                results.failures.append(f"P1 run {index + 1}: {name} exited {timed.code}")
        note(f"run {index + 1}: bare {bare.seconds:.2f} s, deploykit {default.seconds:.2f} s, "
             f"settle 0 {settle0.seconds:.2f} s, new digest {new.seconds:.2f} s")


def forget_digest(fixture: Fixture, tag: str) -> None:
    """The engine forgets ``image@digest`` (the image stays: its containers run): the next
    deploykit deploy of it pulls, as bare compose's `pull` always asks the registry."""
    # check=False: where `@digest` is the image's last name, the engine refuses while its
    # containers run (then deploykit finds it present and does not pull: the row says so).
    run(["docker", "image", "rm", f"{fixture.image_name}@{fixture.digests[tag]}"], check=False)


def measure_p3(fixture: Fixture, runs: int, results: Measured,
               note: Callable[[str], None]) -> None:
    for index in range(runs):
        fixture.compose("good", "up", "-d", "--no-build", "--wait")
        crash = deploykit(fixture, "crash")
        if crash.code != 1:
            results.failures.append(f"P3 run {index + 1}: deploykit exited {crash.code}")
        verdict = crash.first("==> Logs of ")
        events = engine_events(fixture, crash.started, time.time())
        died = [t for t in event_times(events, "die", "app") if verdict and t <= verdict]
        if verdict and died:
            results.p3_verdict.append(verdict - died[-1])
        restore = crash.first("==> Restore ")
        restored = crash.first(VERDICT, after="==> Health after the rollback")
        if restore and restored:
            results.p3_restore.append(restored - restore)
        # bare: the same crash, then `up --wait` of the previous release
        fixture.compose("crash", "up", "-d", "--no-build", check=False)
        t0 = time.monotonic()
        back = fixture.compose("good", "up", "-d", "--no-build", "--wait", check=False)
        results.p3_bare_restore.append(time.monotonic() - t0)
        if back.returncode != 0:
            results.failures.append(f"P3 run {index + 1}: bare restore exited "
                                    f"{back.returncode}")
        note(f"crash run {index + 1}: deploykit exit {crash.code} in {crash.seconds:.2f} s, "
             f"bare restore {results.p3_bare_restore[-1]:.2f} s")


# -- the report ----------------------------------------------------------------------
def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    engine = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False)
    compose = run(["docker", "compose", "version", "--short"], check=False)
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False)
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "deploykit"],
                check=False).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({cpu}), {int(memory) // 1024} MiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"Docker Engine {engine.stdout.strip()}, compose {compose.stdout.strip()}, "
            f"deploykit at {commit.stdout.strip()}"
            f"{' (deploykit/ modified in the work tree)' if dirty else ''}, "
            f"load average at the end {load}")


def rows(m: Measured) -> list[list[str]]:
    bare, p1, p1_0 = Stats(m.bare), Stats(m.p1), Stats(m.p1_settle0)
    p1_new = Stats(m.p1_new)
    healthy = Stats(m.to_healthy).median
    p1_goal = bare.median + max(0.0, SETTLE - healthy) + 0.3
    ratio = p1_0.median / bare.median
    p2, verdict = Stats(m.p2), Stats(m.p3_verdict)
    restore, bare_restore = Stats(m.p3_restore), Stats(m.p3_bare_restore)

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        ["P1", "deploy, default inputs (health_settle 5)", p1.show(), bare.show(),
         f"{p1.median / bare.median:.2f}x",
         f"<= bare + max(0, {SETTLE} - {healthy:.2f} to healthy) + 0.3 = {p1_goal:.2f} s",
         met(p1.median <= p1_goal)],
        ["P1'", "deploy, health_settle 0 (equal guarantees)", p1_0.show(), bare.show(),
         f"{ratio:.2f}x", "<= 1.10x bare", met(ratio <= 1.10)],
        ["P1'", "the same, the digest new to the engine (deploykit pulls it too)",
         p1_new.show(), bare.show(), f"{p1_new.median / bare.median:.2f}x", "<= 1.10x bare",
         met(p1_new.median <= 1.10 * bare.median)],
        ["P2", "verdict after the engine's last health_status: healthy", p2.show("ms"), "-",
         "-", "<= 150 ms median", met(p2.median <= 0.15)],
        ["P3", "crash-at-start: verdict after the app's die event", verdict.show("ms"), "-",
         "-", "<= 500 ms", met(verdict.median <= 0.5)],
        ["P3", "crash-at-start: restored and healthy (restore + verdict)", restore.show(),
         f"`up --wait` of the previous release: {bare_restore.show()}",
         f"{restore.median - bare_restore.median:+.2f} s",
         f"<= bare + 0.5 = {bare_restore.median + 0.5:.2f} s",
         met(restore.median <= bare_restore.median + 0.5)],
    ]


HEADERS = ["id", "what", "deploykit median (min, max)", "bare compose", "ratio / delta",
           "goal", "met"]


def table(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def phase_table(m: Measured) -> str:
    """Median seconds of each phase of deploykit's P1 and P1' runs."""
    names = ["start", "pull", "up", "health", "smoke and finish"]
    lines = ["| run | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for run_name, runs in m.phases.items():
        cells = [f"{statistics.median(r.get(n, 0.0) for r in runs):.2f}" for n in names]
        lines.append(f"| {run_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap(m: Measured) -> str:
    """Where P1' differs from bare compose: deploykit's phases bare compose has no
    counterpart for (pull, up and the wait for healthy it has too)."""
    runs = m.phases.get("P1'", [])
    if not runs or not m.bare:
        return ""
    own = {name: statistics.median(r.get(name, 0.0) for r in runs)
           for name in ("start", "smoke and finish")}
    return (f"P1' minus bare: {Stats(m.p1_settle0).median - Stats(m.bare).median:+.2f} s "
            f"(medians); the phases bare compose has no counterpart for take "
            f"{own['start']:.2f} s before the pull (Python start-up, resolve, `compose "
            f"config`, lock) and {own['smoke and finish']:.2f} s after the verdict (smoke "
            "test, digest check, history, summary). The health verdict itself follows the "
            "engine (P2, P3).")


OTHER_SECTIONS = [re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
                  for name in (r"bench_build\.py", r"bench_zero_downtime\.py")]


def merge_section(path: Path, text: str, begin: str, end: str) -> None:
    """Replace the section ``begin`` ... ``end`` of ``path`` (re-read now) with ``text``,
    or append it: how bench_build.py and bench_zero_downtime.py write their results."""
    current = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(current):
        merged = pattern.sub(lambda _: text, current)
    else:
        merged = current.rstrip("\n") + ("\n\n" if current else "") + text
    path.write_text(merged)


def build_section(path: Path) -> str:
    """The other benches' sections of the results file (bench_build.py's rows P4-P7,
    bench_zero_downtime.py's), kept as they are."""
    text = path.read_text() if path.exists() else ""
    found = [match.group(0) for section in OTHER_SECTIONS if (match := section.search(text))]
    return "".join(part + "\n\n" for part in found).removesuffix("\n")


def write_results(path: Path, m: Measured, runs: int, body: list[list[str]]) -> None:
    kept = build_section(path)
    raw = {name: [round(v, 4) for v in getattr(m, name)] for name in (
        "bare", "p1", "p1_settle0", "p1_new", "to_healthy", "p2", "p3_verdict", "p3_restore",
        "p3_bare_restore")}
    path.write_text("\n".join([
        "# bench_compare.py results", "",
        f"`.venv/bin/python bench/bench_compare.py --runs {runs}`, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.", "",
        f"Machine: {machine()}; load average at the start {m.load_before}.", "",
        "Fixture: busybox `app` (httpd, 1 s healthcheck, `stop_signal: SIGKILL`) and "
        "`worker` (no healthcheck, traps TERM) on one image in the htpasswd registry "
        f"{REGISTRY}; every deploy recreates both (`--force-redeploy`, bare "
        "`--force-recreate`) and checks the app's URL. Bare compose: `docker compose pull "
        "-q && docker compose up -d --no-build --force-recreate --wait` + `curl`. deploykit "
        "and bare compose alternate in one run; times are whole commands (process start "
        "to exit), P2/P3 from the engine's event timestamps to the line deploykit prints "
        "with its verdict.", "",
        table(body), "",
        "Where deploykit's time goes (median seconds; `start`: Python start-up, gate, "
        "resolve, `compose config`, lock and what runs now, up to the `==> Pull` line; "
        "`health`: from the end of `up` to the verdict; `smoke and finish`: smoke test, "
        "digest check, history, summary):", "",
        phase_table(m), "",
        gap(m), "",
        "P4-P7 (builds, registry requests, tag plan, action image) are measured by "
        "bench_build.py; its section follows.", "",
        *([f"Failures during the run: {'; '.join(m.failures)}", ""] if m.failures else []),
        "Raw seconds:", "", "```", json.dumps(raw, indent=1), "```", "", kept]))


def clean_up(fixture: Fixture) -> None:
    fixture.compose("good", "down", "-v", "--remove-orphans", "--timeout", "1", check=False)
    run(["docker", "network", "rm", f"deploykit-lock-{fixture.project}"], check=False)
    listed = run(["docker", "images", "--no-trunc", "--format", "{{.Repository}} {{.ID}}"],
                 check=False).stdout
    ids = {line.split()[1] for line in listed.splitlines()
           if line.split()[0] == fixture.image_name}
    if ids:
        run(["docker", "image", "rm", "--force", *sorted(ids)], check=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (>= 5)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        sys.exit("curl is missing (the bare side uses it)")
    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-compare-") as tmp:
        workdir = Path(tmp)
        (workdir / "docker-config").mkdir()
        port = free_port()
        (workdir / "compose.yaml").write_text(COMPOSE.format(port=port))
        fixture = Fixture(workdir, f"benchcmp-{run_id}", port, f"bench-compare/{run_id}",
                          workdir / "docker-config")
        measured = Measured(load_before=" ".join(f"{x:.2f}" for x in os.getloadavg()))

        def note(text: str) -> None:
            print(text, flush=True)

        try:
            build(fixture)
            measure_p1(fixture, args.runs, measured, note)
            measure_p3(fixture, args.runs, measured, note)
        finally:
            log = Path(tempfile.gettempdir()) / f"deploykit-bench-compare-{run_id}.log"
            if (workdir / "deploykit.log").exists():
                shutil.copy(workdir / "deploykit.log", log)
                print(f"deploykit's logs: {log}")
            clean_up(fixture)
    body = rows(measured)
    print(table(body))
    for failure in measured.failures:
        print(f"failure: {failure}")
    write_results(args.results, measured, args.runs, body)
    print(f"written: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
