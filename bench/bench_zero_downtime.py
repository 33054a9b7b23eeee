"""Benchmark (issue 22): deploykit's start-first against its recreate, on the same fixture.

examples/zero-downtime (``web``: 2 replicas behind Debian's HAProxy 2.6) on the real engine,
one copy of it per method, a client sending 40 requests/s through that copy's proxy (from
1 s before each deploy to 2 s after it). The methods, on the same images and engine:

- **deploykit start-first**: ``python -m deploykit deploy`` of the example's file as it is
  (``update_config.order: start-first``);
- **deploykit recreate**: the same command, the file with ``order: stop-first`` (what a
  compose deploy did before start-first: recreate, and restore the previous release when
  the new one fails);
- **compose up -d**: bare ``docker compose up -d --no-build --wait`` (compose's own
  verdict); for the broken release, then the same of the previous release.

Each run switches every method's good release once (v1 <-> v2), then deploys the broken v3
(no ``/health``: it fails its healthcheck) once per method; the method that goes first
rotates from run to run. deploykit runs with ``health_settle`` 2 and ``keep_images`` 0 and
must exit 0 for a good release and 1 for v3 (it rolls back by itself). Deploy time is the
whole command (process start to exit; for bare compose on v3 both commands). Per run:
failed requests (any answer but 200, any error), how many requests v3 answered, and
whether the ``web`` containers that ran before still run afterwards (same IDs: under
start-first a failed release never stops them).

The images are built once and pushed to ``zdt/bench-<id>`` in the open registry (they stay
there); the projects, their lock networks and the local images are removed afterwards.
Writes its section of ``bench/results.md`` (``--results``), keeping the rest of the file.

    .venv/bin/python bench/bench_zero_downtime.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_compare import machine, merge_section  # noqa: E402
from deploykit.compose import image_environment  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    BASE_IMAGE,
    OPEN_REGISTRY,
    remove_local_images,
)
from tests.integration.loadclient import LoadClient  # noqa: E402
from tests.integration.zdt_fixtures import (  # noqa: E402
    BROKEN,
    ZdtStack,
    build_proxy_image,
    build_web_releases,
    running_stack,
)

RATE, SETTLE = 40, 2
START_FIRST, RECREATE, BARE = "deploykit start-first", "deploykit recreate", "compose up -d"
METHODS = (START_FIRST, RECREATE, BARE)
BEGIN, END = "<!-- bench_zero_downtime.py -->", "<!-- /bench_zero_downtime.py -->"


@dataclass
class Target:
    """One method's copy of the example, and the release it serves now."""

    method: str
    stack: ZdtStack
    directory: Path
    current: str = "v1"

    @property
    def project(self) -> str:
        return self.stack.project.name

    def web_ids(self) -> set[str]:
        return {str(c["Id"]) for c in self.stack.web_containers()}

    def serving(self) -> list[str]:
        """The releases of the running ``web`` containers (their image's tag)."""
        return sorted({str(c["Config"]["Image"]).partition("@")[0].rsplit(":", 1)[-1]
                       for c in self.stack.web_containers()})


@dataclass
class Deploy:
    method: str
    change: str
    ok: bool  # the command's verdict and the release serving afterwards are as expected
    failed: int
    sent: int
    seconds: float
    broken_answers: int
    kept_old: bool  # the web containers running before run afterwards too (same IDs)

    @property
    def broken(self) -> bool:
        return self.change.endswith(BROKEN)


# -- the methods -------------------------------------------------------------------------
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}


def deploykit(target: Target, tag: str, log: Path) -> tuple[float, bool]:
    """``python -m deploykit deploy`` of ``tag``: seconds, and whether it exited as a deploy
    of that release should (0 for a good one, 1 for the broken one)."""
    proxy = target.stack.compose.env
    env = {**clean_env(), "PYTHONPATH": str(ROOT),
           "GITHUB_WORKSPACE": str(target.directory), "GITHUB_REPOSITORY": "org/app",
           "GITHUB_RUN_ID": uuid.uuid4().hex[:8], "GITHUB_ACTOR": "bench",
           "INPUT_REGISTRY": OPEN_REGISTRY, "INPUT_IMAGE_REPO": target.stack.repo,
           "INPUT_PROJECT_NAME": target.project, "INPUT_ENVIRONMENT": "staging",
           "INPUT_IMAGE_TAG": tag, "INPUT_STATE_DIR": str(target.directory / "state"),
           "INPUT_HEALTH_SETTLE": str(SETTLE), "INPUT_HEALTH_TIMEOUT": "60",
           "INPUT_KEEP_IMAGES": "0",  # bare compose prunes nothing either
           "INPUT_COMPOSE_ENV": f"PROXY_IMAGE={proxy['PROXY_IMAGE']}\n"
                                f"PROXY_PORT={proxy['PROXY_PORT']}"}
    with log.open("a") as out:
        out.write(f"\n### {target.method}: deploy {tag} ({target.project})\n")
        out.flush()
        began = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "deploykit", "deploy"], env=env,
                              cwd=target.directory, stdout=out, stderr=subprocess.STDOUT,
                              timeout=300, check=False).returncode
        seconds = time.monotonic() - began
        out.write(f"### exit {code} in {seconds:.2f} s\n")
    return seconds, code == (1 if tag == BROKEN else 0)


def compose_up_wait(target: Target, tag: str, log: Path) -> bool:
    env = {**clean_env(), **target.stack.compose.env,
           **image_environment(OPEN_REGISTRY, target.stack.repo, tag,
                               target.stack.digests[tag])}
    with log.open("a") as out:
        out.write(f"\n### {target.method}: up --wait {tag} ({target.project})\n")
        out.flush()
        code = subprocess.run(
            ["docker", "compose", "-p", target.project, "--project-directory",
             str(target.directory), "up", "-d", "--no-build", "--wait", "--wait-timeout", "60"],
            env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False).returncode
        out.write(f"### exit {code}\n")
    return code == 0


def bare(target: Target, tag: str, log: Path) -> tuple[float, bool]:
    """``up -d --wait`` of ``tag``; when that fails, the same of the previous release."""
    began = time.monotonic()
    up = compose_up_wait(target, tag, log)
    restored = up or compose_up_wait(target, target.current, log)
    return time.monotonic() - began, up == (tag != BROKEN) and restored


def deploy(target: Target, tag: str, log: Path) -> tuple[float, bool]:
    return bare(target, tag, log) if target.method == BARE else deploykit(target, tag, log)


def measure(target: Target, new: str, log: Path) -> Deploy:
    with LoadClient(target.stack.url, rate=RATE, max_requests=RATE * 180,
                    max_seconds=180) as load:
        time.sleep(1)
        before = target.web_ids()
        seconds, verdict_ok = deploy(target, new, log)
        time.sleep(2)
    result = load.result
    expected = target.current if new == BROKEN else new
    serving = target.serving()
    change = f"{target.current}->{new}"
    if new != BROKEN and serving == [new]:
        target.current = new
    return Deploy(target.method, change, verdict_ok and serving == [expected],
                  len(result.failures), result.sent, seconds, result.releases[BROKEN],
                  target.web_ids() == before)


# -- the fixture -------------------------------------------------------------------------
@contextmanager
def targets(workdir: Path, proxy: str, repo: str, digests: dict[str, str], log: Path
            ) -> Iterator[list[Target]]:
    """One copy of the example per method, each serving v2 after a first deploy of it by its
    own method (not measured: deploykit then has a history, as on a real host)."""
    with ExitStack() as stack:
        found = []
        for method in METHODS:
            directory = workdir / re.sub(r"[^a-z]+", "-", method).strip("-")
            directory.mkdir()
            running = stack.enter_context(running_stack(proxy, repo, digests, directory))
            stack.callback(subprocess.run, ["docker", "network", "rm",
                                            f"deploykit-lock-{running.project.name}"],
                           capture_output=True, check=False, timeout=60)
            if method == RECREATE:
                stop_first(directory / "compose.yaml")
            target = Target(method, running, directory)
            deploy(target, "v2", log)
            running.wait_serving()
            if target.serving() != ["v2"]:
                sys.exit(f"{method}: the first deploy of v2 did not take (see {log})")
            target.current = "v2"
            found.append(target)
        yield found


def stop_first(compose_file: Path) -> None:
    text, count = re.subn(r"order: start-first\b", "order: stop-first",
                          compose_file.read_text())
    if count != 1:
        sys.exit(f"{compose_file}: expected one `order: start-first`, found {count}")
    compose_file.write_text(text)


# -- the report --------------------------------------------------------------------------
def line(row: Deploy) -> str:
    return (f"{row.method:22} {row.change:7} ok={row.ok} failed={row.failed}/{row.sent} "
            f"deploy={row.seconds:.1f}s v3-answers={row.broken_answers} "
            f"old-containers-kept={row.kept_old}")


def table(rows: list[Deploy]) -> str:
    lines = ["| release | method | failed requests (each run) | deploy s (median) | "
             "answered by v3 (each run) | old containers kept |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, broken in (("good (v1<->v2)", False), ("fails healthcheck (v3)", True)):
        for method in METHODS:
            mine = [r for r in rows if r.method == method and r.broken == broken]
            if mine:
                answers = ", ".join(str(r.broken_answers) for r in mine) if broken else "-"
                kept = sum(r.kept_old for r in mine)
                lines.append(f"| {kind} | {method} | {', '.join(str(r.failed) for r in mine)}"
                             f" | {statistics.median(r.seconds for r in mine):.1f} | "
                             f"{answers} | {kept} of {len(mine)} |")
    return "\n".join(lines)


def section(rows: list[Deploy], runs: int, load_before: str) -> str:
    raw = [{"method": r.method, "change": r.change, "ok": r.ok, "failed": r.failed,
            "sent": r.sent, "seconds": round(r.seconds, 2), "v3": r.broken_answers,
            "kept_old": r.kept_old}
           for r in rows]
    not_ok = [line(r) for r in rows if not r.ok]
    return "\n".join([
        BEGIN, "", "## bench_zero_downtime.py results (issue 22: start-first)", "",
        f"`.venv/bin/python bench/bench_zero_downtime.py --runs {runs}`, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.", "",
        f"Machine: {machine()}; load average at the start {load_before}.", "",
        "Fixture: examples/zero-downtime (`web`: 2 replicas, HAProxy 2.6 in front), one copy "
        f"per method, {RATE} requests/s through its proxy from 1 s before each deploy to 2 s "
        "after. deploykit start-first: `python -m deploykit deploy` of the example's file; "
        "deploykit recreate: the same with `order: stop-first`; compose: `docker compose up "
        "-d --no-build --wait`, for v3 then the same of the previous release. deploykit: "
        f"`health_settle` {SETTLE}, `keep_images` 0; exit 0 for v1/v2, 1 for v3 (it rolls "
        "back by itself). Deploy s: the whole command(s), process start to exit. Old "
        "containers kept: the `web` containers running before the deploy still run after "
        "it (same IDs). Methods alternate (the first one rotates per run).", "",
        table(rows), "",
        *([f"Not as expected: {'; '.join(not_ok)}", ""] if not_ok else []),
        "Each deploy:", "", "```", *(json.dumps(r) for r in raw), "```", "", END, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    run_id = uuid.uuid4().hex[:8]
    rows: list[Deploy] = []
    with tempfile.TemporaryDirectory(prefix="bench-zdt-") as work:
        workdir = Path(work)
        log = workdir / "deploys.log"
        proxy = build_proxy_image(workdir)
        repo = f"zdt/bench-{run_id}"
        digests = build_web_releases(OPEN_REGISTRY, repo, BASE_IMAGE, workdir)
        try:
            with targets(workdir, proxy, repo, digests, log) as found:
                for run in range(args.runs):
                    order = found[run % len(found):] + found[:run % len(found)]
                    for new in ("switch", BROKEN):
                        for target in order:
                            tag = BROKEN if new == BROKEN else \
                                ("v2" if target.current == "v1" else "v1")
                            rows.append(measure(target, tag, log))
                            print(line(rows[-1]), flush=True)
        finally:
            kept = Path(tempfile.gettempdir()) / f"deploykit-bench-zdt-{run_id}.log"
            if log.exists():
                shutil.copy(log, kept)
                print(f"deploy logs: {kept}")
            remove_local_images(f"{OPEN_REGISTRY}/{repo}")
    print()
    print(table(rows))
    merge_section(args.results, section(rows, args.runs, load_before), BEGIN, END)
    print(f"merged into: {args.results}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
