"""Benchmark: a first build with ``cache: none`` vs rebuilds with ``cache: registry``.

Runs ``deploykit build`` (the real thing: buildx, push, verification) three times
on a ``pre-release`` push of a small app whose Dockerfile has some real work in
it (a CPU loop, which runs under QEMU on arm64, and a few MB of data):

1. first build, ``cache: none``: nothing of this app is in any cache;
2. rebuild with no source change (another commit SHA), ``cache: registry``:
   the local build cache is still warm, and the registry cache is exported;
3. with ``--fresh-runner`` only: the builder's local cache is pruned first
   (``docker buildx prune -af``, which empties the *whole* local build cache of
   the engine, others' included), so the rebuild can only use the registry
   cache, as on a fresh GitHub-hosted runner.

Every run uses a fresh nonce, so earlier benchmark runs never help. Build logs
go to a file; the table shows wall time and the cached-steps count that
deploykit reports in its job summary.

    .venv/bin/python bench/bench_build_cache.py [--fresh-runner]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploykit.cli import main

DOCKERFILE = """\
FROM {base}
RUN echo {nonce} > /nonce && i=0; while [ $i -lt {loops} ]; do i=$((i+1)); done
RUN dd if=/dev/urandom of=/data.bin bs=1M count={megabytes} 2>/dev/null && gzip -1 -k /data.bin
COPY app/ /app/
RUN sha256sum /data.bin /app/* > /app/manifest.txt
CMD ["httpd", "-f", "-p", "8080", "-h", "/app"]
"""
_CACHE_RE = re.compile(r"- Cache: (\d+ of \d+ steps cached)")


@dataclass(frozen=True)
class Run:
    label: str
    cache: str
    seconds: float
    cached: str
    status: str


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--base", default="127.0.0.1:5000/testbed/busybox:latest")
    parser.add_argument("--platforms", default="linux/amd64,linux/arm64")
    parser.add_argument("--loops", type=int, default=600_000,
                        help="iterations of the shell loop (slow under QEMU)")
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--fresh-runner", action="store_true",
                        help="prune the engine's whole local build cache before run 3")
    return parser.parse_args(argv)


def make_context(directory: Path, args: argparse.Namespace, nonce: str) -> None:
    (directory / "app").mkdir(parents=True)
    (directory / "app" / "index.html").write_text("benchmark\n")
    (directory / "Dockerfile").write_text(DOCKERFILE.format(
        base=args.base, nonce=nonce, loops=args.loops, megabytes=args.megabytes))


def build(workdir: Path, args: argparse.Namespace, repo: str, cache: str, log: Path,
          label: str) -> Run:
    output, summary = workdir / f"{label}.out", workdir / f"{label}.summary"
    env = {
        "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_EVENT_NAME": "push",
        "GITHUB_REF": "refs/heads/pre-release", "GITHUB_SHA": uuid.uuid4().hex[:40],
        "GITHUB_REPOSITORY": "bench/app", "GITHUB_WORKSPACE": str(workdir / "src"),
        "INPUT_REGISTRY": args.registry, "INPUT_IMAGE_REPO": repo,
        "INPUT_PLATFORMS": args.platforms, "INPUT_CACHE": cache,
    }
    started = time.monotonic()
    with log.open("a") as handle, contextlib.redirect_stdout(handle), \
            contextlib.redirect_stderr(handle):
        code = main(["build"], env=env)
    seconds = time.monotonic() - started
    if code != 0:
        sys.exit(f"{label}: deploykit build failed (exit {code}); see {log}")
    text = summary.read_text()
    match = _CACHE_RE.search(text)
    status = re.search(r"^### Build & Push `[^`]+`: (\w+)", text, re.M)
    return Run(label, cache, seconds, match.group(1) if match else "?",
               status.group(1) if status else "?")


def prune_local_cache() -> None:
    subprocess.run(["docker", "buildx", "prune", "--all", "--force"], check=True,
                   capture_output=True, text=True)


def remove_local_images(image: str) -> None:
    """The docker driver keeps pushed images in the engine's store; drop the bench's."""
    listed = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                             "--filter", f"reference={image}:*"],
                            capture_output=True, text=True, check=True)
    if names := listed.stdout.split():
        subprocess.run(["docker", "image", "rm", "--force", *names], capture_output=True,
                       check=True)


def main_bench(argv: list[str]) -> int:
    args = parse_args(argv)
    nonce = uuid.uuid4().hex
    repo = f"bench/build-cache-{nonce[:8]}"
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        workdir = Path(tmp)
        make_context(workdir / "src", args, nonce)
        log = Path(tempfile.gettempdir()) / f"deploykit-bench-{nonce[:8]}.log"
        runs = [build(workdir, args, repo, "none", log, "1 first build"),
                build(workdir, args, repo, "registry", log, "2 rebuild, warm local cache")]
        if args.fresh_runner:
            prune_local_cache()
            runs.append(build(workdir, args, repo, "registry", log,
                              "3 rebuild, local cache pruned"))
        remove_local_images(f"{args.registry}/{repo}")
    print(f"image {args.registry}/{repo}, platforms {args.platforms}, log {log}")
    print(f"{'run':<32} {'cache':<9} {'status':<7} {'seconds':>8}  cached steps")
    for run in runs:
        print(f"{run.label:<32} {run.cache:<9} {run.status:<7} {run.seconds:>8.1f}  "
              f"{run.cached}")
    if not args.fresh_runner:
        print("(run 2 also hits the local build cache; --fresh-runner measures the "
              "registry cache alone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench(sys.argv[1:]))
