"""Benchmark: the ADR's deploy metrics with the real ``deploykit deploy``.

Builds the demo app (``examples/demo``) as ``v1.0.0`` and as a deliberately broken
``v1.0.1`` (its healthcheck fails) into a fresh repository ``bench-deploy/<id>`` of
the open registry, removes the engine's local copies so that deploys really pull,
then times four deploys of a fresh compose project (a copy of ``examples/demo`` on
a free port), each from the start of ``deploykit`` to its exit:

1. first deploy of ``v1.0.0`` to staging: gate, resolve, lock, pull, up, health
   verdict, smoke test, digest check (ADR: < 2 min from trigger to healthy);
2. the same ``v1.0.0`` again with ``--force-redeploy``: containers recreated, the
   image is already on the host;
3. reproducibility: the ``digest`` outputs of 1 and 2, the build's digest and the
   digest every running container runs (``docker inspect``) must all be one;
4. ``v1.0.1`` (broken): unhealthy, automatically rolled back to ``v1.0.0``.

The phases come from deploykit's own log (``==>`` group lines, timestamped as they
arrive). For deploy 4, ``docker events`` tells when the engine itself declared the
container unhealthy, to compare with when deploykit noticed. Logs go to
``/tmp/deploykit-bench-deploy-<id>.log``. Everything the run created on the engine
is removed afterwards (``compose down`` without ``-v``, then the project's volumes
and networks by label, the lock network, the repository's local images); the
pushed images stay in the registry.

    .venv/bin/python bench/bench_deploy.py
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOYKIT = ROOT / ".venv" / "bin" / "deploykit"
DEMO = ROOT / "examples" / "demo"
GOOD, BROKEN = "v1.0.0", "v1.0.1"
# Variables of an enclosing workflow step that would change how deploykit reports.
_DROPPED_ENV = ("GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")

# Log line prefixes (deploykit outside a workflow) -> the phase that begins there; what
# comes before the first one is the gate, resolve, compose config, lock and record.
MARKERS = (
    ("==> Pull ", "pull"),
    ("==> docker compose up", "up"),
    ("==> Health of the new containers", "health"),
    ("==> Smoke test", "smoke"),
    ("Every service of ", "finish"),  # digests verified; history, summary, outputs
    ("==> Logs of ", "failure logs"),  # the health verdict failed
    ("==> Restore ", "restore"),
    ("==> Health after the rollback", "health after rollback"),
)


@dataclass
class DeployRun:
    label: str
    code: int
    seconds: float
    outputs: dict[str, str]
    marks: dict[str, float]  # phase -> seconds since start (first occurrence)
    wall_marks: dict[str, float]  # phase -> wall clock (epoch seconds)
    containers: dict[str, str] = field(default_factory=dict)  # name -> running digest

    def phases(self) -> str:
        begins = sorted([("before pull", 0.0), *self.marks.items()], key=lambda p: p[1])
        ends = [at for _, at in begins[1:]] + [self.seconds]
        return ", ".join(f"{name} {end - begin:.1f}"
                         for (name, begin), end in zip(begins, ends, strict=True))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--platforms", default="linux/amd64")
    parser.add_argument("--health-timeout", default="120")
    parser.add_argument("--smoke-timeout", default="60")
    return parser.parse_args(argv)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _DROPPED_ENV and not k.startswith("INPUT_")}
    env.setdefault("PATH", os.defpath)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


# -- build ---------------------------------------------------------------------------
def build(args: argparse.Namespace, workspace: Path, repo: str, version: str, log: Path,
          *build_args: str) -> str:
    env = {**base_env(), "GITHUB_EVENT_NAME": "push", "GITHUB_REF": f"refs/tags/{version}",
           "GITHUB_SHA": secrets.token_hex(20), "GITHUB_REPOSITORY": "bench/deploy",
           "GITHUB_WORKSPACE": str(workspace)}
    argv = [str(DEPLOYKIT), "build", "--json", "--registry", args.registry,
            "--image-repo", repo, "--platforms", args.platforms, "--cache", "none"]
    for build_arg in (f"APP_VERSION={version}", *build_args):
        argv += ["--build-args", build_arg]
    with log.open("a") as handle:
        handle.write(f"\n### build {version}\n")
        handle.flush()
        result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=handle,
                                text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"deploykit build {version} failed (exit {result.returncode}); see {log}")
    return str(json.loads(result.stdout)["digest"])


def remove_local_images(image_name: str) -> None:
    """By ID: the engine keeps what was built and pulled, tagged or by digest."""
    listed = docker("images", "--no-trunc", "--format", "{{.Repository}} {{.ID}}").stdout
    ids = {line.split()[1] for line in listed.splitlines() if line.split()[0] == image_name}
    if ids:
        docker("image", "rm", "--force", *sorted(ids))


# -- deploy --------------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    name: str
    directory: Path
    port: int
    state: Path


def deploy(args: argparse.Namespace, project: Project, repo: str, tag: str, log: Path,
           label: str, *extra: str) -> DeployRun:
    env = {**base_env(), "GITHUB_WORKSPACE": str(project.directory),
           "DEPLOYKIT_STATE_DIR": str(project.state), "DEMO_PORT": str(project.port)}
    argv = [str(DEPLOYKIT), "deploy", "--json", "--registry", args.registry,
            "--image-repo", repo, "--environment", "staging", "--image-tag", tag,
            "--project-name", project.name,
            "--smoke-url", f"http://127.0.0.1:{project.port}/",
            "--smoke-contains", "deploykit demo", "--health-timeout", args.health_timeout,
            "--smoke-timeout", args.smoke_timeout, *extra]
    marks: dict[str, float] = {}
    wall_marks: dict[str, float] = {}
    with log.open("a") as handle, tempfile.TemporaryFile("w+") as stdout:
        handle.write(f"\n### deploy {label}: {' '.join(argv[1:])}\n")
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                   text=True)
        assert process.stderr is not None
        for line in process.stderr:
            elapsed = time.monotonic() - started
            handle.write(f"[{elapsed:6.1f}] {line}")
            for prefix, phase in MARKERS:
                if line.startswith(prefix) and phase not in marks:
                    marks[phase], wall_marks[phase] = elapsed, time.time()
        code = process.wait()
        seconds = time.monotonic() - started
        stdout.seek(0)
        text = stdout.read()
        handle.write(text)
    outputs = json.loads(text) if text.strip() else {}
    return DeployRun(label, code, seconds, outputs, marks, wall_marks)


def running_digests(project: str) -> dict[str, str]:
    """Container name -> the digest pinned in its image reference, as the engine sees it."""
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout
    found = {}
    for container_id in ids.split():
        name, image = docker("inspect", "--format", "{{.Name}} {{.Config.Image}}",
                             container_id).stdout.split()
        found[name.lstrip("/")] = image.partition("@")[2] or image
    return found


class HealthEvents:
    """``docker events`` of the project's containers, by container ID: when each
    started and when the engine turned it unhealthy (the engine's own clock)."""

    def __init__(self, project: str) -> None:
        self.names: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.unhealthy: dict[str, float] = {}
        self._process = subprocess.Popen(
            ["docker", "events", "--filter", "type=container", "--filter",
             f"label=com.docker.compose.project={project}", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            container_id = str(event.get("id", ""))
            when = int(event.get("timeNano", 0)) / 1e9
            self.names[container_id] = event.get("Actor", {}).get("Attributes", {}).get(
                "name", container_id[:12])
            if event.get("Action") == "start":
                self.started.setdefault(container_id, when)
            elif event.get("Action") == "health_status: unhealthy":
                self.unhealthy.setdefault(container_id, when)

    def stop(self) -> None:
        time.sleep(0.5)  # the last events are still on their way
        self._process.terminate()
        self._process.wait()
        self._reader.join(timeout=2)


def clean_up(project: Project, image_name: str) -> None:
    """Never ``down -v``: remove the project's volumes and networks by label instead."""
    docker("compose", "-p", project.name, "down", "--remove-orphans", "--timeout", "1")
    label = f"label=com.docker.compose.project={project.name}"
    if volumes := docker("volume", "ls", "-q", "--filter", label).stdout.split():
        docker("volume", "rm", *volumes)
    if networks := docker("network", "ls", "-q", "--filter", label).stdout.split():
        docker("network", "rm", *networks)
    docker("network", "rm", f"deploykit-lock-{project.name}")
    remove_local_images(image_name)


# -- report --------------------------------------------------------------------------
def print_table(runs: list[DeployRun]) -> None:
    print(f"{'run':<34} {'exit':>4} {'status':<12} {'seconds':>8} {'duration_s':>10}  phases")
    for run in runs:
        print(f"{run.label:<34} {run.code:>4} {run.outputs.get('status', '?'):<12} "
              f"{run.seconds:>8.1f} {run.outputs.get('duration_seconds', '?'):>10}  "
              f"{run.phases()}")


def print_reproducibility(built: str, runs: list[DeployRun]) -> None:
    outputs = [run.outputs.get("digest", "") for run in runs]
    running = [digest for run in runs for digest in run.containers.values()]
    same = bool(running) and len({built, *outputs, *running}) == 1
    print(f"reproducible: {'yes' if same else 'no'} (build {built}; deploy outputs "
          f"{', '.join(outputs)}; running {', '.join(sorted(set(running)))})")


def print_health_detection(run: DeployRun, events: HealthEvents) -> None:
    seen = run.wall_marks.get("failure logs")
    for container_id, unhealthy in sorted(events.unhealthy.items()):
        started = events.started.get(container_id)
        after_start = f"{unhealthy - started:.1f} s after its start" if started else "?"
        noticed = (f"deploykit's verdict {seen - unhealthy:+.1f} s after that"
                   f" ({seen - started:.1f} s after the start)" if seen and started
                   else "deploykit never failed it")
        print(f"{events.names[container_id]}: the engine declared it unhealthy "
              f"{after_start}; {noticed}")
    if not events.unhealthy:
        print("the engine sent no `health_status: unhealthy` event")


@dataclass
class Results:
    built: str  # the digest deploykit build reported for v1.0.0
    was_on_host: bool  # v1.0.0 still local before the first deploy (it should not be)
    runs: list[DeployRun]
    events: HealthEvents


def measure(args: argparse.Namespace, project: Project, repo: str, src: Path,
            log: Path) -> Results:
    image_name = f"{args.registry}/{repo}"
    built = build(args, src, repo, GOOD, log)
    build(args, src, repo, BROKEN, log, "BROKEN=true")
    remove_local_images(image_name)
    was_on_host = docker("image", "inspect", f"{image_name}:{GOOD}").returncode == 0
    first = deploy(args, project, repo, GOOD, log, f"deploy {GOOD} (first)")
    first.containers = running_digests(project.name)
    again = deploy(args, project, repo, GOOD, log, f"redeploy {GOOD} --force-redeploy",
                   "--force-redeploy")
    again.containers = running_digests(project.name)
    events = HealthEvents(project.name)
    try:
        broken = deploy(args, project, repo, BROKEN, log,
                        f"deploy {BROKEN} (broken) -> rollback")
    finally:
        events.stop()
    broken.containers = running_digests(project.name)
    return Results(built, was_on_host, [first, again, broken], events)


def report(results: Results) -> None:
    print(f"before the first deploy the image was {'STILL' if results.was_on_host else 'not'}"
          " on the host")
    print_table(results.runs)
    print_reproducibility(results.built, results.runs[:2])
    print_health_detection(results.runs[2], results.events)
    back = set(results.runs[2].containers.values())
    print(f"after the rollback the containers run: {', '.join(sorted(back)) or 'nothing'}"
          f" ({GOOD if back == {results.built} else 'not ' + GOOD})")


def main_bench(argv: list[str]) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex
    repo = f"bench-deploy/{run_id}"
    log = Path(tempfile.gettempdir()) / f"deploykit-bench-deploy-{run_id[:8]}.log"
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-deploy-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(DEMO, workdir / "src")
        shutil.copytree(DEMO, workdir / "project")
        project = Project(f"benchdeploy-{run_id[:10]}", workdir / "project", free_port(),
                          workdir / "state")
        try:
            results = measure(args, project, repo, workdir / "src", log)
        finally:
            clean_up(project, f"{args.registry}/{repo}")
    print(f"image {args.registry}/{repo}, platforms {args.platforms}, project {project.name}"
          f", log {log}")
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench(sys.argv[1:]))
