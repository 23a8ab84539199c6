"""An HTTP/1.1 client for the sidecar's upstream exchanges, with a per-host pool.

`Pool.open()` sends a request (its body whole, or streamed from the caller) and returns
the `Answer` at its response headers; the body follows through `Answer.chunks()` as it
arrives, so a stream's first byte is never held back and memory does not grow with a
body. `Pool.request()` is the buffered form (mitmproxy's adapters, mirror copies).
httptools (llhttp) parses responses. Connections are kept alive per (host, port) and
reused whatever the app does; an idle one is closed after IDLE_TIMEOUT.

Failures are told apart the way Envoy tells them apart, because retry policies and
outlier detection depend on it: ConnectFailure (nothing was sent) and Reset (the
connection broke before a complete response). Timeouts are the caller's business
(asyncio.timeout around open()); an exchange that is cancelled or given up closes its
connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import httptools

from meshproxy import streams

# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
# Also not copied into a request: Host is given, Content-Length is set from the body,
# and the sidecar answers any Expect: 100-continue itself.
NOT_FORWARDED = frozenset({b"host", b"content-length", b"expect"})
READ_SIZE = 65536
MAX_HEAD = 65536  # bytes of a response's status line and headers
MAX_IDLE_PER_HOST = 64
IDLE_TIMEOUT = 30.0  # seconds an unused pooled connection is kept
CONNECT_TIMEOUT = 5.0  # Envoy's default connect_timeout
BODYLESS_STATUSES = frozenset({204, 304})


class UpstreamError(Exception):
    kind = "reset"


class ConnectFailure(UpstreamError):
    kind = "connect-failure"


class Reset(UpstreamError):
    kind = "reset"


class Unsendable(ValueError):
    """This request cannot be written as HTTP/1.1 (e.g. a raw non-ASCII target, which
    mitmproxy accepts); nothing was sent, so the caller can leave it to mitmproxy."""


@dataclass
class Response:
    """A whole (buffered) answer."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # hop-by-hop headers removed, Content-Length as received
    body: bytes
    http_version: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # HTTP/2 only (gRPC's status)

    def discard(self) -> None:
        pass  # nothing left on the wire


def without_hop_by_hop(fields) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs minus hop-by-hop headers, including those the Connection header names."""
    listed = HOP_BY_HOP
    for name, value in fields:
        if name.lower() == b"connection":
            listed = listed | {token.strip().lower() for token in value.split(b",")}
    return [(name, value) for name, value in fields if name.lower() not in listed]


def request_headers(fields, authority: str, body: bytes, method: str) -> list[tuple[bytes, bytes]]:
    """What to send upstream for a buffered body: the app's headers with Host = authority
    and a Content-Length."""
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


VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")
COMMON_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})


def encode_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    # Empty, spaces, controls or non-ASCII cannot be sent; the common methods need no look.
    if method not in COMMON_METHODS and VISIBLE_ASCII.fullmatch(method) is None:
        raise Unsendable(f"cannot send method {method!r} as HTTP/1.1")
    if VISIBLE_ASCII.fullmatch(target) is None:
        raise Unsendable(f"cannot send target {target!r} as HTTP/1.1")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b":" in name:
            raise Unsendable(f"cannot send header {name!r} as HTTP/1.1")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


BodySource = AsyncIterator[bytes]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]  # or one streams.Stream twice (same methods)
# (host, port) -> the connecting coroutine when that destination gets mesh mTLS (meshproxy/mtls.py), else None.
Secure = Callable[[str, int], Awaitable[Streams] | None]
PoolKey = tuple[str, int, bool]  # (host, port, over mTLS)


def pool_key(host: str, port: int, secure: Secure | None, secures: Callable[[str], bool] | None) -> PoolKey:
    """Connections are pooled per (host, port) and per security: when a reload turns mTLS on
    (or off) for a host, its requests move to new connections at once - a kept-alive
    plaintext connection is never reused once the mesh says mTLS."""
    return host, port, secure is not None and (secures is None or secures(host))


class Connection:
    __slots__ = ("reader", "writer", "key", "served", "answered", "buffer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple[str, int]) -> None:
        self.reader, self.writer, self.key = reader, writer, key
        self.served = 0  # complete exchanges
        self.answered = False  # the current exchange received bytes
        self.buffer = bytearray()  # received, not yet parsed
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Still open as far as we know (an idle connection the server closed reads EOF)."""
        return (not self.writer.is_closing() and not self.reader.at_eof() and not self.buffer
                and time.monotonic() - self.idle_since < IDLE_TIMEOUT)

    def close(self) -> None:
        self.writer.close()

    async def send(self, head: bytes, body: bytes | None, source: BodySource | None, chunked: bool) -> None:
        self.answered = False
        try:
            if source is None:
                self.writer.write(head + body if body else head)
            else:
                self.writer.write(head)
                async for chunk in source:
                    if chunk:
                        self.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await self.writer.drain()
                if chunked:
                    self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ...
            raise Reset(f"connection reset: {exc}") from None

    async def fill(self) -> bool:
        """Read more into the buffer; False at EOF."""
        try:
            data = await self.reader.read(READ_SIZE)
        except OSError as exc:
            raise Reset(f"connection reset: {exc}") from None
        if data:
            self.answered = True
            self.buffer += data
        return bool(data)


class Answer:
    """A response at its headers; the body is still on the wire (see chunks())."""

    def __init__(self, pool: Pool, conn: Connection, method: bytes, max_requests: int | None) -> None:
        self.pool, self.conn, self.method, self.max_requests = pool, conn, method, max_requests
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # hop-by-hop ones removed
        self.raw_headers: list[tuple[bytes, bytes]] = []  # as received (an upgrade's Connection, Upgrade)
        self.http_version = b"HTTP/1.1"
        self.length: int | None = None  # Content-Length, when the server framed the body so
        self.keep_alive = True
        self.upgraded = False  # 101 Switching Protocols: the connection now belongs to the caller
        self.complete = False
        self._pending: collections.deque[bytes] = collections.deque()
        self._parser = httptools.HttpResponseParser(self)
        self._extra = False  # bytes after the message: the connection cannot be reused
        self._done = False
        self.sending: asyncio.Future | None = None  # a streamed request body still going up (full duplex)

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # trailers of a chunked body are dropped
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._pending.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def on_message_begin(self) -> None:
        if self.status:
            self._extra = True

    # reading
    def _parse_head(self) -> None:
        buffer = self.conn.buffer
        end = buffer.find(b"\r\n\r\n") + 4
        head = bytes(buffer[:end])
        del buffer[:end]
        try:
            self._parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
        except httptools.HttpParserError as exc:
            raise Reset(f"bad response: {exc}") from None
        self.http_version = b"HTTP/" + self._parser.get_http_version().encode()
        self.keep_alive = self._parser.should_keep_alive()
        framing = {}
        for name, value in self.headers:
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding"):
                framing[lower] = value
        if b"transfer-encoding" not in framing and b"content-length" in framing:
            self.length = int(framing[b"content-length"])
        self.raw_headers = self.headers
        self.headers = without_hop_by_hop(self.headers)
        if (self.method == b"HEAD" or self.status in BODYLESS_STATUSES or self.upgraded
                or 100 <= self.status < 200):
            self.complete = True  # no body, whatever the headers say
        elif not framing:
            self.keep_alive = False  # the body ends when the connection does

    async def chunks(self, idle_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives (decoded from chunked framing); then the connection goes
        back to the pool. Raises Reset if the server breaks off, TimeoutError if it sends
        nothing for `idle_timeout` seconds."""
        conn = self.conn
        try:
            self._feed_buffered()
            while True:
                while self._pending:
                    yield self._pending.popleft()
                if self.complete:
                    break
                try:
                    async with asyncio.timeout(idle_timeout):
                        data = await conn.reader.read(READ_SIZE)
                except TimeoutError:  # an OSError too: not a reset but the caller's idle timeout
                    raise
                except OSError as exc:
                    raise Reset(f"connection reset: {exc}") from None
                if not data:
                    if not self.keep_alive:  # close-delimited: this is the end
                        self.complete = True
                        continue
                    raise Reset("connection closed before the end of the response")
                self._feed(data)
        except BaseException:
            self.discard()
            raise
        self._finish()

    def body_at_hand(self) -> bytes | None:
        """The whole body, when it came with the head (Content-Length framing): the answer
        ends here, without a generator or a wait - the common small answer. Else None, and
        chunks() goes on from what was parsed."""
        if self.complete or self.length is None or len(self.conn.buffer) < self.length:
            return None
        try:
            self._feed_buffered()
        except Reset:
            self.discard()
            raise
        if not self.complete:
            return None
        body = b"".join(self._pending)
        self._pending.clear()
        self._finish()
        return body

    def _feed_buffered(self) -> None:
        """Parse what was read past the head (with it, or before the body was asked for)."""
        conn = self.conn
        if conn.buffer and not self.complete:
            self._feed(bytes(conn.buffer))
            conn.buffer.clear()

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise Reset(f"bad response body: {exc}") from None
            self._extra = True

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self.conn
        conn.served += 1
        sent = self.sending is None or (self.sending.done() and not self.sending.cancelled()
                                        and self.sending.exception() is None)
        if self.sending is not None and not self.sending.done():
            self.sending.cancel()  # answered before the whole body went up: the rest is not wanted
        reusable = (sent and self.keep_alive and not self._extra and not self.upgraded and not conn.buffer
                    and not (self.max_requests and conn.served >= self.max_requests))
        self.pool.give_back(conn, reusable)

    def discard(self) -> None:
        """Not forwarded (a retry follows) or given up: close its connection."""
        if not self._done:
            self._done = True
            if self.sending is not None:
                self.sending.cancel()
            self.conn.close()

    def detach(self) -> Connection:
        """An upgraded connection (101): the caller relays it from now on."""
        self._done = True
        return self.conn


class Pool:
    """Keep-alive connections per (host, port). Many requests may share a host at once:
    each takes an idle connection or opens one, and gives it back when done."""

    def __init__(self, on_connect: Callable[[str, int], None] | None = None, secure: Secure | None = None,
                 secures: Callable[[str], bool] | None = None) -> None:
        self._idle: dict[PoolKey, collections.deque[Connection]] = collections.defaultdict(collections.deque)
        self.opened = 0  # connections opened so far, for stats and tests
        self.on_connect = on_connect
        self.secure = secure  # opens a new connection with mesh mTLS (or says None: plaintext)
        self.secures = secures  # whether calls to a host go over mTLS now (see pool_key)
        self._sweep: asyncio.TimerHandle | None = None  # closes connections idle for IDLE_TIMEOUT

    async def open(self, host: str, port: int, method: str | bytes, target: str | bytes,
                   headers: list[tuple[bytes, bytes]], body: bytes | None = b"", source: BodySource | None = None,
                   length: int | None = None, max_requests: int | None = None) -> Answer:
        """Send a request and return its answer at the response headers. `headers` carry
        Host and no framing: this adds Content-Length (a whole `body`, or a `source` of
        known `length`) or chunked framing (a `source` of unknown length)."""
        method = method.encode() if isinstance(method, str) else method
        target = target.encode("utf-8", "surrogateescape") if isinstance(target, str) else target
        if source is None:
            size = len(body or b"")
            framing = [(b"content-length", b"%d" % size)] if size or method in (b"POST", b"PUT", b"PATCH") else []
        else:
            framing = [(b"content-length", b"%d" % length)] if length is not None \
                else [(b"transfer-encoding", b"chunked")]
        head = encode_head(method, target, headers + framing)  # before a connection: Unsendable costs none
        key = pool_key(host, port, self.secure, self.secures)
        idle = self._idle[key]
        while idle:
            conn = idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._exchange(conn, method, head, body, source, length, max_requests)
            except Reset:
                # The server closed the kept-alive connection as we reused it and did not
                # answer: once more on a new connection, if that cannot do harm.
                if conn.answered or source is not None or method not in IDEMPOTENT:
                    raise
                break
        conn = await self._connect(key)
        return await self._exchange(conn, method, head, body, source, length, max_requests)

    async def request(self, host: str, port: int, method: str, target: str, headers: list, body: bytes,
                      max_requests_per_connection: int | None = None) -> Response:
        """The buffered exchange: `headers` as request_headers() makes them (framing included)."""
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        answer = await self.open(host, port, method, target, headers, body, max_requests=max_requests_per_connection)
        content = await answer.read()
        return Response(answer.status, answer.reason, answer.headers, content, answer.http_version)

    async def _connect(self, key: PoolKey) -> Connection:
        host, port, secured = key
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                opening = self.secure(host, port) if secured else None
                reader, writer = await (opening or streams.open_connection(host, port))
        except TimeoutError:
            raise ConnectFailure(f"no connection to {host}:{port} within {CONNECT_TIMEOUT} s") from None
        except OSError as exc:  # refused, unreachable, DNS failure (socket.gaierror)
            raise ConnectFailure(f"cannot connect to {host}:{port}: {exc}") from None
        self.opened += 1
        if self.on_connect is not None:
            self.on_connect(host, port)
        return Connection(reader, writer, key)

    async def _exchange(self, conn: Connection, method: bytes, head: bytes, body: bytes | None,
                        source: BodySource | None, length: int | None, max_requests: int | None) -> Answer:
        answer = Answer(self, conn, method, max_requests)
        sending = None
        try:
            if source is None:
                await conn.send(head, body, None, chunked=False)
            else:
                # Full duplex: a server may answer (a 413, or a stream of its own) before it read the
                # whole body, so the body goes up in its own task while the answer is awaited.
                sending = asyncio.ensure_future(conn.send(head, None, source, chunked=length is None))
            while True:
                while conn.buffer.find(b"\r\n\r\n") < 0:
                    if len(conn.buffer) > MAX_HEAD:
                        raise Reset("response head too large")
                    if not await (conn.fill() if sending is None else self._fill(conn, sending)):
                        raise Reset("connection closed before a complete response")
                answer._parse_head()
                if 100 <= answer.status < 200 and not answer.upgraded:
                    answer = Answer(self, conn, method, max_requests)  # 100 Continue: the real one follows
                    continue
                break
        except BaseException:  # a reset, or cancelled by a timeout: the connection is in an unknown state
            if sending is not None:
                sending.cancel()
            conn.close()
            raise
        answer.sending = sending
        if sending is not None:
            sending.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved: answered
        if answer.complete and not answer.upgraded:
            answer._finish()
        return answer

    @staticmethod
    async def _fill(conn: Connection, sending: asyncio.Future) -> bool:
        """conn.fill(), unless the body being sent up meanwhile fails first (then its error)."""
        if sending.done():
            if not sending.cancelled() and sending.exception() is not None:
                raise sending.exception()
            return await conn.fill()
        reading = asyncio.ensure_future(conn.fill())
        await asyncio.wait((reading, sending), return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            if sending.exception() is None:
                return await reading  # the whole body went up: now the answer
            reading.cancel()
            await asyncio.wait((reading,))
            raise sending.exception()
        return reading.result()

    def give_back(self, conn: Connection, reusable: bool) -> None:
        idle = self._idle[conn.key]
        if reusable and len(idle) < MAX_IDLE_PER_HOST and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            idle.append(conn)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(IDLE_TIMEOUT / 2, self._close_expired)
        else:
            conn.close()

    def _close_expired(self) -> None:
        """Close the connections idle for IDLE_TIMEOUT (so at most 1.5 times that): one timer
        for the pool while any connection is idle, not one per request given back."""
        self._sweep = None
        expired_before = time.monotonic() - IDLE_TIMEOUT
        for key, idle in list(self._idle.items()):
            for conn in [conn for conn in idle if conn.idle_since <= expired_before]:
                idle.remove(conn)
                conn.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(IDLE_TIMEOUT / 2, self._close_expired)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
