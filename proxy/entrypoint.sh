#!/bin/sh
# One image, three roles: `pod` holds the namespace and its iptables rules,
# `sidecar` runs the proxy (as uid 1337, set by the compose file), `controller`
# keeps the project's sidecars running.
set -eu
case "${1:-sidecar}" in
  pod) exec /opt/meshcli/pod.sh ;;
  sidecar) exec /opt/meshcli/venv/bin/python -m meshproxy ;;
  controller) exec /opt/meshcli/venv/bin/python -m meshproxy.controller ;;
  *) exec "$@" ;;
esac
