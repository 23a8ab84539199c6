"""Run the sidecar: a mitmproxy Master with the mesh's addons, in transparent mode.

Outbound traffic of the app arrives on 15001, inbound on 15006 (iptables, see pod.sh).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from mitmproxy import options
from mitmproxy.master import Master

from meshproxy import admin
from meshproxy.addons import addons
from meshproxy.addons.routing import INBOUND_PORT, OUTBOUND_PORT
from meshproxy.addons.telemetry import Telemetry
from meshproxy.config import Identity, MeshState


async def run() -> None:
    state = MeshState(Identity.from_env())
    # No TLS interception: mitmproxy keeps its CA here only if something asks for one.
    opts = options.Options(confdir=os.environ.get("MESH_MITMPROXY_DIR", "/tmp/mitmproxy"))
    master = Master(opts)
    pipeline = addons(state)
    master.addons.add(*pipeline)
    # Options declared by addons can only be set once those addons are loaded.
    opts.update(
        mode=[f"transparent@{OUTBOUND_PORT}", f"transparent@{INBOUND_PORT}"],
        # Large bodies are streamed instead of buffered, so memory stays flat.
        stream_large_bodies="1m",
    )
    telemetry = next(a for a in pipeline if isinstance(a, Telemetry))
    proxyserver = master.addons.get("proxyserver")

    def listening() -> bool:
        servers = proxyserver.servers
        return len(servers) == 2 and not servers.is_updating and all(s.is_running for s in servers)

    admin.start(state, telemetry, listening)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    logging.getLogger("meshproxy").info("sidecar for %s starting", state.identity.workload)
    await master.run()


def main() -> None:
    logging.basicConfig(level=os.environ.get("MESH_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("MESH_LOG_LEVEL", "INFO") != "DEBUG":
        # mitmproxy logs every connect/disconnect at INFO; the access log already says it.
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    asyncio.run(run())


if __name__ == "__main__":
    main()
