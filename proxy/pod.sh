#!/bin/sh
# A pod's two helpers, as in a Kubernetes pod (see meshcli/compose_rewrite.py):
#   hold  the pod container: owns the network namespace that the app, its sidecar and its
#         init join, and only waits, so the sidecar can be restarted or recreated while
#         the app keeps its network. Nothing polls it.
#   init  like Istio's istio-init: installs the interception rules in that namespace
#         (again harmlessly on a second `up`), waits until the sidecar is ready, and exits 0.
#         The app starts then, so its first call is already meshed.
set -eu

if [ "${1:-hold}" = "hold" ]; then
  trap 'exit 0' TERM INT
  while :; do sleep 3600 & wait $!; done
fi

# The sidecar's ports and uid, from the one definition meshcli and the sidecar share.
eval "$(/opt/meshcli/venv/bin/python -c 'from meshproxy import config as c
print(f"INBOUND_PORT={c.INBOUND_PORT} OUTBOUND_PORT={c.OUTBOUND_PORT} SIDECAR_UID={c.SIDECAR_UID}")
print(f"READY_URL=http://127.0.0.1:{c.HEALTH_PORT}{c.HEALTH_PATH}")')"
# The sidecar's own ports (admin, health, metrics...) are never intercepted.
MESH_PORTS="${MESH_EXCLUDE_INBOUND_PORTS:-15000:15099}"
WAIT_SECONDS="${MESH_INIT_TIMEOUT:-300}"

rule() { iptables -w -t nat "$@"; }

if ! rule -L MESH_INBOUND >/dev/null 2>&1; then
  rule -N MESH_INBOUND
  rule -A MESH_INBOUND -p tcp --dport "$MESH_PORTS" -j RETURN
  rule -A MESH_INBOUND -p tcp -j REDIRECT --to-ports "$INBOUND_PORT"
  rule -A PREROUTING -p tcp -j MESH_INBOUND

  rule -N MESH_OUTBOUND
  rule -A MESH_OUTBOUND -o lo -j RETURN
  rule -A MESH_OUTBOUND -m owner --uid-owner "$SIDECAR_UID" -j RETURN
  rule -A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports "$OUTBOUND_PORT"
  rule -A OUTPUT -p tcp -j MESH_OUTBOUND
fi
echo "pod ${MESH_WORKLOAD:-?}: interception rules installed (inbound -> $INBOUND_PORT, outbound -> $OUTBOUND_PORT)"

# 20 tries a second, in the namespace itself: no docker exec, so it costs next to nothing.
tries=$((WAIT_SECONDS * 20))
until curl -fsS -o /dev/null --max-time 1 "$READY_URL" 2>/dev/null; do
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    echo "pod ${MESH_WORKLOAD:-?}: the sidecar was not ready within ${WAIT_SECONDS}s" >&2
    exit 1
  fi
  sleep 0.05
done
echo "pod ${MESH_WORKLOAD:-?}: sidecar ready"
