"""An HTTP/1.1 client for the sidecar's own upstream exchanges, with a per-host pool.

Resilience (retries, timeouts) and Mirroring send whole, buffered requests with it;
h11 (which mitmproxy ships) does the HTTP framing. Failures are told apart the way
Envoy tells them apart, because retry policies and outlier detection depend on it:
ConnectFailure (nothing was sent) and Reset (the connection broke before a complete
response). Timeouts are the caller's business (asyncio.timeout around request());
a cancelled exchange closes its connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import h11

# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
# Also not copied into a request: Host is given, Content-Length is set from the buffered
# body, and the proxy already answered any Expect: 100-continue.
NOT_FORWARDED = frozenset({b"host", b"content-length", b"expect"})
READ_SIZE = 65536
MAX_IDLE_PER_HOST = 64


class UpstreamError(Exception):
    kind = "reset"


class ConnectFailure(UpstreamError):
    kind = "connect-failure"


class Reset(UpstreamError):
    kind = "reset"


class Unsendable(ValueError):
    """h11 refuses to write this request (e.g. a raw non-ASCII target, which mitmproxy
    accepts); nothing was sent, so the caller can leave it to mitmproxy's own forwarding."""


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # hop-by-hop headers removed, Content-Length as received
    body: bytes
    http_version: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # HTTP/2 only (gRPC's status)


def without_hop_by_hop(fields) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs minus hop-by-hop headers, including those the Connection header names."""
    listed = HOP_BY_HOP
    for name, value in fields:
        if name.lower() == b"connection":
            listed = listed | {token.strip().lower() for token in value.split(b",")}
    return [(name, value) for name, value in fields if name.lower() not in listed]


def request_headers(fields, authority: str, body: bytes, method: str) -> list[tuple[bytes, bytes]]:
    """What to send upstream: the app's headers with Host = authority and a Content-Length."""
    headers = [(n, v) for n, v in without_hop_by_hop(fields) if n.lower() not in NOT_FORWARDED]
    headers.insert(0, (b"host", authority.encode()))
    if body or method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers


def carries(request) -> bool:
    """Whether the sidecar's own clients can send a mitmproxy request: HTTP/1.x (this module)
    or HTTP/2 (upstream_h2), its body buffered (not streamed) and without trailers, not a
    protocol upgrade (WebSocket). The rest stays with mitmproxy."""
    return (request.http_version in ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0") and not request.stream
            and not request.trailers
            and request.raw_content is not None and "upgrade" not in request.headers)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.served = 0  # complete exchanges
        self.answered = False  # the current exchange received bytes

    def usable(self) -> bool:
        """Still open as far as we know (an idle connection the server closed reads EOF)."""
        return not self.writer.is_closing() and not self.reader.at_eof() and self.h11.our_state is h11.IDLE

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, head: h11.Request, body: bytes) -> Response:
        conn = self.h11
        self.answered = False
        data = conn.send(head)
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        response = None
        chunks = []
        try:
            self.writer.write(data)
            await self.writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await self.reader.read(READ_SIZE)
                    self.answered = self.answered or bool(chunk)
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.served += 1
                    return Response(response.status_code, response.reason,
                                    without_hop_by_hop(response.headers.raw_items()), b"".join(chunks),
                                    b"HTTP/" + response.http_version)
                elif isinstance(event, h11.ConnectionClosed):
                    raise Reset("connection closed before a complete response")
                # InformationalResponse (100 Continue): wait for the real one
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ...
            raise Reset(f"connection reset: {exc}") from None
        except h11.ProtocolError as exc:
            raise Reset(f"bad response: {exc}") from None

    def reusable(self, max_requests: int | None) -> bool:
        if max_requests and self.served >= max_requests:
            return False
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True


class Pool:
    """Keep-alive connections per (host, port). Many requests may share a host at once:
    each takes an idle connection or opens one, and gives it back when done."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[Connection]] = collections.defaultdict(collections.deque)
        self.opened = 0  # connections opened so far, for stats and tests

    async def request(self, host: str, port: int, method: str, target: str, headers: list, body: bytes,
                      max_requests_per_connection: int | None = None) -> Response:
        try:  # before taking a connection: a request h11 cannot write must not cost one
            head = h11.Request(method=method, target=target, headers=headers)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise Unsendable(f"cannot send {method} {target!r}: {exc}") from None
        key = (host, port)
        idle = self._idle[key]
        while idle:
            conn = idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._exchange(key, conn, head, body, max_requests_per_connection)
            except Reset:
                # The server closed the kept-alive connection as we reused it (it had
                # timed out its side) and did not answer: try once on a new connection.
                if conn.answered:
                    raise
                break
        conn = await self._connect(host, port)
        return await self._exchange(key, conn, head, body, max_requests_per_connection)

    async def _connect(self, host: str, port: int) -> Connection:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:  # refused, unreachable, DNS failure (socket.gaierror)
            raise ConnectFailure(f"cannot connect to {host}:{port}: {exc}") from None
        self.opened += 1
        return Connection(reader, writer)

    async def _exchange(self, key, conn: Connection, head: h11.Request, body: bytes, max_requests) -> Response:
        try:
            response = await conn.exchange(head, body)
        except BaseException:  # a reset, or cancelled by a timeout: the connection is in an unknown state
            conn.close()
            raise
        idle = self._idle[key]
        if conn.reusable(max_requests) and len(idle) < MAX_IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
