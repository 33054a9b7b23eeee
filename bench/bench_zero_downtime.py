"""Benchmark (issue 22): start-first against today's recreate, on the same fixture.

examples/zero-downtime (``web``: 2 replicas behind Debian's HAProxy 2.6) on the real engine,
a client sending 40 requests/s through the proxy (1 s before each switch, 2 s after it).
Each run switches the good releases v1 <-> v2 once each way, alternating which method goes
first, and then tries the broken v3 (fails its healthcheck) once per method:

- start-first: ``deploykit.startfirst`` (start beside, HealthWatch verdict, retire the old;
  for v3 discard the new);
- recreate: a plain ``docker compose up -d`` of the new release and the same verdict; for v3,
  the ``up -d`` of the previous release that restores it (what a compose deploy does today).

Switch time runs from the first engine step to the end of the last one (verdict included).
The images are built once and pushed to ``zdt/<id>`` in the open registry (they stay there);
the project is taken down afterwards.

    .venv/bin/python bench/bench_zero_downtime.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploykit.health import HealthWatch  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    BASE_IMAGE,
    OPEN_REGISTRY,
    remove_local_images,
)
from tests.integration.loadclient import LoadClient, LoadResult  # noqa: E402
from tests.integration.zdt_fixtures import (  # noqa: E402
    ZdtStack,
    build_proxy_image,
    build_web_releases,
    running_stack,
    start_first_switch,
)

RATE, SETTLE, VERDICT_TIMEOUT = 40, 2.0, 20.0


@dataclass
class Switch:
    method: str
    change: str
    ok: bool  # the new release serves (good), or the old one still does (broken)
    failed: int
    sent: int
    seconds: float
    broken_answers: int


def verdict(stack: ZdtStack) -> bool:
    watch = HealthWatch(stack.api, stack.project.name, timeout=VERDICT_TIMEOUT,
                        settle=stack.policy.settle(SETTLE))
    return watch.wait().ok


def start_first(stack: ZdtStack, old: str, new: str) -> bool:
    switched, _ = start_first_switch(stack, new, settle=SETTLE,
                                     verdict_timeout=VERDICT_TIMEOUT)
    return switched


def recreate(stack: ZdtStack, old: str, new: str) -> bool:
    stack.up(new)
    if verdict(stack):
        return True
    stack.up(old)  # today's restore of the previous release
    verdict(stack)
    return False


METHODS: dict[str, Callable[[ZdtStack, str, str], bool]] = {
    "start-first": start_first, "recreate": recreate}


def measure(stack: ZdtStack, method: str, old: str, new: str) -> Switch:
    with LoadClient(stack.url, rate=RATE, max_requests=RATE * 120, max_seconds=120) as load:
        time.sleep(1)
        began = time.monotonic()
        switched = METHODS[method](stack, old, new)
        seconds = time.monotonic() - began
        time.sleep(2)
    result: LoadResult = load.result
    expected = new if new != "v3" else old
    serving = sorted(set(stack.web_releases().values())) == [expected]
    return Switch(method, f"{old}->{new}", serving and switched == (new != "v3"),
                  len(result.failures), result.sent, seconds, result.releases["v3"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows: list[Switch] = []
    with tempfile.TemporaryDirectory(prefix="bench-zdt-") as work:
        workdir = Path(work)
        proxy = build_proxy_image(workdir)
        repo = f"zdt/bench-{uuid.uuid4().hex[:8]}"
        digests = build_web_releases(OPEN_REGISTRY, repo, BASE_IMAGE, workdir)
        (workdir / "project").mkdir()
        try:
            with running_stack(proxy, repo, digests, workdir / "project") as stack:
                current = "v1"
                for run in range(args.runs):
                    order = ["start-first", "recreate"] if run % 2 == 0 else \
                        ["recreate", "start-first"]
                    for method in order:
                        new = "v2" if current == "v1" else "v1"
                        rows.append(measure(stack, method, current, new))
                        current = new
                        print(_line(rows[-1]), flush=True)
                    for method in order:
                        rows.append(measure(stack, method, current, "v3"))
                        print(_line(rows[-1]), flush=True)
        finally:
            remove_local_images(f"{OPEN_REGISTRY}/{repo}")
    print()
    print(table(rows))
    return 0 if all(row.ok for row in rows) else 1


def _line(row: Switch) -> str:
    return (f"{row.method:12} {row.change:7} ok={row.ok} failed={row.failed}/{row.sent} "
            f"switch={row.seconds:.1f}s v3-answers={row.broken_answers}")


def table(rows: list[Switch]) -> str:
    lines = ["| release | method | runs | failed requests (each run) | switch s (median) |"
             " answered by v3 |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, broken in (("good (v1<->v2)", False), ("fails healthcheck (v3)", True)):
        for method in METHODS:
            mine = [r for r in rows if r.method == method and (r.change.endswith("v3")
                                                               == broken)]
            if not mine:
                continue
            answers = ", ".join(str(r.broken_answers) for r in mine) if broken else "-"
            lines.append(f"| {kind} | {method} | {len(mine)} | "
                         f"{', '.join(str(r.failed) for r in mine)} | "
                         f"{statistics.median(r.seconds for r in mine):.1f} | {answers} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
