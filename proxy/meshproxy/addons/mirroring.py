"""Mirroring: send a copy of some requests to a mirror version (Istio's mirror).

When the route has a mirror and the request is in its percent (sampling.py), a copy of the
buffered request goes to the mirror version in its own asyncio task, with a short
timeout; its answer is discarded and nothing about it reaches the caller or delays
it. As in Istio the copy's Host gets the suffix `-shadow`, so the mirror can tell.
Only what the sidecar's own clients can send is mirrored (upstream.carries): HTTP/1.x and
HTTP/2 (gRPC) requests with buffered bodies; no streamed body or WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from meshproxy import upstream, upstream_h2
from meshproxy.addons import routing
from meshproxy.sampling import Shares

logger = logging.getLogger("meshproxy.mirroring")

META_MIRRORED = "meshcli.mirrored"  # the mirror version a copy went to, for Telemetry
MIRROR_TIMEOUT = 2.0  # seconds; a slow mirror must not pile up copies
SHADOW_SUFFIX = "-shadow"


def shadow_authority(authority: str) -> str:
    """'payment:8080' -> 'payment-shadow:8080'."""
    name, colon, port = authority.partition(":")  # mesh services have DNS names, never IPv6 literals
    return name + SHADOW_SUFFIX + colon + port


class Mirroring:
    def __init__(self, pool: upstream.Pool | None = None, h2_pool: upstream_h2.Pool | None = None) -> None:
        self.pool = pool or upstream.Pool()
        self.h2_pool = h2_pool or upstream_h2.Pool()
        self._copies: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self.shares = Shares()  # which requests a mirror's percent picks

    def request(self, flow: http.HTTPFlow) -> None:
        route = flow.metadata.get(routing.META_ROUTE)
        if route is None or route.mirror is None or flow.response is not None or flow.error is not None:
            return
        mirror = route.mirror
        request = flow.request
        if not upstream.carries(request) or not self.shares.pick(mirror, mirror.percent):
            return
        version = flow.metadata[routing.META_SERVICE_CONFIG].version(mirror.version)
        client, pool = (upstream_h2, self.h2_pool) if request.is_http2 else (upstream, self.pool)
        headers = client.request_headers(request.headers.fields, shadow_authority(request.host_header),
                                         request.raw_content, request.method)
        copy = asyncio.create_task(self._send(pool, version.host, request.port, request.method, request.path,
                                              headers, request.raw_content))
        self._copies.add(copy)
        copy.add_done_callback(self._copies.discard)
        flow.metadata[META_MIRRORED] = version.name

    async def _send(self, pool: upstream.Pool | upstream_h2.Pool, host: str, port: int, method: str, target: str,
                    headers: list, body: bytes) -> None:
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                await pool.request(host, port, method, target, headers, body)
        except (upstream.UpstreamError, upstream.Unsendable, TimeoutError) as exc:
            logger.debug("mirror copy to %s:%s failed: %s", host, port, exc or "timeout")

    def done(self) -> None:
        for copy in self._copies:
            copy.cancel()
