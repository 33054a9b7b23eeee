#!/usr/bin/env bash
# The README's commands on a bare Debian 12, as a new user runs them (part of .ci/run).
#
# A bare Debian 12 root filesystem (mmdebstrap minbase + ca-certificates, git, python3: no
# docker, no python3-venv, no curl) runs as a privileged container on the local engine,
# with its own volumes for /var/lib/docker and /var/lib/containerd, so the dockerd, the
# registries and the demo app of the machine under test are its own (its 127.0.0.1 is its
# own). A clean clone of the committed HEAD goes in (never the working tree), then:
#   1. a newcomer's first try: `python3 -m venv .venv` fails (no python3-venv) and leaves
#      a half-made .venv (a python, no pip)
#   2. `bash scripts/demo.sh`: exit 0, no line containing ERROR, the app answers on
#      http://127.0.0.1:28080/ inside the machine with v1.0.0 (the broken v1.0.1 rolled back)
#   3. `bash scripts/demo.sh` again: exit 0, both builds `status=skipped`
#   4. with --with-tests: .venv broken again (pip removed), `bash scripts/test.sh`: exit 0,
#      every test passed, none skipped
# The container, its volumes and the image are removed at the end, whatever happens.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/fresh-machine-test.sh [--with-tests] [--ref REF] [--keep] [-h]

  --with-tests   also run `bash scripts/test.sh` inside (the whole suite again: about
                 15 min more; see docs/testbed.md)
  --ref REF      the commit to test (default HEAD); the clone holds that commit only as committed
  --keep         leave the container running at the end (to look inside); removed otherwise

Environment: FRESH_MACHINE_TESTS=1 (same as --with-tests),
DEPLOYKIT_DEBIAN_MIRROR [http://deb.debian.org/debian], FRESH_MACHINE_LOG_DIR (keeps the logs)
EOF
}

WITH_TESTS="${FRESH_MACHINE_TESTS:-0}"
REF=HEAD
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-tests) WITH_TESTS=1 ;;
    --ref) REF="${2:?--ref needs a commit}"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${DEPLOYKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ID="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
NAME="deploykit-fresh-$ID"
IMAGE="deploykit-fresh-debian12:$ID"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploykit-fresh.XXXXXX")"
LOGS="${FRESH_MACHINE_LOG_DIR:-$WORK/logs}"
mkdir -p "$LOGS"
DEMO_TIMEOUT=1500
TEST_TIMEOUT=2400

log()  { printf '[fresh-machine %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { printf '[fresh-machine %(%H:%M:%S)T] FAILED: %s\n' -1 "$*" >&2; exit 1; }

TIMINGS=()
T_START=$EPOCHREALTIME
timed() { # timed NAME COMMAND...: run COMMAND, record its wall time, keep its exit code
  local name="$1" t0=$EPOCHREALTIME rc=0; shift
  "$@" || rc=$?
  TIMINGS+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" -v r="$rc" \
    'BEGIN{printf "%-34s %7.1fs  exit %s", n, b-a, r}')")
  return "$rc"
}
print_timings() {
  echo "fresh machine timings:"
  printf '  %s\n' "${TIMINGS[@]}"
  awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{printf "  %-34s %7.1fs\n", "total", b-a}'
}

cleanup() {
  local rc=$?
  set +e
  if [[ ${#TIMINGS[@]} -gt 0 ]]; then print_timings >&2; fi
  if [[ "$KEEP" == 1 && -n "$(docker ps -q -f "name=^$NAME\$" 2>/dev/null)" ]]; then
    log "kept: docker exec -it $NAME bash  (remove: docker rm -f $NAME; docker volume rm $NAME-docker $NAME-containerd; docker rmi $IMAGE)"
  else
    docker rm -f "$NAME" >/dev/null 2>&1
    docker volume rm "$NAME-docker" "$NAME-containerd" >/dev/null 2>&1
    docker rmi "$IMAGE" >/dev/null 2>&1
  fi
  # the logs stay when they were asked for, or when the test failed
  if [[ -n "${FRESH_MACHINE_LOG_DIR:-}" || "$rc" != 0 ]]; then log "logs: $LOGS"; fi
  if [[ -n "${FRESH_MACHINE_LOG_DIR:-}" || "$rc" == 0 ]]; then
    rm -rf "$WORK"
  else
    rm -rf "$WORK/rootfs.tar" "$WORK/deploykit"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # a cancelled CI job still removes the machine

in_machine() { docker exec -w /root/deploykit "$NAME" "$@"; }

# ---------------------------------------------------------------- the bare machine
command -v mmdebstrap >/dev/null || fail "mmdebstrap missing: apt-get install mmdebstrap (provision-debian.sh --with-python-base installs it)"
docker info >/dev/null 2>&1 || fail "no Docker engine: run bash scripts/provision-debian.sh first"
COMMIT="$(git -C "$ROOT" rev-parse --verify "$REF^{commit}")" || fail "no commit $REF in $ROOT"
log "testing commit $COMMIT ($(git -C "$ROOT" log -1 --format=%s "$COMMIT"))"

make_rootfs() {
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,git,python3 \
    bookworm "$WORK/rootfs.tar" "$MIRROR" >"$LOGS/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$LOGS/mmdebstrap.log" >&2; return 1; }
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$WORK/rootfs.tar" "$IMAGE" >/dev/null
}
log "mmdebstrap bookworm minbase + ca-certificates, git, python3; docker import $IMAGE"
timed "bare Debian 12 rootfs (mmdebstrap)" make_rootfs || fail "could not build the bare Debian 12 root filesystem"

start_machine() {
  docker run -d --name "$NAME" --hostname fresh-debian12 --privileged \
    --label deploykit.fresh-machine-test="$ID" \
    -v "$NAME-docker:/var/lib/docker" -v "$NAME-containerd:/var/lib/containerd" \
    "$IMAGE" sleep infinity >/dev/null
}
timed "start the machine" start_machine || fail "docker run $IMAGE failed"

# Only what THIS machine's network needs and a real Debian box would not: the TLS proxy's
# CA (PyPI is reached through a TLS-inspecting proxy here), the apt settings for this
# network (e.g. Check-Valid-Until of the mirror snapshot) and /etc/pip.conf (pip reads
# the system CA store). Nothing else of the development machine goes in.
copy_network_settings() {
  local f
  shopt -s nullglob
  for f in /usr/local/share/ca-certificates/*.crt; do
    docker cp "$f" "$NAME:/usr/local/share/ca-certificates/"
  done
  for f in /etc/apt/apt.conf.d/*; do
    if grep -qE 'Acquire::(https?::Proxy|https?::Verify|https?::CaInfo|Check-Valid-Until|Check-Date)' "$f"; then
      docker cp "$f" "$NAME:/etc/apt/apt.conf.d/"
    fi
  done
  if [[ -f /etc/pip.conf ]]; then docker cp /etc/pip.conf "$NAME:/etc/pip.conf"; fi
  shopt -u nullglob
  docker exec "$NAME" update-ca-certificates >/dev/null 2>&1
}
copy_network_settings || fail "could not copy this network's CA / apt / pip settings in"

# Bare as promised: nothing of what the scripts install is there yet.
bare="$(docker exec "$NAME" bash -c 'for c in docker dockerd curl jq; do command -v $c; done; python3 -c "import ensurepip" 2>/dev/null && echo ensurepip; true')"
[[ -z "$bare" ]] || fail "the machine is not bare, it already has: $bare"

clone_in() {
  git clone --quiet --no-hardlinks "$ROOT" "$WORK/deploykit"
  git -C "$WORK/deploykit" -c advice.detachedHead=false checkout --quiet "$COMMIT"
  docker cp "$WORK/deploykit" "$NAME:/root/deploykit"
}
timed "clone of $COMMIT in" clone_in || fail "could not clone $COMMIT into the machine"

# ---------------------------------------------------------------- 1. a newcomer's half-made .venv
if in_machine python3 -m venv .venv >"$LOGS/venv-first-try.log" 2>&1; then
  fail "python3 -m venv worked on the bare machine: python3-venv was expected to be missing"
fi
in_machine test -x .venv/bin/python || fail "python3 -m venv left no half-made .venv (expected: a python, no pip)"
grep -q 'ensurepip is not' "$LOGS/venv-first-try.log" \
  || fail "python3 -m venv failed for another reason than the missing ensurepip: $(cat "$LOGS/venv-first-try.log")"
log "half-made .venv in place (python3 -m venv: ensurepip is not available; a python, no pip)"

# ---------------------------------------------------------------- 2. the demo, first run
run_logged() { # run_logged LOGFILE TIMEOUT COMMAND...: run in the machine, output to the log and stderr
  local logf="$1" secs="$2"; shift 2
  set -o pipefail
  timeout "$secs" docker exec -w /root/deploykit "$NAME" "$@" 2>&1 | tee "$logf" >&2
}
log "bash scripts/demo.sh (first run: provisions the machine)"
timed "demo.sh, first run" run_logged "$LOGS/demo-1.log" "$DEMO_TIMEOUT" bash scripts/demo.sh \
  || fail "the first bash scripts/demo.sh failed (log: $LOGS/demo-1.log)"
grep -q '.venv has no working pip: recreating it' "$LOGS/demo-1.log" \
  || fail "demo.sh did not say it recreated the half-made .venv"
errors="$(grep -n 'ERROR' "$LOGS/demo-1.log" || true)"
[[ -z "$errors" ]] || fail "the first demo run printed ERROR lines (a successful run must not):
$errors"

app_answers() { # the demo app, from inside the machine (its own 127.0.0.1)
  in_machine python3 -c 'import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:28080/version.txt", timeout=10).read().decode().strip())'
}
version="$(app_answers)" || fail "the demo app does not answer on http://127.0.0.1:28080/ inside the machine"
[[ "$version" == v1.0.0 ]] || fail "the demo app serves '$version', expected v1.0.0 (the broken v1.0.1 rolled back)"
log "the demo app answers on http://127.0.0.1:28080/: $version"

# ---------------------------------------------------------------- 3. the demo, second run
log "bash scripts/demo.sh (second run)"
timed "demo.sh, second run" run_logged "$LOGS/demo-2.log" "$DEMO_TIMEOUT" bash scripts/demo.sh \
  || fail "the second bash scripts/demo.sh failed (log: $LOGS/demo-2.log)"
for out in build-v1.out build-v2.out; do
  status="$(in_machine grep -h '^status=' "/tmp/deploykit-demo/$out" || true)"
  [[ "$status" == status=skipped ]] || fail "second demo run: $out says '${status:-no status}', expected status=skipped"
done
version="$(app_answers)" || fail "the demo app does not answer after the second run"
[[ "$version" == v1.0.0 ]] || fail "after the second run the demo app serves '$version', expected v1.0.0"
log "second run: both builds skipped, the app answers $version"

# What the first run left on the machine (docs/demo.md: "What the first run does")
# (each directory on its own: du counts a directory once across its arguments)
# shellcheck disable=SC2016  # $d is the machine's shell variable
in_machine bash -c 'for d in / /var/lib/docker /var/lib/containerd /usr/local /var/lib/deploykit-testbed \
  /var/cache/apt /var/lib/apt/lists /root/deploykit/.venv; do du -sxm "$d" 2>/dev/null; done' \
  >"$LOGS/disk.txt" || true
log "disk after the demo (MB): $(awk '{printf "%s=%s  ", $2, $1}' "$LOGS/disk.txt")"

# ---------------------------------------------------------------- 4. the whole suite
if [[ "$WITH_TESTS" == 1 ]]; then
  # python without a working pip again: test.sh must recreate .venv
  in_machine bash -c 'rm -f .venv/bin/pip .venv/bin/pip3*; rm -rf .venv/lib/python3*/site-packages/pip'
  log "bash scripts/test.sh (CI=true: a missing piece fails, never skips)"
  timed "test.sh" run_logged "$LOGS/test.log" "$TEST_TIMEOUT" env CI=true bash scripts/test.sh \
    || fail "bash scripts/test.sh failed in the fresh machine (log: $LOGS/test.log)"
  grep -q 'recreating it' "$LOGS/test.log" || fail "test.sh did not say it recreated the broken .venv"
  summary="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$LOGS/test.log" | tail -n1)"
  [[ "$summary" == *passed* && "$summary" != *skipped* && "$summary" != *failed* && "$summary" != *error* ]] \
    || fail "pytest summary in the fresh machine: '${summary:-none}' (every test must pass, none skipped)"
  log "test.sh: $summary"
else
  log "scripts/test.sh not run inside (opt in: --with-tests or FRESH_MACHINE_TESTS=1)"
fi

log "PASSED: the README's commands work on a bare Debian 12 (commit ${COMMIT:0:7})"
