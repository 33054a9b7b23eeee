#!/usr/bin/env bash
# Every benchmark row of issue 13 (P1-P7) and issue 22 in one command, on the provisioned
# test bed: bench_compare.py (deploy vs bare compose: P1, P1', P2, P3), bench_build.py (build
# vs bare buildx, registry requests, tag plan, action image: P4-P7), then
# bench_zero_downtime.py (start-first vs recreate vs bare compose under load). Each prints its
# table and writes bench/results.md (bench_compare.py rewrites the file; the other two merge
# their sections after it). RUNS is the number of runs of each side (default 5; 3 for the
# zero-downtime rows).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-5}"
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/test.sh or scripts/demo.sh once first" >&2; exit 1; }
.venv/bin/python bench/bench_compare.py --runs "$runs"
.venv/bin/python bench/bench_build.py --runs "$runs"
.venv/bin/python bench/bench_zero_downtime.py --runs "${RUNS:-3}"
