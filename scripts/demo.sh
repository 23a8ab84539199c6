#!/usr/bin/env bash
# Set up this machine and run the demo: frontend -> orders -> payment v1/v2 under the mesh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/meshcli up -f compose/compose.yaml
cat >&2 <<MSG

The demo is up. Try:
  curl -s http://localhost:\${FRONTEND_PORT:-8080}/     # frontend -> orders -> payment (v1 or v2)
  .venv/bin/meshcli status -f compose/compose.yaml
  .venv/bin/meshcli split payment v1=90 v2=10 -f compose/compose.yaml      # canary, hot-reloaded
  .venv/bin/meshcli fault payment --abort 503 --percent 50 --for 30s -f compose/compose.yaml
  .venv/bin/meshcli down -f compose/compose.yaml       # remove everything
MSG
