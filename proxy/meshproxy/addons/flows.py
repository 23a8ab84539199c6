"""What the mitmproxy adapters share: a flow's Exchange, its direction, local replies.

Connections reach mitmproxy only through the fast path's handover (fastpath/handover.py),
on one loopback port per direction.
"""

from __future__ import annotations

import time

from mitmproxy import connection, ctx, http

from meshproxy.exchange import Exchange, LocalReply
from meshproxy.fastpath import tcp
from meshproxy.fastpath.handover import direction_of_port

META_EXCHANGE = "meshcli.exchange"


def direction_of(flow) -> str:
    return direction_of_port(flow.client_conn.proxy_mode.listen_port())


def exchange_of(flow) -> Exchange | None:
    return flow.metadata.get(META_EXCHANGE)


def local_response(exchange: Exchange, reply: LocalReply) -> http.Response:
    exchange.answer_locally(reply)
    return http.Response.make(reply.status, reply.body, {"content-type": "text/plain", **dict(reply.headers)})


def _connection_io(conn: connection.Connection, client: connection.Client):
    """mitmproxy's live transport (reader/writer) for `conn`, or None when it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    return handler.transports.get(conn) if handler is not None else None


def reset_connection(client: connection.Client) -> bool:
    """Close the caller's connection with a TCP RST, not a FIN (mitmproxy only closes gracefully)."""
    io = _connection_io(client, client)
    writer = io.writer if io is not None else None
    if writer is None or writer.is_closing():
        return False
    tcp.reset(writer)
    return True

def finish(exchange: Exchange, flow: http.HTTPFlow) -> None:
    """Timings and outcome from the flow, once it is over."""
    exchange.started = flow.request.timestamp_start
    response = flow.response
    exchange.ended = response.timestamp_end if response is not None and response.timestamp_end else time.time()
    exchange.status = response.status_code if response is not None and flow.error is None else 0
    exchange.request_bytes = len(flow.request.raw_content or b"")
    if response is not None:
        exchange.response_bytes = len(response.raw_content or b"")
        if exchange.grpc:
            exchange.grpc_status = response.headers.get("grpc-status") or (
                response.trailers.get("grpc-status", "") if response.trailers else "")
    if flow.error is not None:
        exchange.error = flow.error.msg
