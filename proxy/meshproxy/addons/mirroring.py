"""Mirroring (mitmproxy adapter): policy/mirroring.py for the buffered requests mitmproxy
carries, sent with the sidecar's own HTTP/1 or HTTP/2 client (upstream.carries)."""

from __future__ import annotations

from mitmproxy import http

from meshproxy import upstream, upstream_h2
from meshproxy.addons.flows import exchange_of
from meshproxy.policy.mirroring import Mirroring as MirrorPolicy


class Mirroring:
    def __init__(self, mirroring: MirrorPolicy, pool: upstream.Pool, h2_pool: upstream_h2.Pool) -> None:
        self.mirroring, self.pool, self.h2_pool = mirroring, pool, h2_pool

    def request(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        request = flow.request
        if (exchange is None or exchange.route is None or flow.response is not None or flow.error is not None
                or not upstream.carries(request)):
            return
        version = self.mirroring.wants_copy(exchange)
        if version is None:
            return
        client, pool = (upstream_h2, self.h2_pool) if request.is_http2 else (upstream, self.pool)
        body, method, port, path = request.raw_content, request.method, request.port, request.path

        def send(to, authority: str):
            return pool.request(to.host, port, method, path, client.request_headers(request.headers.fields, authority,
                                                                                    body, method), body)

        self.mirroring.copy(exchange, version, send)
