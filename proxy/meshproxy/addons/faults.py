"""Faults: inject the mesh's faults into the calls this sidecar's app makes (client side).

HTTP, like Istio's fault filter: after Routing chose the route, the fault in force
(a runtime fault from `meshcli fault` first, else the route's own) may delay the
request - never past the route's deadline: then the caller gets 504 - and may abort
it with a status, or reset the caller's connection.

TCP, like Toxiproxy's toxics, for connections of any protocol to a faulted service:
the decision is taken once per connection (`percent` samples connections) when
ProtocolDetection asks, which then relays the connection as raw TCP, so HTTP traffic
gets TCP faults too. The tcp hooks then delay, throttle, slice, truncate, swallow or
reset the data. Hooks are blocking: a sleep in tcp_message holds back every later
message of that connection, so data keeps its order.

Every injected fault is recorded in flow.metadata["meshcli.flags"] for telemetry:
"DI" delay injected, "FI" fault injected (abort, reset, or a TCP fault), "UT" when
the delay ran into the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.proxy.context import Context

from meshproxy.addons import routing
from meshproxy.addons.resilience import timed_out
from meshproxy.config import MeshState, TcpFault
from meshproxy.resolver import ServiceAddresses
from meshproxy.sampling import Shares

logger = logging.getLogger("meshproxy.faults")

META_TCP_FAULT = "meshcli.tcp_fault"
META_TCP_PASSED = "meshcli.tcp_passed"  # limit-data: bytes relayed so far
ABORT_BODY = b"fault filter abort"
# TCP kinds that only slow data down ("DI"); the others break the connection ("FI").
TCP_DELAYS = ("latency", "bandwidth", "slicer")


def flags_of(flow) -> list[str]:
    return flow.metadata.setdefault(routing.META_FLAGS, [])


def _connection_io(conn: connection.Connection, client: connection.Client):
    """mitmproxy's live transport (reader/writer) for `conn`, or None when it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    return handler.transports.get(conn) if handler is not None else None


def reset_connection(client: connection.Client) -> bool:
    """Close the app's connection with a TCP RST, not a FIN: the app sees 'connection reset by peer'.

    mitmproxy only ever closes gracefully, so we abort the socket ourselves with
    SO_LINGER 0; mitmproxy then sees the connection end and tears down the rest.
    """
    io = _connection_io(client, client)
    writer = io.writer if io is not None else None
    if writer is None or writer.is_closing():
        return False
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return True


def _close_connection(client: connection.Client) -> None:
    """A graceful close (FIN) of the app's connection, after what is already sent."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    if handler is not None and client in handler.transports:
        handler.close_connection(client)


class Faults:
    def __init__(self, state: MeshState, addresses: ServiceAddresses | None = None) -> None:
        self.state = state
        self.addresses = addresses or ServiceAddresses(state)
        # client connection id -> the TCP fault it gets (None: none), decided once per connection
        self._tcp_decisions: dict[str, tuple[str, TcpFault] | None] = {}
        self.shares = Shares()  # which requests/connections a fault's percent picks
        state.subscribe(lambda config: self.shares.clear())

    # -- lifecycle -------------------------------------------------------------------------
    def running(self) -> None:
        self.addresses.start()

    def done(self) -> None:
        self.addresses.stop()

    def client_disconnected(self, client: connection.Client) -> None:
        self._tcp_decisions.pop(client.id, None)

    # -- HTTP ------------------------------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata
        if flow.response is not None or flow.error is not None or meta.get(routing.META_DIRECTION) != "outbound":
            return
        service, route = meta.get(routing.META_SERVICE_CONFIG), meta.get(routing.META_ROUTE)
        if service is None or route is None:
            return  # leaving the mesh
        fault = self.state.config.http_fault(service, route, self.state.identity.service)
        if fault is None:
            return
        if fault.delay is not None and self.shares.pick(fault.delay, fault.delay.percent):
            flags_of(flow).append("DI")
            if not await self._delay(fault.delay.seconds, meta.get(routing.META_DEADLINE)):
                flow.response = timed_out(flags_of(flow))
                return
        if fault.abort is not None and self.shares.pick(fault.abort, fault.abort.percent):
            flags_of(flow).append("FI")
            if fault.abort.reset:
                flow.kill()  # nothing reaches the server; HTTP/2 resets only this stream
                if not flow.request.is_http2:
                    reset_connection(flow.client_conn)
            else:
                flow.response = http.Response.make(fault.abort.status, ABORT_BODY,
                                                   {"content-type": "text/plain", "x-meshcli-fault": "abort"})

    @staticmethod
    async def _delay(seconds: float, deadline: float | None) -> bool:
        """Sleep `seconds`, or until the deadline if that comes first; False when it did."""
        if deadline is not None and routing.now() + seconds >= deadline:
            await asyncio.sleep(max(0.0, deadline - routing.now()))
            return False
        await asyncio.sleep(seconds)
        return True

    # -- TCP -------------------------------------------------------------------------------
    def tcp_fault_for(self, context: Context) -> TcpFault | None:
        """The TCP fault for this connection, sampled once; ProtocolDetection asks before choosing a layer."""
        client = context.client
        if client.id not in self._tcp_decisions:
            self._tcp_decisions[client.id] = self._decide(context)
        decision = self._tcp_decisions[client.id]
        return decision[1] if decision else None

    def _decide(self, context: Context) -> tuple[str, TcpFault] | None:
        if context.client.proxy_mode.listen_port() == routing.INBOUND_PORT or not context.server.address:
            return None
        name = self.addresses.service_at(context.server.address[0])
        service = self.state.config.services.get(name) if name else None
        if service is None:
            return None
        fault = self.state.config.tcp_fault(service, self.state.identity.service)
        return (service.name, fault) if fault is not None and self.shares.pick(fault, fault.percent) else None

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        decision = self._tcp_decisions.get(flow.client_conn.id)
        if decision is None:
            return
        service, fault = decision
        flow.metadata[META_TCP_FAULT] = fault
        flow.metadata[META_TCP_PASSED] = 0
        flags_of(flow).append("DI" if fault.kind in TCP_DELAYS else "FI")
        logger.info("tcp fault %s on a connection from %s to %s (%s:%s)", fault.kind,
                    self.state.identity.workload, service, *flow.server_conn.address)
        if fault.kind == "reset":
            reset_connection(flow.client_conn)
        elif fault.kind == "limit-data" and fault.bytes <= 0:
            _close_connection(flow.client_conn)

    async def tcp_message(self, flow: tcp.TCPFlow) -> None:
        fault: TcpFault | None = flow.metadata.get(META_TCP_FAULT)
        if fault is None:
            return
        message = flow.messages[-1]
        if fault.kind == "blackhole":
            message.content = b""
        elif fault.kind == "latency":
            await asyncio.sleep(max(0.0, fault.latency + random.uniform(-fault.jitter, fault.jitter)))
        elif fault.kind == "bandwidth" and fault.rate > 0:
            await asyncio.sleep(len(message.content) / fault.rate)
        elif fault.kind == "limit-data":
            room = max(0, fault.bytes - flow.metadata[META_TCP_PASSED])
            message.content = message.content[:room]
            flow.metadata[META_TCP_PASSED] += len(message.content)
            if flow.metadata[META_TCP_PASSED] >= fault.bytes:
                # The truncated message is still sent: mitmproxy writes it before the close lands.
                _close_connection(flow.client_conn)
        elif fault.kind == "slicer" and fault.bytes > 0:
            message.content = await self._send_slices(flow, message, fault)

    @staticmethod
    async def _send_slices(flow: tcp.TCPFlow, message: tcp.TCPMessage, fault: TcpFault) -> bytes:
        """Write all but the last slice straight to the receiver, `latency` apart; return the last."""
        data = message.content
        destination = flow.server_conn if message.from_client else flow.client_conn
        while len(data) > fault.bytes:
            io = _connection_io(destination, flow.client_conn)
            if io is None or io.writer is None or io.writer.is_closing():
                return b""
            io.writer.write(data[:fault.bytes])
            data = data[fault.bytes:]
            await asyncio.sleep(fault.latency)
        return data
