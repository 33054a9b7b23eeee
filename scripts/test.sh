#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: lint, types, unit and integration tests.
# Starts the test bed first when it is not running (scripts/provision-debian.sh is
# idempotent and takes seconds when everything is up); DEPLOYKIT_NO_PROVISION=1 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if [ "${DEPLOYKIT_NO_PROVISION:-0}" != 1 ]; then
  step "test bed"
  bash scripts/provision-debian.sh --with-python-base --with-act
fi

step "python environment (.venv, pinned)"
[ -x .venv/bin/python ] || python3 -m venv .venv
locks=(-r requirements-dev.lock)
[ -f requirements-lint.lock ] && locks+=(-r requirements-lint.lock)
.venv/bin/pip install --quiet --disable-pip-version-check "${locks[@]}"
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

step "ruff"
.venv/bin/ruff check .
step "mypy --strict"
.venv/bin/mypy --strict deploykit
step "action.yml and README tables match deploykit/settings.py"
.venv/bin/python scripts/gen_action.py --check
if [ -f scripts/lint-workflows.sh ]; then
  step "workflow lint (zizmor, check-jsonschema)"
  bash scripts/lint-workflows.sh
fi

step "pytest (unit + integration)"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m pytest tests "$@"
