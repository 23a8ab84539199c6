"""Telemetry (mitmproxy adapter): policy/telemetry.py, policy/access_log.py and policy/tap.py
for the flows and TCP connections mitmproxy carries (handed over by the fast path: TLS the
app started)."""

from __future__ import annotations

import time

from mitmproxy import http, tcp

from meshproxy.addons.flows import direction_of, exchange_of, finish
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.tap import Tap
from meshproxy.policy.telemetry import Telemetry as TelemetryPolicy

# Flags of requests answered locally before any upstream try.
LOCAL_ANSWER_FLAGS = frozenset({"FI", "UT"})
META_TCP_LABELS = "meshcli.tcp_labels"
META_TCP_COUNTED = "meshcli.tcp_counted"  # [bytes from the server, from the client, started]


class Telemetry:
    def __init__(self, telemetry: TelemetryPolicy, access_log: AccessLog, tap: Tap) -> None:
        self.telemetry, self.access_log, self.tap = telemetry, access_log, tap

    # -- HTTP ---------------------------------------------------------------------------
    def response(self, flow: http.HTTPFlow) -> None:
        exchange = exchange_of(flow)
        if exchange is None:
            return
        finish(exchange, flow)
        if exchange.route is not None and exchange.attempts == 0 and LOCAL_ANSWER_FLAGS.isdisjoint(exchange.flags):
            exchange.attempts = 1  # mitmproxy forwarded it itself
        self.telemetry.record(exchange)
        self.access_log.record(exchange)
        if self.tap.active:
            self.tap.publish(exchange)

    def error(self, flow: http.HTTPFlow) -> None:
        # mitmproxy fires either response or error for a flow, never both. An error may come
        # after the response headers (the server died mid-body): it still counts, as failed.
        self.response(flow)

    # -- TCP ----------------------------------------------------------------------------
    def _labels(self, flow: tcp.TCPFlow) -> tuple[str, ...]:
        labels = flow.metadata.get(META_TCP_LABELS)
        if labels is None:
            destination = "%s:%s" % tuple(flow.server_conn.address or ("unknown", 0))
            peer = flow.client_conn.peername
            labels = flow.metadata[META_TCP_LABELS] = self.telemetry.tcp_labels(
                direction_of(flow), destination, peer_ip=peer[0] if peer else None)
        return labels

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.telemetry.tcp_opened(self._labels(flow))
        flow.metadata[META_TCP_COUNTED] = [0, 0, time.time()]

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        message = flow.messages[-1]
        self.telemetry.tcp_bytes(self._labels(flow), message.from_client, len(message.content))
        flow.metadata.setdefault(META_TCP_COUNTED, [0, 0, time.time()])[message.from_client] += len(message.content)
        # Counted; a long-lived connection must not keep every chunk in memory.
        flow.messages.clear()

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self.telemetry.tcp_closed(self._labels(flow))
        from_server, from_client, started = flow.metadata.get(META_TCP_COUNTED) or (0, 0, time.time())
        destination = "%s:%s" % tuple(flow.server_conn.address or ("unknown", 0))
        self.access_log.tcp(direction_of(flow), destination, started, from_client, from_server,
                            flow.error.msg if flow.error else None)

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self.tcp_end(flow)
