#!/usr/bin/env bash
# Multi-node Swarm check (issue 15; run by tests/integration/test_swarm.py, ~20 s):
#
#   bash scripts/swarm-multinode.sh
#
# 1. Two throwaway engines (scripts/swarm-engine.sh: privileged containers running the test
#    bed's own dockerd): the manager (`docker swarm init` on its container address) and a
#    worker joined with the manager's token. The shared engine's Swarm state is never
#    touched (see swarm-engine.sh for why).
# 2. deploykit deploys a two-replica service (max_replicas_per_node: 1) with orchestrator
#    swarm through DOCKER_HOST=<manager>; the check: exit 0, status deployed, the two tasks
#    on two nodes, running one digest.
# Both engines, their volumes and forwarders are removed at the end, whatever happens.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ID="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
MANAGER="dk-swarm-manager-$ID"
WORKER="dk-swarm-worker-$ID"
STACK="dkmn-$ID"
REPO="multinode/$ID"
REGISTRY=127.0.0.1:5000
BASE="$REGISTRY/testbed/busybox:latest"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploykit-multinode.XXXXXX")"

log() { printf '[multinode %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  bash "$ROOT/scripts/swarm-engine.sh" down "$WORKER"
  bash "$ROOT/scripts/swarm-engine.sh" down "$MANAGER"
  docker image rm "$REGISTRY/$REPO:v1" >/dev/null 2>&1
  rm -rf "$WORK"
  log "cleaned up (exit $rc)"
}
trap cleanup EXIT

log "engines: $MANAGER (manager), $WORKER (worker)"
M="$(bash "$ROOT/scripts/swarm-engine.sh" up "$MANAGER")"; M="${M#DOCKER_HOST=}"
W="$(bash "$ROOT/scripts/swarm-engine.sh" up "$WORKER")"; W="${W#DOCKER_HOST=}"
MANAGER_IP="$(docker inspect --format '{{.NetworkSettings.IPAddress}}' "$MANAGER")"
docker -H "$M" swarm init --advertise-addr "$MANAGER_IP" >/dev/null
docker -H "$W" swarm join --token "$(docker -H "$M" swarm join-token -q worker)" \
  "$MANAGER_IP:2377" >/dev/null
[[ "$(docker -H "$M" node ls -q | wc -l)" == 2 ]] || fail "the worker did not join"
log "nodes: $(docker -H "$M" node ls --format '{{.Hostname}}:{{.Status}}' | tr '\n' ' ')"

log "image: $REGISTRY/$REPO:v1"
mkdir -p "$WORK/app" "$WORK/project"
echo "release v1" > "$WORK/app/index.html"
cat > "$WORK/app/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY index.html /www/index.html
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE
docker buildx build --platform linux/amd64 --push --provenance=false \
  -t "$REGISTRY/$REPO:v1" "$WORK/app" >/dev/null 2>&1 || fail "image build"
cat > "$WORK/project/compose.yaml" <<'COMPOSE'
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    stop_grace_period: 1s
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement: {max_replicas_per_node: 1}
      update_config: {order: start-first, failure_action: rollback}
COMPOSE

log "DOCKER_HOST=$M deploykit deploy --orchestrator swarm"
rc=0
env -u GITHUB_ACTIONS DOCKER_HOST="$M" PYTHONPATH="$ROOT" GITHUB_WORKSPACE="$WORK/project" \
  INPUT_REGISTRY="$REGISTRY" INPUT_IMAGE_REPO="$REPO" INPUT_PROJECT_NAME="$STACK" \
  INPUT_ENVIRONMENT=staging INPUT_ORCHESTRATOR=swarm INPUT_STATE_DIR="$WORK/state" \
  INPUT_HEALTH_TIMEOUT=120 \
  "$PYTHON" -m deploykit deploy --image-tag v1 >"$WORK/deploy.log" 2>&1 || rc=$?
cat "$WORK/deploy.log" >&2
[[ $rc == 0 ]] || fail "deploykit exited $rc"
grep -q '^status=deployed$' "$WORK/deploy.log" || fail "status is not deployed"

mapfile -t TASKS < <(docker -H "$M" service ps -q --filter desired-state=running "${STACK}_app")
[[ ${#TASKS[@]} == 2 ]] || fail "expected 2 running tasks, got ${#TASKS[@]}"
NODES="$(docker -H "$M" inspect --format '{{.NodeID}}' "${TASKS[@]}" | sort -u | wc -l)"
DIGESTS="$(docker -H "$M" inspect --format '{{.Spec.ContainerSpec.Image}}' "${TASKS[@]}" \
  | sed 's/.*@//' | sort -u)"
STATES="$(docker -H "$M" inspect --format '{{.Status.State}}' "${TASKS[@]}" | sort -u)"
log "tasks on $NODES node(s), state(s) $STATES, digest(s): $DIGESTS"
[[ $NODES == 2 ]] || fail "the replicas are not on two nodes"
[[ $(wc -l <<<"$DIGESTS") == 1 && $STATES == running ]] || fail "not one digest running"
log "OK: both nodes run $DIGESTS"
