#!/usr/bin/env bash
# Install meshcli (editable, with test extras) and the sidecar's pinned dependencies
# (proxy/requirements.txt) into .venv, after making sure this machine has a Docker engine,
# Compose v2 and a base image (scripts/setup-docker.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-docker.sh >/dev/null
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -e '.[test]'
# The sidecar's dependencies, for the unit tests of proxy/meshproxy: the same pins as its image.
.venv/bin/python -m pip install -q -r proxy/requirements.txt
# An editable install is not byte-compiled, and PYTHONDONTWRITEBYTECODE (set on some machines,
# CI's among them) stops Python from caching what it compiles: every `meshcli` run would
# compile the CLI anew (a quarter of `meshcli --help`). Compile it now, as pip does for a wheel.
.venv/bin/python -m compileall -q meshcli >/dev/null
echo "[install] meshcli $(.venv/bin/meshcli --version | awk '{print $2}') in $(pwd)/.venv" >&2
