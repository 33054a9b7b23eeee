#!/bin/sh
# The app-side rule of a zero-downtime switch: on SIGTERM stop accepting, finish what is in
# flight, then exit within stop_grace_period. busybox httpd serves each connection in a
# child of its own; the parent is the listener: stopping it closes the port (the proxy then
# retries a new connection on another container) and the children finish their requests.
httpd -f -p 8080 -h /www &
listener=$!
trap 'kill -TERM "$listener"; sleep "${DRAIN_SECONDS:-1}"; exit 0' TERM INT
wait "$listener"
