#!/usr/bin/env bash
# A throwaway Docker engine for Swarm tests, so the shared engine's Swarm state is never
# touched: `docker swarm leave` on an engine breaks name resolution between the containers
# already running on its user-defined networks (measured on the test bed: every lookup
# fails afterwards, also from new containers on those networks), i.e. every compose
# project of every other test.
#
#   scripts/swarm-engine.sh up NAME      prints DOCKER_HOST=tcp://<ip>:2375 once it answers
#   scripts/swarm-engine.sh down NAME    removes the container, its volume and forwarder
#
# The engine is a privileged container running the test bed's own dockerd from the host's
# root filesystem (read-only, chroot) with its own /var/lib/docker, /run and /tmp; on cgroup
# v1 it mounts fresh cgroup hierarchies (the container's own show its cgroup as the root).
# It listens on tcp://<container ip>:2375 (no TLS: test only, on docker0). Its
# 127.0.0.1:5000 is forwarded to the host's open registry (loopback only) through
# <docker0 gateway>:<port> on the host, so image names are the same everywhere.
set -euo pipefail

ACTION="${1:?up|down}"
NAME="${2:?engine name}"
BASE="127.0.0.1:5000/testbed/busybox:latest"
STATE="${TMPDIR:-/tmp}/deploykit-swarm-engine-$NAME"
GATEWAY="$(docker network inspect bridge --format '{{(index .IPAM.Config 0).Gateway}}')"

down() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  docker volume rm "$NAME-docker" >/dev/null 2>&1 || true
  if [[ -f "$STATE/forwarder.pid" ]]; then kill "$(cat "$STATE/forwarder.pid")" 2>/dev/null || true; fi
  rm -rf "$STATE"
}

if [[ "$ACTION" == down ]]; then down; exit 0; fi
[[ "$ACTION" == up ]] || { echo "usage: $0 up|down NAME" >&2; exit 2; }

mkdir -p "$STATE"
cat > "$STATE/forward.py" <<'EOF'
"""TCP forwarder: LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT (prints the port)."""
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

server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print(server.getsockname()[1], flush=True)
while True:
    client, _ = server.accept()
    try:
        upstream = socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=10)
    except OSError:
        client.close()
        continue
    upstream.settimeout(None)
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
EOF
cat > "$STATE/init.sh" <<'EOF'
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
# A private cgroup namespace per container: with the host's (cgroup v1's default), runc
# builds each controller's bind source from this engine's view of the cgroup tree, which
# is wrong when the engine itself runs nested (the bare machine of fresh-machine-test.sh:
# `stat /sys/fs/cgroup/<id>: no such file or directory`); a private one gets fresh mounts.
exec chroot /host /usr/local/sbin/dockerd --host unix:///run/docker.sock \
  --host tcp://0.0.0.0:2375 --pidfile /run/docker.pid --default-cgroupns-mode private
EOF

# The host side of the registry forwarder: <gateway>:<free port> -> 127.0.0.1:5000.
python3 "$STATE/forward.py" "$GATEWAY" 0 127.0.0.1 5000 > "$STATE/forwarder.port" \
  2> "$STATE/forwarder.log" < /dev/null &
echo $! > "$STATE/forwarder.pid"
for _ in $(seq 50); do [[ -s "$STATE/forwarder.port" ]] && break; sleep 0.1; done
PORT="$(cat "$STATE/forwarder.port")"

docker volume create "$NAME-docker" >/dev/null
docker run -d --privileged --cgroupns=host --name "$NAME" --hostname "$NAME" \
  -v /:/host:ro -v "$NAME-docker:/host/var/lib/docker" \
  --tmpfs /host/run --tmpfs /host/tmp --tmpfs /host/etc/docker \
  -v "$STATE/init.sh:/init.sh:ro" "$BASE" sh /init.sh >/dev/null
docker exec -i "$NAME" sh -c 'cat > /host/tmp/forward.py' < "$STATE/forward.py"
docker exec -d "$NAME" chroot /host python3 /tmp/forward.py 127.0.0.1 5000 "$GATEWAY" "$PORT"
IP="$(docker inspect --format '{{.NetworkSettings.IPAddress}}' "$NAME")"
for _ in $(seq 120); do
  if docker -H "tcp://$IP:2375" info >/dev/null 2>&1; then
    echo "DOCKER_HOST=tcp://$IP:2375"
    exit 0
  fi
  sleep 0.5
done
docker logs "$NAME" 2>&1 | tail -20 >&2
down
echo "the engine $NAME did not start" >&2
exit 1
