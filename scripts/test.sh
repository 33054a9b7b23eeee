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
# A .venv whose pip does not run (e.g. one made before python3-venv was installed: a python
# but no pip) is recreated; a working one is kept.
if ! .venv/bin/pip --version >/dev/null 2>&1; then
  if [ -e .venv ]; then echo ".venv has no working pip: recreating it"; fi
  rm -rf .venv
  python3 -m venv .venv || {
    rm -rf .venv
    echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv) and re-run" >&2
    exit 1
  }
fi
locks=(-r requirements-dev.lock)
[ -f requirements-lint.lock ] && locks+=(-r requirements-lint.lock)
.venv/bin/pip install --quiet --disable-pip-version-check "${locks[@]}"
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

step "ruff"
.venv/bin/ruff check .
step "mypy --strict"
.venv/bin/mypy --strict deploykit
step "action.yml and README tables match deploykit/inputs.py"
.venv/bin/python scripts/gen_action.py --check
if [ -f scripts/lint-workflows.sh ]; then
  step "workflow lint (zizmor, check-jsonschema)"
  bash scripts/lint-workflows.sh
fi

step "pytest (unit + integration)"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m pytest tests "$@"
