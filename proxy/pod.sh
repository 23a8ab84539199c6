#!/bin/sh
# The pod container: owns the network namespace that the app and its sidecar join.
# It installs the interception rules, reports ready, then only waits, so that the
# sidecar can be restarted or recreated while the app keeps its network.
set -eu

# The sidecar's ports and uid and the ready file, from the one definition meshcli and the sidecar share.
eval "$(/opt/meshcli/venv/bin/python -c 'from meshproxy import config as c
print(f"INBOUND_PORT={c.INBOUND_PORT} OUTBOUND_PORT={c.OUTBOUND_PORT} SIDECAR_UID={c.SIDECAR_UID}")
print(f"READY={c.POD_READY_FILE}")')"
# The sidecar's own ports (admin, health, metrics...) are never intercepted.
MESH_PORTS="${MESH_EXCLUDE_INBOUND_PORTS:-15000:15099}"

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

touch "$READY"
echo "pod ${MESH_WORKLOAD:-?}: interception rules installed (inbound -> $INBOUND_PORT, outbound -> $OUTBOUND_PORT)"

trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
