"""The sidecar, assembled: the policies once, the fast path and mitmproxy sharing them.

Reading Sidecar.__init__ tells the whole data plane: one instance of each policy (so a
circuit breaker or an outlier count is the same whichever path a request took), the
HTTP/1.1 pool, the fast path's listeners, mesh mTLS (its identity, the mTLS server, and
the pools' and listener's hooks into it), and mitmproxy for what is handed over to it
(its adapters, meshproxy/addons/, are made from the same policies on first use).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from meshproxy import admin, mtls, otlp, upstream, upstream_h2
from meshproxy.config import MeshState
from meshproxy.config_watcher import ConfigWatcher
from meshproxy.fastpath.handover import Mitmproxy
from meshproxy.fastpath.http1 import HttpProxy
from meshproxy.fastpath.http2 import H2Proxy
from meshproxy.fastpath.listener import CallerProtocol, Listener
from meshproxy.fastpath.pipeline import Pipeline
from meshproxy.outlier import Outliers
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.authz import Authorization
from meshproxy.policy.faults import HttpFaults, TcpFaults
from meshproxy.policy.mirroring import Mirroring
from meshproxy.policy.resilience import Resilience
from meshproxy.policy.routing import Router
from meshproxy.policy.tap import Tap
from meshproxy.policy.telemetry import Telemetry
from meshproxy.policy.tracing import Tracing

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
        self.access_log = AccessLog(state)
        self.tracing = Tracing(state, lambda settings: otlp.Exporter(settings, state.identity))
        self.tap = Tap(state)
        self.authz = Authorization(state)
        self.tls = mtls.MeshTls(state, self.authz, self.telemetry, self.access_log)
        self.pool = upstream.Pool(on_connect=self.telemetry.connection_opened, secure=self.tls.opener(mtls.ALPN_HTTP1),
                                  secures=self.tls.secures)
        self.pipeline = Pipeline(self.router, self.http_faults, self.mirroring, self.resilience, self.telemetry,
                                 self.access_log, self.tracing, self.tap, self.authz, self.tls.secures)
        self.h2_pool = upstream_h2.Pool(on_connect=self.telemetry.connection_opened,
                                        secure=self.tls.opener(mtls.ALPN_H2), secures=self.tls.secures)
        self.http = HttpProxy(self.pipeline, self.pool)
        self.h2 = H2Proxy(self.pipeline, self.h2_pool)
        self.mitmproxy = Mitmproxy(self._mitmproxy_addons)
        self.listener = Listener(self.http, self.h2, self.tcp_faults, self.telemetry, self.access_log, self.mitmproxy)
        self.listener.gate = self.tls
        self.mtls_server = mtls.MtlsServer(self.tls, self.listener.serve, CallerProtocol)

    def _mitmproxy_addons(self) -> list:
        from meshproxy.addons import addons  # imports mitmproxy

        return addons(self)

    async def start(self, **listen) -> None:
        self.watcher.read()
        await self.tls.start()
        await self.listener.start(**listen)
        await self.mtls_server.start()
        self.watcher.start()
        self.tcp_faults.start()
        self.telemetry.start()

    def stop(self) -> None:
        self.listener.stop()
        self.mtls_server.stop()
        self.tls.stop()
        self.watcher.stop()
        self.tcp_faults.stop()
        self.telemetry.stop()
        self.mirroring.stop()
        self.tracing.stop()
        self.mitmproxy.stop()
        self.pool.close()
        self.h2_pool.close()
        self.access_log.flush()

    def ready(self) -> bool:
        # With an identity, ready once it serves mTLS too: callers' sidecars originate it at once.
        return (self.listener.listening() and self.state.loaded
                and (self.tls.credentials is None or self.mtls_server.listening()))

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        self.access_log.flush_interval = ACCESS_LOG_FLUSH_SECONDS
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
