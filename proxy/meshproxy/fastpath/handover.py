"""Handover: connections the fast path leaves to mitmproxy, in the same process.

mitmproxy runs with the mesh's adapters (meshproxy/addons/) and listens in regular mode
on loopback only, one port per direction so its adapters know which side they are on.
It is started on the first handover, so a sidecar that never needs it never pays its
memory or start-up. A handed-over connection is tunnelled with CONNECT to its original
destination, and the bytes the fast path already read are replayed first: mitmproxy sees
the connection as the app opened it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from meshproxy.exchange import INBOUND, OUTBOUND

logger = logging.getLogger("meshproxy.handover")

HANDOVER_OUTBOUND_PORT = 15081
HANDOVER_INBOUND_PORT = 15086
START_TIMEOUT = 20.0


def port_for(direction: str) -> int:
    return HANDOVER_INBOUND_PORT if direction == INBOUND else HANDOVER_OUTBOUND_PORT


def direction_of_port(port: int) -> str:
    return INBOUND if port == HANDOVER_INBOUND_PORT else OUTBOUND


class Mitmproxy:
    def __init__(self, make_addons: Callable[[], list]) -> None:
        self.make_addons = make_addons  # imports mitmproxy: called on the first handover only
        self.master = None
        self._starting: asyncio.Task | None = None
        self._running: asyncio.Task | None = None
        self.handed_over = 0  # connections, for stats and tests

    async def connect(self, direction: str, destination: tuple[str, int]) -> tuple[asyncio.StreamReader,
                                                                                  asyncio.StreamWriter]:
        """A connection through mitmproxy to `destination`, ready for the app's bytes."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_for(direction))
        target = ("%s:%d" % destination).encode()
        writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise ConnectionError(f"mitmproxy refused the handover: {head[:80]!r}")
        self.handed_over += 1
        return reader, writer

    async def _start(self) -> None:
        from mitmproxy import options
        from mitmproxy.master import Master

        opts = options.Options(confdir=os.environ.get("MESH_MITMPROXY_DIR", "/tmp/mitmproxy"))
        master = Master(opts, event_loop=asyncio.get_running_loop())
        master.addons.add(*self.make_addons())
        # Options declared by addons can only be set once those addons are loaded.
        opts.update(mode=[f"regular@127.0.0.1:{HANDOVER_OUTBOUND_PORT}", f"regular@127.0.0.1:{HANDOVER_INBOUND_PORT}"],
                    stream_large_bodies="1m")
        self.master = master
        self._running = asyncio.ensure_future(master.run())
        proxyserver = master.addons.get("proxyserver")
        async with asyncio.timeout(START_TIMEOUT):
            while not (len(proxyserver.servers) == 2 and not proxyserver.servers.is_updating
                       and all(s.is_running for s in proxyserver.servers)):
                if self._running.done():
                    self._running.result()  # raises why it stopped
                    raise RuntimeError("mitmproxy stopped")
                await asyncio.sleep(0.01)
        logger.info("mitmproxy started for handed-over connections")

    def stop(self) -> None:
        if self.master is not None:
            self.master.shutdown()
