#!/bin/sh
# One image, two roles: `pod` holds the namespace and its iptables rules,
# `sidecar` runs the proxy (as uid 1337, set by the compose file).
set -eu
case "${1:-sidecar}" in
  pod) exec /opt/meshcli/pod.sh ;;
  sidecar) exec /opt/meshcli/venv/bin/python -m meshproxy ;;
  *) exec "$@" ;;
esac
