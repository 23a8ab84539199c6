#!/bin/sh
# One image, four roles: `pod` holds the namespace, `init` installs its iptables
# rules and waits for the sidecar (pod.sh), `sidecar` runs the proxy (as uid 1337, set
# by the compose file), `controller` keeps the project's sidecars running.
set -eu
case "${1:-sidecar}" in
  pod) exec /opt/meshcli/pod.sh hold ;;
  init) exec /opt/meshcli/pod.sh init ;;
  sidecar) exec /opt/meshcli/venv/bin/python -m meshproxy ;;
  controller) exec /opt/meshcli/venv/bin/python -m meshproxy.controller ;;
  *) exec "$@" ;;
esac
