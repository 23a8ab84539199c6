"""The sidecar's listeners: accept on 15001 (the app's outbound calls) and 15006 (calls to
the app), find each connection's original destination (iptables REDIRECT keeps it in
SO_ORIGINAL_DST), decide what it speaks and hand it to the right path.

Nothing is connected upstream before that decision. A connection to a service with a TCP
fault is relayed raw with its toxic whatever it speaks; else HTTP/1.1 goes to
http1.HttpProxy, HTTP/2 with prior knowledge to http2.H2Proxy, TLS the app started itself
is handed to mitmproxy (handover.py), and anything else is relayed raw. A client that sends nothing for DETECT_TIMEOUT (a protocol where the
server speaks first) is relayed raw too.

With mesh mTLS (meshproxy/mtls.py, the `gate`), a plaintext connection to the app is first
admitted or refused by the service's mode, and the mTLS server hands its decrypted
connections to serve() with the caller's proven identity and the protocol ALPN named.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import time
from typing import Callable

from meshproxy import streams
from meshproxy.config import INBOUND_PORT, OUTBOUND_PORT, SecurityPolicy
from meshproxy.exchange import INBOUND, OUTBOUND, Peer
from meshproxy.fastpath import sniff, tcp
from meshproxy.fastpath.handover import Mitmproxy
from meshproxy.fastpath.http1 import HttpProxy
from meshproxy.fastpath.http2 import H2Proxy
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.faults import Toxic, TcpFaults
from meshproxy.policy.telemetry import Telemetry

logger = logging.getLogger("meshproxy.listener")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
DETECT_TIMEOUT = 0.1  # seconds to wait for a client's first bytes (Istio's protocol detection timeout)
READ_SIZE = 65536
HANDED_OVER = ("tls",)


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the app meant to connect before iptables redirected it (IPv4)."""
    data = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, = struct.unpack_from("!H", data, 2)
    return socket.inet_ntoa(data[4:8]), port


async def first_bytes(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Read until the protocol is known (or DETECT_TIMEOUT passes): (bytes, kind)."""
    data = b""
    loop = asyncio.get_running_loop()
    until = loop.time() + DETECT_TIMEOUT
    while True:
        try:
            async with asyncio.timeout_at(until):
                chunk = await reader.read(READ_SIZE)
        except TimeoutError:
            return data, "tcp"
        if not chunk:
            return data, "closed" if not data else "tcp"
        data += chunk
        kind = sniff.classify(data)
        if kind is not None:
            return data, kind


class CallerProtocol(streams.Stream):
    """A caller's connection, telling `on_close` (while set) that the caller closed or
    reset it: an exchange in flight is cancelled at once, with no task watching.

    `busy` is set while an HTTP/1 exchange is under way and `revoked` when the caller's
    admission was withdrawn (its service turned STRICT): the connection then ends after that
    exchange (see mtls.MeshTls.revoke_plaintext)."""

    on_close: Callable[[], None] | None = None
    busy = False
    revoked = False

    def eof_received(self) -> bool:
        keep_open = super().eof_received()
        if self.on_close is not None:
            self.on_close()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_close is not None:
            self.on_close()


class Listener:
    def __init__(self, http: HttpProxy, h2: H2Proxy, tcp_faults: TcpFaults, telemetry: Telemetry, access_log: AccessLog,
                 mitmproxy: Mitmproxy,
                 destination_of: Callable[[socket.socket], tuple[str, int]] = original_destination) -> None:
        self.http, self.h2, self.tcp_faults, self.telemetry, self.mitmproxy = http, h2, tcp_faults, telemetry, mitmproxy
        self.access_log = access_log
        self.destination_of = destination_of  # tests set their own: there is no iptables on loopback
        self.servers: list[asyncio.base_events.Server] = []
        self.gate = None  # mtls.MeshTls: admits plaintext callers, authorizes connections, opens mTLS upstream

    async def start(self, host: str = "0.0.0.0", outbound_port: int = OUTBOUND_PORT,
                    inbound_port: int = INBOUND_PORT) -> None:
        loop = asyncio.get_running_loop()
        for port, direction in ((outbound_port, OUTBOUND), (inbound_port, INBOUND)):
            accept = functools.partial(self._accept, direction)

            self.servers.append(await loop.create_server(functools.partial(CallerProtocol, accept), host, port,
                                                         reuse_address=True, backlog=1024))

    def listening(self) -> bool:
        return len(self.servers) == 2 and all(server.is_serving() for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.close()

    async def _accept(self, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            destination = self.destination_of(writer.get_extra_info("socket"))
        except OSError:  # not redirected: someone called the listener itself
            writer.close()
            return
        try:
            await self.serve(direction, destination, reader, writer)
        except Exception:  # survived: one connection's trouble must never reach the listener
            logger.exception("%s connection to %s:%s failed", direction, *destination)
        finally:
            writer.close()

    async def serve(self, direction: str, destination: tuple[str, int], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, peer: Peer | None = None, kind: str | None = None) -> None:
        """One connection; `peer` and `kind` are known for one the mTLS server decrypted."""
        if direction == OUTBOUND and (decision := self.tcp_faults.for_connection(destination[0])) is not None:
            await self._relay(direction, destination, reader, writer, b"", Toxic(decision[1]))
            return
        if direction == INBOUND and peer is None and self.gate is not None:
            peer = self.gate.plaintext_peer(writer, destination)
            if peer is None:  # STRICT: refused
                tcp.reset(writer)
                return
        data = b""
        if kind is None:
            data, kind = await first_bytes(reader)
        if kind == "http1":
            await self.http.serve(reader, writer, data, direction, destination, peer)
        elif kind == "h2c":
            await self.h2.serve(reader, writer, data, direction, destination, peer)
        elif peer is not None and not self.gate.allows_connection(peer, destination):
            tcp.reset(writer)
        elif kind in HANDED_OVER:
            server = await self.mitmproxy.connect(direction, destination)
            await tcp.relay((reader, writer), server, client_first=data)
        elif kind == "tcp":
            await self._relay(direction, destination, reader, writer, data, None, peer)

    async def _relay(self, direction: str, destination: tuple[str, int], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, data: bytes, toxic: Toxic | None, peer: Peer | None = None) -> None:
        address = peer.address if peer is not None and peer.address else (writer.get_extra_info("peername") or [None])[0]
        if peer is not None:
            security = peer.security_policy
        else:
            secured = direction == OUTBOUND and self.gate is not None and self.gate.secures_tcp(destination[0])
            security = SecurityPolicy.MUTUAL_TLS.value if secured else SecurityPolicy.NONE.value
        labels = self.telemetry.tcp_labels(direction, "%s:%d" % destination, security, peer_ip=address)
        self.telemetry.tcp_opened(labels)
        started = time.time()
        counted = [0, 0]  # bytes from the server, from the client (indexed by from_client)
        error = None

        def on_bytes(from_client: bool, size: int) -> None:
            self.telemetry.tcp_bytes(labels, from_client, size)
            counted[from_client] += size
        try:
            at_start = toxic.at_start() if toxic is not None else None
            if at_start == "reset":
                tcp.reset(writer)
                return
            if at_start == "close":
                return
            try:
                opening = self.gate.open_tcp(destination) if direction == OUTBOUND and self.gate is not None else None
                server = await (opening or streams.open_connection(*destination))
            except OSError as exc:
                error = f"cannot connect: {exc}"
                tcp.reset(writer)
                return
            error = await tcp.relay((reader, writer), server, client_first=data, toxic=toxic, on_bytes=on_bytes)
        finally:
            flag = toxic.flag if toxic is not None else "-"
            self.telemetry.tcp_closed(labels, flag)
            self.access_log.tcp(direction, "%s:%d" % destination, started, counted[1], counted[0], error, flag,
                                peer.principal if peer is not None else "", security)
