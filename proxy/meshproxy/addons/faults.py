"""Faults (mitmproxy adapter): policy/faults.py's HTTP faults for the flows mitmproxy
carries. (TCP faults never reach mitmproxy: the fast path relays such connections itself.)"""

from __future__ import annotations

from mitmproxy import http

from meshproxy.addons.flows import exchange_of, local_response, reset_connection
from meshproxy.exchange import OUTBOUND
from meshproxy.policy.faults import RESET, HttpFaults


class Faults:
    def __init__(self, faults: HttpFaults) -> None:
        self.faults = faults

    async def request(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if flow.response is not None or flow.error is not None or exchange is None or exchange.direction != OUTBOUND:
            return
        verdict = await self.faults.apply(exchange)
        if verdict is RESET:
            flow.kill()  # nothing reaches the server; HTTP/2 resets only this stream
            if not flow.request.is_http2:
                reset_connection(flow.client_conn)
        elif verdict is not None:
            flow.response = local_response(exchange, verdict)
