#!/usr/bin/env bash
# Stop what scripts/provision-debian.sh started -- and nothing else: the processes named
# by its pidfiles (registry-token, token-service, registry-auth, registry-open, dockerd),
# each only if the pid still belongs to that program. Installed packages, images and registry storage are kept,
# so a later provision-debian.sh run is fast again.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/testbed-down.sh [--registries-only]

  --registries-only   stop the registries and the token service, leave dockerd running

Environment: DEPLOYKIT_TESTBED_RUN_DIR (pidfiles) [/run/deploykit-testbed]
EOF
}

REGISTRIES_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --registries-only) REGISTRIES_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

RUN_DIR="${DEPLOYKIT_TESTBED_RUN_DIR:-/run/deploykit-testbed}"

log() { printf '[testbed-down] %s\n' "$*" >&2; }

# stop NAME PIDFILE PROGRAM TIMEOUT
stop() {
  local name="$1" pidfile="$2" prog="$3" timeout="$4" pid i
  if [[ ! -s "$pidfile" ]]; then
    log "$name: no pidfile ($pidfile), nothing to stop"
    return 0
  fi
  pid="$(tr -dc '0-9' <"$pidfile")"
  if [[ -z "$pid" || ! -r "/proc/$pid/cmdline" ]] \
     || ! grep -q -- "$prog" <<<"$(tr '\0' ' ' <"/proc/$pid/cmdline")"; then
    log "$name: pid ${pid:-?} is not running $prog (stale pidfile), removing it"
    rm -f "$pidfile"
    return 0
  fi
  log "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
  log "$name: stopped"
}

stop registry-token "$RUN_DIR/registry-token.pid" docker-registry 10
stop token-service "$RUN_DIR/token-service.pid" token_service.py 10
stop registry-auth "$RUN_DIR/registry-auth.pid" docker-registry 10
stop registry-open "$RUN_DIR/registry-open.pid" docker-registry 10
if [[ "$REGISTRIES_ONLY" == 0 ]]; then
  # dockerd stops its containers (up to its 15 s shutdown timeout) and its managed containerd
  stop dockerd "$RUN_DIR/dockerd.pid" dockerd 45
fi
