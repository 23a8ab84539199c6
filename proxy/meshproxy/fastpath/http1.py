"""HTTP/1.1 on the fast path: every request meets the policies, bodies stream both ways.

One `HttpProxy` serves every HTTP/1.x connection the listener hands it, in either
direction. A request goes through the policies in the order of policy/__init__.py:
outbound, routing picks the version, faults may answer or delay it, mirroring copies it,
resilience forwards it (retries, timeouts, circuit breaking); inbound it goes to the app
behind this sidecar. Telemetry records it either way.

Bodies: a request body of known length up to BUFFER_LIMIT is read whole first, so it can
be retried and mirrored; a larger or chunked one streams to the upstream as it arrives
and is tried once. Answers always stream: each piece goes to the caller as it arrives,
with the caller's own framing. A caller that goes away while it waits cancels its
upstream exchange at once (its circuit-breaker slot is freed by that).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import httptools

from meshproxy import upstream
from meshproxy.config import Version
from meshproxy.exchange import INBOUND, Exchange, LocalReply, Peer
from meshproxy.fastpath import tcp
from meshproxy.fastpath.pipeline import Pipeline
from meshproxy.policy.faults import RESET
from meshproxy.policy.routing import SOURCE_HEADER
from meshproxy.upstream import HOP_BY_HOP, NOT_FORWARDED, READ_SIZE, Reset, Unsendable

logger = logging.getLogger("meshproxy.http1")

BUFFER_LIMIT = 1 << 20  # request bodies kept for retries and mirroring (Envoy's per-request buffer)
STREAM_IDLE_TIMEOUT = 300.0  # an answer that sends nothing for this long is cut (Envoy's default)
LINGER_SECONDS = 2.0  # how long a closing connection still reads what the caller sends
SOURCE = SOURCE_HEADER.encode()
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
END = object()  # the end of a request's body


class BadRequest(Exception):
    pass


class CallerLeft(Exception):
    """The caller closed its connection in the middle of a request."""


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: str  # "1.1", "1.0"
    headers: list[tuple[bytes, bytes]]  # as received
    keep_alive: bool
    upgrade: bool
    length: int | None  # Content-Length; None: chunked or no body
    chunked: bool
    expect_continue: bool
    # The headers the proxy itself reads, found while parsing (each name lowered once).
    host: bytes | None = None
    content_type: bytes | None = None
    upgrade_to: bytes | None = None
    source: bytes | None = None  # the first SOURCE_HEADER
    forwarded: list[tuple[bytes, bytes]] | None = None  # the end-to-end headers to send on

    def fields(self) -> dict[str, str]:
        """Every header with a lower-case name, repeated ones joined: what route matches see
        (as mitmproxy shows them)."""
        fields: dict[str, str] = {}
        for name, value in self.headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
        return fields


# Headers a request is not sent on with: hop-by-hop ones, those the proxy sets itself, and
# the source header (only a sidecar says who calls: an app's own value is dropped).
NOT_SENT_ON = HOP_BY_HOP | NOT_FORWARDED | {SOURCE}


class Downstream:
    """The caller's connection (the app's, or a calling sidecar's), parsed by httptools:
    request heads, body pieces and ENDs, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.events: collections.deque = collections.deque()
        self.stash = first  # received, not yet parsed
        self.upgraded: bytes | None = None  # after an upgrade request: the bytes that followed it
        self.in_request = False  # a request's head was taken, not yet its END
        self.protocol = writer.transport.get_protocol()  # a listener.CallerProtocol, for those we serve
        self.task: asyncio.Task | None = None  # the task serving the connection
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        length = chunked = host = content_type = upgrade = source = connection = None
        expect = False
        forwarded = []
        for name, value in self._headers:
            lower = name.lower()
            if lower not in NOT_SENT_ON:
                forwarded.append((name, value))
            elif lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"host":
                host = host or value
            elif lower == b"expect":
                expect = value.lower() == b"100-continue"
            elif lower == b"upgrade":
                upgrade = value
            elif lower == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif lower == SOURCE and source is None:
                source = value
            if lower == b"content-type":
                content_type = value
        if connection is not None:  # the headers it names are hop-by-hop too
            listed = {token.strip().lower() for token in connection.split(b",")}
            forwarded = [(name, value) for name, value in forwarded if name.lower() not in listed]
        self.events.append(RequestHead(parser.get_method(), self._url, parser.get_http_version(), self._headers,
                                       parser.should_keep_alive(), parser.should_upgrade(),
                                       None if chunked else length, bool(chunked), expect,
                                       host, content_type, upgrade, source, forwarded))

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END)

    # reading
    async def next(self):
        """The next event, or None at the end of the connection."""
        while not self.events:
            if self.upgraded is not None:
                return None
            if self.stash:
                data, self.stash = self.stash, b""
            else:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    return None
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self.upgraded = data[exc.args[0]:]
            except (httptools.HttpParserError, ValueError) as exc:
                raise BadRequest(str(exc)) from None
        event = self.events.popleft()
        if event is END:
            self.in_request = False
        elif isinstance(event, RequestHead):
            self.in_request = True
        return event

    @property
    def drained(self) -> bool:
        """Every request the caller sent was read to its end: closing now loses it nothing."""
        return not self.in_request and not self.events and not self.stash

    async def body(self) -> AsyncIterator[bytes]:
        """The current request's body pieces, to its end."""
        while True:
            event = await self.next()
            if event is END:
                return
            if event is None:
                raise CallerLeft("the caller closed its connection before the end of its request")
            if isinstance(event, RequestHead):
                raise BadRequest("a request before the end of the previous one's body")
            yield event

    async def read_body(self) -> bytes:
        events = self.events
        if END in events:  # the whole body came with the head (or there is none): no generator
            pieces = []
            while (event := events.popleft()) is not END:
                if isinstance(event, RequestHead):
                    raise BadRequest("a request before the end of the previous one's body")
                pieces.append(event)
            self.in_request = False
            return b"".join(pieces)
        return b"".join([chunk async for chunk in self.body()])

    def write(self, data: bytes) -> None:
        self.writer.write(data)


async def _counted(pieces: AsyncIterator[bytes], exchange: Exchange) -> AsyncIterator[bytes]:
    async for piece in pieces:
        exchange.request_bytes += len(piece)
        yield piece


async def lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close as RFC 9112 9.6 asks: stop sending, then read (and drop) what the caller still
    sends for a little while. Closing with its bytes unread would reset the connection, and
    a reset can destroy an answer (a 413 before the body was read) the caller has not read yet."""
    try:
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                while await reader.read(READ_SIZE):
                    pass
    except (OSError, RuntimeError):  # TimeoutError is an OSError
        pass
    writer.close()


def _status_line(version: str, status: int, reason: bytes) -> bytes:
    return b"HTTP/%s %d %s\r\n" % (version.encode(), status, reason or b"-")


_HEADER_LINE = b"%s: %s\r\n".__mod__  # (name, value) -> its line, in C: no Python frame per header


def _encode_headers(headers) -> bytes:
    return b"".join(map(_HEADER_LINE, headers))


REASONS = {200: b"OK", 403: b"Forbidden", 404: b"Not Found", 500: b"Internal Server Error", 502: b"Bad Gateway",
           503: b"Service Unavailable", 504: b"Gateway Timeout"}


class HttpProxy:
    def __init__(self, pipeline: Pipeline, pool: upstream.Pool) -> None:
        self.pipeline, self.pool = pipeline, pool

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                    direction: str, destination: tuple[str, int], peer: Peer | None = None) -> None:
        """Every request of one connection, in order, until either side closes it (inbound,
        `peer` says who the caller proved to be)."""
        downstream = Downstream(reader, writer, first)
        downstream.task = asyncio.current_task()
        protocol = downstream.protocol
        marks = hasattr(protocol, "busy")  # a listener's CallerProtocol (which STRICT may revoke)
        try:
            while True:
                head = await downstream.next()
                if head is None:
                    break
                if not isinstance(head, RequestHead):
                    raise BadRequest("a request body without a request")
                if marks:
                    protocol.busy = True
                if not await self._one(downstream, head, direction, destination, peer):
                    break
                if marks:
                    protocol.busy = False
                    if protocol.revoked:  # no longer admitted: this was its last exchange
                        break
        except BadRequest as exc:
            logger.debug("bad request from the %s side: %s", direction, exc)
            self._write_reply(downstream, "1.1", LocalReply(400, b"bad request\n"), close=True)
        except (OSError, Reset, asyncio.IncompleteReadError):
            pass  # the caller went away
        finally:
            if downstream.drained or writer.is_closing():
                writer.close()
            else:
                await lingering_close(reader, writer)

    async def _one(self, downstream: Downstream, head: RequestHead, direction: str,
                   destination: tuple[str, int], peer: Peer | None) -> bool:
        """Proxy one request; True if the connection goes on."""
        authority = head.host or ("%s:%d" % destination).encode()
        exchange = Exchange(direction, head.method.decode(), authority.decode("latin-1"),
                            head.target.decode("latin-1"), "HTTP/" + head.version)
        content_type = head.content_type
        exchange.grpc = content_type is not None and content_type.startswith(b"application/grpc")
        headers = [(b"host", authority), *head.forwarded]
        inbound = direction == INBOUND
        source = head.source.decode("latin-1") if inbound and head.source is not None else None
        # Route matches are chosen on the client side only; inbound, tracing and tap read them too.
        fields = head.fields() if not inbound or self.pipeline.reads_inbound_headers else {}
        if head.upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", head.upgrade_to or b"")]
        try:
            version = self.pipeline.route(exchange, fields, headers, source, peer)
            host = version.host if version is not None else destination[0]
            return await self._forward(downstream, head, exchange, headers, host, destination[1])
        except CallerLeft:
            exchange.flags.append("DC")  # Envoy: downstream connection termination
            return False
        finally:
            self.pipeline.finish(exchange)

    async def _forward(self, downstream: Downstream, head: RequestHead, exchange: Exchange,
                       headers: list[tuple[bytes, bytes]], host: str, port: int) -> bool:
        has_body = head.chunked or bool(head.length)
        replayable = not has_body or (head.length is not None and head.length <= BUFFER_LIMIT)
        body: bytes | None = b""
        source = None
        if has_body and head.expect_continue:
            downstream.write(CONTINUE)
        if replayable:
            body = await downstream.read_body()  # also takes the END of a request without a body
            exchange.request_bytes = len(body)
        else:
            body, source = None, downstream.body()
            exchange.request_bytes = head.length or 0
            if head.length is None:  # chunked: counted as it goes up
                source = _counted(source, exchange)
        length = head.length if source is not None else None

        def attempt(to, max_requests):
            return self.pool.open(to.host, port, head.method, head.target, headers, body, source, length,
                                  max_requests)

        def send_copy(to, authority: str):
            copy = [(b"host", authority.encode())] + headers[1:]
            return self.pool.request(to.host, port, exchange.method, head.target, copy, body)

        work = self._exchange(downstream, head, exchange, replayable, attempt, send_copy, host, drained=source is None)
        if source is not None or head.upgrade:  # the caller's side is being read (or will be relayed)
            return await work
        keep = await self._unless_caller_leaves(downstream, work)
        if keep is None:
            exchange.flags.append("DC")  # Envoy: downstream connection termination
            return False
        return keep

    async def _exchange(self, downstream: Downstream, head: RequestHead, exchange: Exchange, replayable: bool,
                        attempt, send_copy, host: str, drained: bool) -> bool:
        """The request through the policies, and its answer back to the caller."""
        try:
            outcome = await self.pipeline.forward(exchange, replayable, attempt,
                                                  lambda: attempt(Version("", host), None), send_copy)
        except Unsendable as exc:
            outcome = LocalReply(400, str(exc).encode())
        if outcome is RESET:
            tcp.reset(downstream.writer)
            return False
        if isinstance(outcome, LocalReply):
            return self._answer_locally(downstream, head, exchange, outcome, drained=drained)
        try:
            if outcome.reply is not None:
                return self._answer_locally(downstream, head, exchange, outcome.reply, drained=True)
            return await self._stream_answer(downstream, head, exchange, outcome.answer)
        finally:
            outcome.done()

    @staticmethod
    async def _unless_caller_leaves(downstream: Downstream, work):
        """Run `work` (the exchange and the answer's streaming) unless the caller closes its
        connection first (then None): a silent stream must not keep a caller that left.
        The connection's protocol (listener.CallerProtocol) cancels this task when it does."""
        protocol = downstream.protocol
        if not hasattr(protocol, "on_close"):  # not one of the listener's connections
            return await work
        current = downstream.task
        left = False

        def caller_left() -> None:
            nonlocal left
            if not left:
                left = True
                current.cancel()

        if downstream.reader.at_eof():
            work.close()
            return None
        protocol.on_close = caller_left
        try:
            return await work
        except asyncio.CancelledError:
            if not left:
                raise
            current.uncancel()
            return None
        finally:
            protocol.on_close = None

    def _answer_locally(self, downstream: Downstream, head: RequestHead, exchange: Exchange, reply: LocalReply,
                        drained: bool) -> bool:
        exchange.answer_locally(reply)
        keep = head.keep_alive and drained and not head.upgrade
        self.pipeline.finish(exchange)
        self._write_reply(downstream, head.version, reply, close=not keep, head_only=head.method == b"HEAD")
        return keep

    @staticmethod
    def _write_reply(downstream: Downstream, version: str, reply: LocalReply, close: bool,
                     head_only: bool = False) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(reply.body))]
        headers += [(n.encode(), v.encode()) for n, v in reply.headers]
        if close:
            headers.append((b"connection", b"close"))
        downstream.write(_status_line(version, reply.status, REASONS.get(reply.status, b"")) + _encode_headers(headers)
                         + b"\r\n" + (b"" if head_only else reply.body))

    async def _stream_answer(self, downstream: Downstream, head: RequestHead, exchange: Exchange,
                             answer: upstream.Answer) -> bool:
        exchange.status = answer.status
        exchange.response_bytes = answer.length or 0  # without a length: counted as it streams
        writer = downstream.writer
        headers = answer.headers
        if answer.upgraded:
            upgrade = [(n, v) for n, v in answer.raw_headers if n.lower() in (b"connection", b"upgrade")]
            writer.write(_status_line(head.version, answer.status, answer.reason) + _encode_headers(headers + upgrade)
                         + b"\r\n")
            conn = answer.detach()
            protocol = downstream.protocol
            if getattr(protocol, "revoked", False):  # STRICT came during the upgrade: no relay
                conn.close()
                return False
            if hasattr(protocol, "busy"):
                protocol.busy = False  # a relay now, with no exchange to end after: STRICT closes it at once
            error = await tcp.relay((downstream.reader, writer), (conn.reader, conn.writer),
                                    client_first=(downstream.upgraded or b"") + downstream.stash,
                                    server_first=bytes(conn.buffer))
            exchange.error = error
            return False
        keep = head.keep_alive
        chunked = False
        if not answer.complete and answer.length is None:
            if head.version == "1.1":
                chunked = True
                headers = headers + [(b"transfer-encoding", b"chunked")]
            else:
                keep = False  # an HTTP/1.0 caller reads to the end of the connection
        if not keep:
            headers = headers + [(b"connection", b"close")]
        head_bytes = _status_line(head.version, answer.status, answer.reason) + _encode_headers(headers) + b"\r\n"
        # The request is counted just before the last bytes of its answer go out, so a caller
        # that got the whole answer sees it counted: before the end of a Content-Length body
        # (its last piece), the chunked terminator, or the head of an answer without a body.
        remaining = answer.length if not answer.complete else None
        try:
            if remaining is not None and (body := answer.body_at_hand()) is not None:
                self.pipeline.finish(exchange)  # the whole answer goes out in this one send
                writer.write(head_bytes + body)
                return keep
            if answer.complete:
                self.pipeline.finish(exchange)
            if answer.complete or remaining is None:
                # Now: a stream's first piece may be long in coming. A body of known length
                # goes out with its head instead (one send, one wake-up at the caller): apps
                # that write the two separately would otherwise double every hop's packets.
                writer.write(head_bytes)
                head_bytes = b""
            async for chunk in answer.chunks(STREAM_IDLE_TIMEOUT):
                if answer.length is None:
                    exchange.response_bytes += len(chunk)
                if chunked:
                    chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                elif remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        self.pipeline.finish(exchange)
                writer.write(head_bytes + chunk if head_bytes else chunk)  # one send for head and body
                head_bytes = b""
                await writer.drain()
        except (Reset, TimeoutError) as exc:
            exchange.error = str(exc) or "stream idle timeout"
            exchange.flags.append("UPE")  # Envoy: upstream protocol error / reset mid-stream
            return False  # the caller saw part of an answer: only closing tells it so
        except BaseException:
            answer.discard()
            raise
        self.pipeline.finish(exchange)
        if head_bytes or chunked:  # an empty body that was not complete at the head
            writer.write(head_bytes + (b"0\r\n\r\n" if chunked else b""))
        return keep
