#!/usr/bin/env bash
# Set up this machine and run every test: unit tests, then end-to-end tests against a
# real Docker engine (which clean up after themselves). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest tests/unit tests/e2e -q "$@"
