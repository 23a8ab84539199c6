"""Resilience (mitmproxy adapter): policy/resilience.py for the flows mitmproxy carries.

For an outbound request to a mesh service whose body is buffered, that has no response
yet and was not killed, the `request` hook forwards it itself through the policy, with
the sidecar's HTTP/1 client (upstream.Pool) or HTTP/2 client (upstream_h2.Pool) in the
app's own protocol, trailers included, and sets flow.response, so mitmproxy does not
forward it. Everything else keeps mitmproxy's own forwarding (upstream.carries).
"""

from __future__ import annotations

import time

from mitmproxy import http

from meshproxy import upstream, upstream_h2
from meshproxy.addons.flows import exchange_of, local_response
from meshproxy.policy.resilience import Resilience as ResiliencePolicy

# Statuses whose Content-Length describes a body that is not there.
BODYLESS_STATUSES = frozenset({204, 304})


def to_flow_response(answer: upstream.Response, request: http.Request) -> http.Response:
    headers = answer.headers
    if request.method != "HEAD" and answer.status not in BODYLESS_STATUSES:
        # The body is whole now: its length replaces any chunked framing.
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(answer.body)).encode()))
    now = time.time()
    # In the app's HTTP version, as Envoy answers: an HTTP/1.0 server's version would make
    # mitmproxy close the app's kept-alive connection (its Connection header is hop-by-hop, gone).
    return http.Response(request.data.http_version, answer.status, answer.reason, tuple(headers), answer.body,
                         http.Headers(answer.trailers) if answer.trailers else None, now, now)


class Resilience:
    def __init__(self, resilience: ResiliencePolicy, pool: upstream.Pool, h2_pool: upstream_h2.Pool) -> None:
        self.resilience, self.pool, self.h2_pool = resilience, pool, h2_pool

    async def request(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        request = flow.request
        if (flow.response is not None or flow.error is not None or exchange is None or exchange.route is None
                or not upstream.carries(request)):
            return
        body, method, port, path = request.raw_content, request.method, request.port, request.path
        client, pool = (upstream_h2, self.h2_pool) if request.is_http2 else (upstream, self.pool)
        headers = client.request_headers(request.headers.fields, request.host_header, body, method)

        async def attempt(version, max_requests):
            return await pool.request(version.host, port, method, path, headers, body, max_requests)

        try:
            forwarded = await self.resilience.forward(exchange, attempt)
        except upstream.Unsendable:
            return  # e.g. a raw non-ASCII path: mitmproxy forwards it as it came, without these policies
        forwarded.done()  # buffered: the answer is whole already
        flow.response = (to_flow_response(forwarded.answer, request) if forwarded.answer is not None
                         else local_response(exchange, forwarded.reply))
