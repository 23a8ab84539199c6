"""The sidecar, assembled: the policies once, the fast path and mitmproxy sharing them.

Reading Sidecar.__init__ tells the whole data plane: one instance of each policy (so a
circuit breaker or an outlier count is the same whichever path a request took), the
HTTP/1.1 pool, the fast path's listeners, and mitmproxy for what is handed over to it
(its adapters, meshproxy/addons/, are made from the same policies on first use).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from meshproxy import admin, upstream, upstream_h2
from meshproxy.config import MeshState
from meshproxy.config_watcher import ConfigWatcher
from meshproxy.fastpath.handover import Mitmproxy
from meshproxy.fastpath.http1 import HttpProxy
from meshproxy.fastpath.http2 import H2Proxy
from meshproxy.fastpath.listener import Listener
from meshproxy.fastpath.pipeline import Pipeline
from meshproxy.outlier import Outliers
from meshproxy.policy.faults import HttpFaults, TcpFaults
from meshproxy.policy.mirroring import Mirroring
from meshproxy.policy.resilience import Resilience
from meshproxy.policy.routing import Router
from meshproxy.policy.telemetry import Telemetry

logger = logging.getLogger("meshproxy")
ACCESS_LOG_FLUSH_SECONDS = 0.1  # how late an access-log line may be written (batched writes)


class Sidecar:
    def __init__(self, state: MeshState, watcher: ConfigWatcher | None = None) -> None:
        self.state = state
        self.watcher = watcher or ConfigWatcher(state)
        self.outliers = Outliers(state)  # shared: resilience records outcomes, routing skips ejected versions
        self.router = Router(state, self.outliers)
        self.http_faults = HttpFaults(state)
        self.tcp_faults = TcpFaults(state)
        self.mirroring = Mirroring()
        self.resilience = Resilience(state, self.outliers)
        self.telemetry = Telemetry(state, outliers=self.outliers)
        self.pool = upstream.Pool(on_connect=self.telemetry.connection_opened)
        self.pipeline = Pipeline(self.router, self.http_faults, self.mirroring, self.resilience, self.telemetry)
        self.h2_pool = upstream_h2.Pool(on_connect=self.telemetry.connection_opened)
        self.http = HttpProxy(self.pipeline, self.pool)
        self.h2 = H2Proxy(self.pipeline, self.h2_pool)
        self.mitmproxy = Mitmproxy(self._mitmproxy_addons)
        self.listener = Listener(self.http, self.h2, self.tcp_faults, self.telemetry, self.mitmproxy)

    def _mitmproxy_addons(self) -> list:
        from meshproxy.addons import addons  # imports mitmproxy

        return addons(self)

    async def start(self, **listen) -> None:
        self.watcher.read()
        await self.listener.start(**listen)
        self.watcher.start()
        self.tcp_faults.start()
        self.telemetry.start()

    def stop(self) -> None:
        self.listener.stop()
        self.watcher.stop()
        self.tcp_faults.stop()
        self.telemetry.stop()
        self.mirroring.stop()
        self.mitmproxy.stop()
        self.pool.close()
        self.h2_pool.close()
        self.telemetry.flush()

    def ready(self) -> bool:
        return self.listener.listening() and self.state.loaded

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        self.telemetry.flush_interval = ACCESS_LOG_FLUSH_SECONDS
        await self.start()
        servers = admin.start(self)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        logger.info("sidecar for %s ready", self.state.identity.workload)
        try:
            await stopping.wait()
        finally:
            self.stop()
            for server in servers:
                server.shutdown()
