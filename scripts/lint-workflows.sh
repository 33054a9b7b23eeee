#!/usr/bin/env bash
# Lint the GitHub workflows, the examples and action.yml; part of scripts/test.sh.
#   * zizmor (security): no finding of severity high (config: .github/zizmor.yml)
#   * check-jsonschema with its vendored GitHub workflow / action and compose schemas
# Both run offline (zizmor --offline; check-jsonschema's built-in schemas ship with it).
# Tools come from requirements-lint.lock, installed into .venv by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=.venv/bin
for tool in zizmor check-jsonschema; do
  [ -x "$bin/$tool" ] || { echo "$tool missing: .venv/bin/pip install -r requirements-lint.lock" >&2; exit 1; }
done

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml examples/workflows/*.yml examples/workflows/*.yaml)
composes=(examples/compose.yaml examples/demo/compose.yaml)
[ "${#workflows[@]}" -gt 0 ] || { echo "no workflow files found" >&2; exit 1; }

echo "zizmor (min severity high): action.yml ${workflows[*]}"
"$bin/zizmor" --offline --no-progress --config .github/zizmor.yml --min-severity high \
  action.yml "${workflows[@]}"

echo "check-jsonschema: workflows"
"$bin/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}"
echo "check-jsonschema: action.yml"
"$bin/check-jsonschema" --builtin-schema vendor.github-actions action.yml
echo "check-jsonschema: compose files"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec "${composes[@]}"
