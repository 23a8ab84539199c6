"""Run the sidecar (meshproxy/sidecar.py) on uvloop when it is installed.

Outbound traffic of the app arrives on 15001, inbound on 15006 (iptables, see pod.sh).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from meshproxy.config import Identity, MeshState
from meshproxy.sidecar import Sidecar


def main() -> None:
    level = os.environ.get("MESH_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # mitmproxy logs every connect/disconnect at INFO; the access log already says it.
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    sidecar = Sidecar(MeshState(Identity.from_env()))
    try:
        import uvloop
    except ImportError:
        asyncio.run(sidecar.run())
    else:
        uvloop.run(sidecar.run())


if __name__ == "__main__":
    main()
