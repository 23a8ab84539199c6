"""Routing (mitmproxy adapter): policy/routing.py for the flows mitmproxy carries.

At the request headers it makes the flow's Exchange (flows.META_EXCHANGE) and lets the
router choose; the flow then goes to the chosen version's host, its Host header kept.
"""

from __future__ import annotations

from mitmproxy import http

from meshproxy.addons.flows import META_EXCHANGE, direction_of, exchange_of
from meshproxy.config import Version
from meshproxy.exchange import INBOUND, Exchange
from meshproxy.policy.routing import SOURCE_HEADER, Router


class Routing:
    def __init__(self, router: Router) -> None:
        self.router = router

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # At the headers, not the whole request: a streamed body goes upstream as it
        # arrives, so its destination must be chosen before. The route's timeout starts here.
        request = flow.request
        exchange = Exchange(direction_of(flow), request.method, request.host_header or "", request.path,
                            request.http_version,
                            grpc=request.headers.get("content-type", "").startswith("application/grpc"))
        flow.metadata[META_EXCHANGE] = exchange
        if exchange.direction == INBOUND:
            self.router.inbound(exchange, request.headers.pop(SOURCE_HEADER, None))
            return
        version = self.router.outbound(exchange, request.headers, request.headers.__setitem__, request.query)
        if version is not None:
            send_to(flow, version)

    def response(self, flow: http.HTTPFlow) -> None:
        if (exchange := exchange_of(flow)) is not None:
            exchange.release()

    def error(self, flow: http.HTTPFlow) -> None:
        self.response(flow)


def send_to(flow: http.HTTPFlow, version: Version) -> None:
    # Setting .host rewrites the Host header too; the app's own Host must reach the server.
    authority = flow.request.host_header
    flow.request.host = version.host
    flow.request.host_header = authority
