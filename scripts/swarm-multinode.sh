#!/usr/bin/env bash
# Multi-node Swarm check (issue 15), not part of the suite (docs/swarm.md):
#
#   bash scripts/swarm-multinode.sh
#
# 1. The local engine becomes a Swarm manager advertised on the docker0 address (a worker
#    in a container cannot reach 127.0.0.1 of the host). It must not be in a Swarm yet.
# 2. A second engine joins as a worker: a privileged container that runs the test bed's own
#    dockerd from the host's root filesystem (read-only, chroot), with its own
#    /var/lib/docker (its containerd lives under it), /run and /tmp. Its 127.0.0.1:5000 is forwarded to the host's open
#    registry (which listens on loopback only), so one image name works on both nodes.
# 3. deploykit deploys a two-replica service (max_replicas_per_node: 1) with orchestrator
#    swarm; the check: exit 0, status deployed, the two tasks on two nodes, one digest.
# Everything it made is removed at the end (the worker, its volumes, the stack, the Swarm,
# the forwarder), whatever happens. Needs the test bed (scripts/provision-debian.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ID="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
WORKER="dk-swarm-worker-$ID"
STACK="dkmn-$ID"
REPO="multinode/$ID"
REGISTRY=127.0.0.1:5000
BASE="$REGISTRY/testbed/busybox:latest"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploykit-multinode.XXXXXX")"
GATEWAY="$(docker network inspect bridge --format '{{(index .IPAM.Config 0).Gateway}}')"
FORWARD_PORT=15000
FORWARDER_PID=""

log() { printf '[multinode %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  docker stack rm "$STACK" >/dev/null 2>&1
  docker rm -f "$WORKER" >/dev/null 2>&1
  docker volume rm "$WORKER-docker" >/dev/null 2>&1
  docker swarm leave --force >/dev/null 2>&1
  [[ -n "$FORWARDER_PID" ]] && kill "$FORWARDER_PID" 2>/dev/null
  docker image rm "$REGISTRY/$REPO:v1" >/dev/null 2>&1
  rm -rf "$WORK"
  log "cleaned up (exit $rc)"
}

[[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" == inactive ]] \
  || fail "the engine is already in a Swarm; this script makes and leaves its own"
trap cleanup EXIT

cat > "$WORK/forward.py" <<'EOF'
"""TCP forwarder: LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT."""
import socket, sys, threading

def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

server = socket.create_server((sys.argv[1], int(sys.argv[2])), reuse_port=True)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection((sys.argv[3], int(sys.argv[4])))
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
EOF

# The worker's init (busybox sh): its own /proc, /dev; on cgroup v1 fresh hierarchies (the
# container's own mounts show its cgroup as the root, where runc looks for the full path).
cat > "$WORK/worker-init.sh" <<'EOF'
set -e
mount -t proc proc /host/proc
mount --rbind /sys /host/sys
mount --rbind /dev /host/dev
if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ]; then
  mount -t tmpfs cgroup /host/sys/fs/cgroup
  for controllers in $(cut -d: -f2 /proc/self/cgroup); do
    [ -n "$controllers" ] || continue
    dir="${controllers#name=}"
    mkdir -p "/host/sys/fs/cgroup/$dir"
    case "$controllers" in name=*) options="none,$controllers" ;; *) options="$controllers" ;; esac
    mount -t cgroup -o "$options" cgroup "/host/sys/fs/cgroup/$dir"
    case "$dir" in *,*) for one in $(echo "$dir" | tr , ' '); do
      ln -s "$dir" "/host/sys/fs/cgroup/$one"; done ;; esac
  done
fi
exec chroot /host /usr/local/sbin/dockerd --host unix:///run/docker.sock --pidfile /run/docker.pid
EOF

log "manager: docker swarm init --advertise-addr $GATEWAY"
docker swarm init --advertise-addr "$GATEWAY" >/dev/null
TOKEN="$(docker swarm join-token -q worker)"
python3 "$WORK/forward.py" "$GATEWAY" "$FORWARD_PORT" 127.0.0.1 5000 &
FORWARDER_PID=$!

log "worker: $WORKER (the host's dockerd in a privileged container)"
docker volume create "$WORKER-docker" >/dev/null
docker run -d --privileged --name "$WORKER" --hostname "$WORKER" \
  -v /:/host:ro -v "$WORKER-docker:/host/var/lib/docker" \
  --tmpfs /host/run --tmpfs /host/tmp --tmpfs /host/etc/docker --cgroupns=host \
  -v "$WORK/worker-init.sh:/worker-init.sh:ro" "$BASE" sh /worker-init.sh >/dev/null
docker exec -i "$WORKER" sh -c 'cat > /host/tmp/forward.py' < "$WORK/forward.py"
docker exec -d "$WORKER" chroot /host python3 /tmp/forward.py 127.0.0.1 5000 \
  "$GATEWAY" "$FORWARD_PORT"
inner() { docker exec "$WORKER" chroot /host docker -H unix:///run/docker.sock "$@"; }
for _ in $(seq 60); do inner info >/dev/null 2>&1 && break; sleep 1; done
inner info >/dev/null || { docker logs "$WORKER" | tail -20 >&2; fail "the worker's dockerd did not start"; }
inner swarm join --token "$TOKEN" "$GATEWAY:2377" >/dev/null
[[ "$(docker node ls -q | wc -l)" == 2 ]] || fail "the worker did not join"
log "nodes: $(docker node ls --format '{{.Hostname}}:{{.Status}}' | tr '\n' ' ')"

log "image: $REGISTRY/$REPO:v1"
mkdir -p "$WORK/app" "$WORK/project"
echo "release v1" > "$WORK/app/index.html"
cat > "$WORK/app/Dockerfile" <<EOF
FROM $BASE
COPY index.html /www/index.html
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
EOF
docker buildx build --platform linux/amd64 --push --provenance=false \
  -t "$REGISTRY/$REPO:v1" "$WORK/app" >/dev/null 2>&1 || fail "image build"
cat > "$WORK/project/compose.yaml" <<'EOF'
services:
  app:
    image: ${IMAGE_REGISTRY}/${IMAGE_REPO}:${IMAGE_TAG}
    stop_grace_period: 1s
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement: {max_replicas_per_node: 1}
      update_config: {order: start-first, failure_action: rollback}
EOF

log "deploykit deploy --orchestrator swarm"
rc=0
env -u GITHUB_ACTIONS PYTHONPATH="$ROOT" GITHUB_WORKSPACE="$WORK/project" \
  INPUT_REGISTRY="$REGISTRY" INPUT_IMAGE_REPO="$REPO" INPUT_PROJECT_NAME="$STACK" \
  INPUT_ENVIRONMENT=staging INPUT_ORCHESTRATOR=swarm INPUT_STATE_DIR="$WORK/state" \
  INPUT_HEALTH_TIMEOUT=120 \
  "$PYTHON" -m deploykit deploy --image-tag v1 >"$WORK/deploy.log" 2>&1 || rc=$?
cat "$WORK/deploy.log" >&2
[[ $rc == 0 ]] || fail "deploykit exited $rc"
grep -q '^status=deployed$' "$WORK/deploy.log" || fail "status is not deployed"

mapfile -t TASKS < <(docker service ps -q --filter desired-state=running "${STACK}_app")
[[ ${#TASKS[@]} == 2 ]] || fail "expected 2 running tasks, got ${#TASKS[@]}"
NODES="$(docker inspect --format '{{.NodeID}}' "${TASKS[@]}" | sort -u | wc -l)"
DIGESTS="$(docker inspect --format '{{.Spec.ContainerSpec.Image}}' "${TASKS[@]}" \
  | sed 's/.*@//' | sort -u)"
STATES="$(docker inspect --format '{{.Status.State}}' "${TASKS[@]}" | sort -u)"
log "tasks on $NODES node(s), state(s) $STATES, digest(s): $DIGESTS"
[[ $NODES == 2 ]] || fail "the replicas are not on two nodes"
[[ $(wc -l <<<"$DIGESTS") == 1 && $STATES == running ]] || fail "not one digest running"
log "OK: both nodes run $DIGESTS"
