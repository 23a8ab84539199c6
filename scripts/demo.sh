#!/usr/bin/env bash
# Set up this machine and run the demo (frontend -> orders -> payment v1/v2 under the mesh)
# on a copy of it in ./meshcli-demo: what you try next changes that copy, never this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/meshcli demo meshcli-demo
cat >&2 <<MSG

Commands run inside the copy (with .venv/bin on your PATH, or prefix them with ../../.venv/bin/):
  cd meshcli-demo/compose
  meshcli split payment v1=90 v2=10      # canary, hot-reloaded
  meshcli down                           # remove everything
MSG
