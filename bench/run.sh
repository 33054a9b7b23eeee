#!/usr/bin/env bash
# Every benchmark row of issue 13 (P1-P7) in one command, on the provisioned test bed:
# bench_compare.py (deploy vs bare compose: P1, P1', P2, P3), then bench_build.py (build vs
# bare buildx, registry requests, tag plan, action image: P4-P7). Both print their table with
# each goal and whether it is met, and write bench/results.md (bench_build.py merges its
# section after the deploy rows). RUNS (default 5) is the number of runs of each side.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-5}"
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/test.sh or scripts/demo.sh once first" >&2; exit 1; }
.venv/bin/python bench/bench_compare.py --runs "$runs"
.venv/bin/python bench/bench_build.py --runs "$runs"
