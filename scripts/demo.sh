#!/usr/bin/env bash
# The main job end to end on the embedded default, with no account and no network beyond
# the Debian and PyPI mirrors: a local registry (127.0.0.1:5000) stands in for GHCR and
# examples/demo is the app.
#
#   1. build v1.0.0 for linux/amd64 + linux/arm64 and push it (write-once tags, verified)
#   2. deploy v1.0.0 to staging: pull + up --no-build, health checks, smoke test
#   3. build v1.0.1, deliberately broken (its healthcheck fails), and deploy it:
#      deploykit sees it unhealthy and rolls back to v1.0.0
#   4. print the digests, the URL and the deploy history
#
# Environment: DEMO_PORT (default 28080), DEMO_REGISTRY (default 127.0.0.1:5000),
# DEMO_REPO (demo/app), DEMO_PROJECT (deploykit-demo), DEMO_WORKDIR (/tmp/deploykit-demo),
# DEPLOYKIT_NO_PROVISION=1 to skip installing/starting the test bed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

port=${DEMO_PORT:-28080}
registry=${DEMO_REGISTRY:-127.0.0.1:5000}
repo=${DEMO_REPO:-demo/app}
project=${DEMO_PROJECT:-deploykit-demo}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${DEPLOYKIT_NO_PROVISION:-0}" != 1 ]; then
  say "Test bed: Docker engine, buildx, compose v2, QEMU, registry on $registry"
  bash scripts/provision-debian.sh
fi

say "deploykit itself (.venv, pinned dependencies)"
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
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
deploykit=("$root/.venv/bin/deploykit")

# A workspace like a child repository's checkout, and a state dir for the history.
work=${DEMO_WORKDIR:-/tmp/deploykit-demo}
mkdir -p "$work/state"
rm -rf "$work/repo"
cp -r examples/demo "$work/repo"

# Fixed revisions: re-running the demo re-uses the published images (status: skipped)
# instead of trying to move a write-once tag.
sha_v1=$(printf 'deploykit demo v1.0.0' | sha1sum | cut -c1-40)
sha_v2=$(printf 'deploykit demo v1.0.1 broken' | sha1sum | cut -c1-40)

common=(GITHUB_WORKSPACE="$work/repo" GITHUB_REPOSITORY=deploykit-org/demo GITHUB_ACTOR=demo
        DEPLOYKIT_STATE_DIR="$work/state" DEMO_PORT="$port")

build() {  # build VERSION SHA [BUILD_ARG...]
  local version=$1 sha=$2; shift 2
  local args=()
  for arg in "APP_VERSION=$version" "$@"; do args+=(--build-args "$arg"); done
  env "${common[@]}" GITHUB_EVENT_NAME=push GITHUB_REF="refs/tags/$version" GITHUB_SHA="$sha" \
    "${deploykit[@]}" build --registry "$registry" --image-repo "$repo" \
    --platforms linux/amd64,linux/arm64 "${args[@]}"
}

deploy() {  # deploy TAG
  # compose gets DEMO_PORT (its port mapping) through compose_env: docker children of
  # deploykit inherit only a minimal environment
  env "${common[@]}" INPUT_COMPOSE_ENV="DEMO_PORT=$port" "${deploykit[@]}" deploy --registry "$registry" --image-repo "$repo" \
    --environment staging --image-tag "$1" --project-name "$project" \
    --smoke-url "http://127.0.0.1:$port/" --smoke-contains "deploykit demo" \
    --health-timeout 60 --smoke-timeout 30
}

say "1. Build & Push v1.0.0 (two platforms)"
build v1.0.0 "$sha_v1" | tee "$work/build-v1.out"

say "2. Deploy v1.0.0 to staging"
deploy v1.0.0 | tee "$work/deploy-v1.out"
printf 'The app answers at http://127.0.0.1:%s/ : ' "$port"
curl -fsS "http://127.0.0.1:$port/version.txt"

say "3. Build v1.0.1 (deliberately broken: its healthcheck fails) and deploy it"
build v1.0.1 "$sha_v2" BROKEN=true | tee "$work/build-v2.out"
if deploy v1.0.1 | tee "$work/deploy-v2.out"; then
  echo "The broken release was deployed: the demo expected a rollback." >&2
  exit 1
fi

say "4. What runs now"
printf 'http://127.0.0.1:%s/ serves version ' "$port"
curl -fsS "http://127.0.0.1:$port/version.txt"
grep -h '^digest=\|^status=\|^previous_image=' "$work/build-v1.out" "$work/deploy-v2.out" || true
env "${common[@]}" "${deploykit[@]}" history --environment staging --project-name "$project"
echo
echo "Stop the demo app with: docker compose -p $project down   (volumes are kept)"
