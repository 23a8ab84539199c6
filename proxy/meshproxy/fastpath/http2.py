"""HTTP/2 with prior knowledge (h2c, e.g. gRPC) on the fast path, streamed both ways.

`H2Proxy.serve()` speaks HTTP/2 to the caller (the h2 library, server side) and runs
each stream as its own task through the same Pipeline as HTTP/1.1; upstream it speaks
HTTP/2 too (upstream_h2), so an h2c call reaches the server as h2c. Request bodies go
upstream as they arrive; a copy is kept up to BUFFER_LIMIT so the request can still be
retried when its body ended within that (ReplayableBody). Answers stream: each DATA frame
goes to the caller as it arrives, trailers (gRPC's status) at the end. Flow control is
honoured: what the caller sends is acknowledged as the upstream takes it, what the
upstream sends is acknowledged as the caller's window takes it. A stream the caller resets
cancels its upstream exchange (freeing its circuit-breaker slot); other streams go on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from meshproxy import upstream_h2
from meshproxy.config import Version
from meshproxy.exchange import INBOUND, Exchange, LocalReply, Peer, grpc_status
from meshproxy.fastpath.pipeline import Pipeline
from meshproxy.policy.faults import RESET
from meshproxy.policy.routing import SOURCE_HEADER
from meshproxy.upstream import READ_SIZE, Reset

logger = logging.getLogger("meshproxy.http2")

SERVER_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                          normalize_outbound_headers=False, validate_inbound_headers=False)
BUFFER_LIMIT = 1 << 20  # request bytes kept for a retry
STREAM_IDLE_TIMEOUT = 300.0
SOURCE = SOURCE_HEADER.encode()


class CallerStream:
    """One stream of the caller's connection: its request headers, body as it arrives."""

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.data: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = False
        self.reset = False
        self.arrived = asyncio.Event()
        self.window = asyncio.Event()  # the caller granted credit
        self.task: asyncio.Task | None = None

    def pseudo(self, name: bytes) -> bytes:
        return next((v for n, v in self.headers if n == name), b"")


class ReplayableBody:
    """A request body read from the caller once and kept (up to BUFFER_LIMIT) for retries."""

    def __init__(self, caller: CallerConnection, stream: CallerStream) -> None:
        self.caller, self.stream = caller, stream
        self.kept: list[bytes] = []
        self.size = 0
        self.overflowed = False
        self.read_to_end = stream.ended
        if stream.ended:  # all there already (a unary call): taken whole, sent whole
            while stream.data:
                data, size = stream.data.popleft()
                caller.acknowledge(stream.stream_id, size)
                self.kept.append(data)

    def replayable(self) -> bool:
        return not self.overflowed and self.read_to_end

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.overflowed:
            raise Reset("request body no longer kept")
        for chunk in list(self.kept):
            yield chunk
        async for chunk in self.caller.body(self.stream):
            self.size += len(chunk)
            if self.size <= BUFFER_LIMIT:
                self.kept.append(chunk)
            else:
                self.overflowed = True
                self.kept.clear()
            yield chunk
        self.read_to_end = True


class CallerConnection:
    """The server side of one HTTP/2 connection from the app (or a calling sidecar)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(SERVER_CONFIG)
        self.streams: dict[int, CallerStream] = {}
        self.closed = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def serve(self, first: bytes, handle) -> None:
        self.h2.initiate_connection()
        self.flush()
        data = first
        try:
            while True:
                if data:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as exc:
                        logger.debug("bad HTTP/2 from the caller: %s", exc)
                        self.flush()
                        return
                    for event in events:
                        self._dispatch(event, handle)
                    self.flush()
                try:
                    data = await self.reader.read(READ_SIZE)
                except OSError:
                    return
                if not data:
                    return
        finally:
            self.closed = True
            for stream in self.streams.values():
                if stream.task is not None:
                    stream.task.cancel()
                stream.arrived.set()
                stream.window.set()

    def _dispatch(self, event, handle) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.RequestReceived):
            stream = self.streams[event.stream_id] = CallerStream(event.stream_id, event.headers)
            stream.task = asyncio.ensure_future(handle(self, stream))
            stream.task.add_done_callback(lambda task, sid=event.stream_id: self.streams.pop(sid, None))
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.data.append((event.data, event.flow_controlled_length))
                stream.arrived.set()
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
            stream.arrived.set()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = True
            if stream.task is not None:
                stream.task.cancel()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            targets = self.streams.values() if getattr(event, "stream_id", 0) == 0 else [stream] if stream else []
            for waiting in targets:
                waiting.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except (h2.exceptions.StreamClosedError, KeyError):
                return
            self.flush()

    async def body(self, stream: CallerStream) -> AsyncIterator[bytes]:
        while True:
            while stream.data:
                data, size = stream.data.popleft()
                self.acknowledge(stream.stream_id, size)
                if data:
                    yield data
            if stream.ended:
                return
            if self.closed or stream.reset:
                raise Reset("the caller went away")
            stream.arrived.clear()
            await stream.arrived.wait()

    def send_headers(self, stream: CallerStream, headers, end: bool = False) -> None:
        self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        self.flush()

    async def send_data(self, stream: CallerStream, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            if self.closed or stream.reset:
                raise Reset("the caller went away")
            window = self.h2.local_flow_control_window(stream.stream_id)
            if window <= 0:
                stream.window.clear()
                await stream.window.wait()
                continue
            size = min(window, self.h2.max_outbound_frame_size, len(data) - sent)
            self.h2.send_data(stream.stream_id, bytes(view[sent:sent + size]),
                              end_stream=end and sent + size == len(data))
            sent += size
            self.flush()
            await self.writer.drain()
        if end and not data:
            self.h2.end_stream(stream.stream_id)
            self.flush()

    def reset_stream(self, stream: CallerStream, code=h2.errors.ErrorCodes.CANCEL) -> None:
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except h2.exceptions.StreamClosedError:
            return
        self.flush()


class H2Proxy:
    def __init__(self, pipeline: Pipeline, pool: upstream_h2.Pool) -> None:
        self.pipeline, self.pool = pipeline, pool

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                    direction: str, destination: tuple[str, int], peer: Peer | None = None) -> None:
        caller = CallerConnection(reader, writer)

        async def handle(conn: CallerConnection, stream: CallerStream) -> None:
            try:
                await self._one(conn, stream, direction, destination, peer)
            except (Reset, OSError):
                conn.reset_stream(stream)
            except Exception:
                logger.exception("HTTP/2 stream failed")
                conn.reset_stream(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)

        await caller.serve(first, handle)

    async def _one(self, caller: CallerConnection, stream: CallerStream, direction: str,
                   destination: tuple[str, int], peer: Peer | None) -> None:
        authority = stream.pseudo(b":authority") or stream.pseudo(b"host") or b"%s:%d" % (
            destination[0].encode(), destination[1])
        exchange = Exchange(direction, stream.pseudo(b":method").decode(), authority.decode("latin-1"),
                            stream.pseudo(b":path").decode("latin-1"), "HTTP/2.0")
        fields: dict[str, str] = {}
        source = None
        kept = []
        for name, value in stream.headers:
            if name.startswith(b":"):
                continue
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
            if key == SOURCE_HEADER:  # only a sidecar says who calls: an app's own value is dropped
                if direction == INBOUND and source is None:
                    source = text
            else:
                kept.append((name, value))
        exchange.grpc = fields.get("content-type", "").startswith("application/grpc")
        headers = upstream_h2.forwarded_headers(kept, authority)
        try:
            version = self.pipeline.route(exchange, fields, headers, source, peer)
            host = version.host if version is not None else destination[0]
            await self._forward(caller, stream, exchange, headers, host, destination[1])
        finally:
            self.pipeline.finish(exchange)

    async def _forward(self, caller: CallerConnection, stream: CallerStream, exchange: Exchange,
                       headers: list, host: str, port: int) -> None:
        body = ReplayableBody(caller, stream)
        method, path = stream.pseudo(b":method"), stream.pseudo(b":path")

        def attempt(to, max_requests):
            if body.read_to_end and not body.overflowed:  # whole and kept: sent at once
                return self.pool.open(to.host, port, method, path, headers, b"".join(body.kept), None, max_requests)
            return self.pool.open(to.host, port, method, path, headers, None, body.chunks(), max_requests)

        def send_copy(to, authority: str):
            copy = [(b":authority", authority.encode())] + headers[1:]
            return self.pool.request(to.host, port, exchange.method, path, copy, b"".join(body.kept))

        outcome = await self.pipeline.forward(exchange, body.replayable, attempt,
                                              lambda: attempt(Version("", host), None), send_copy)
        exchange.request_bytes = body.size or sum(map(len, body.kept))
        if outcome is RESET:
            caller.reset_stream(stream)
            return
        if isinstance(outcome, LocalReply):
            await self._reply(caller, stream, exchange, outcome)
            return
        try:
            if outcome.reply is not None:
                await self._reply(caller, stream, exchange, outcome.reply)
            else:
                await self._stream_answer(caller, stream, exchange, outcome.answer)
        finally:
            outcome.done()

    async def _reply(self, caller: CallerConnection, stream: CallerStream, exchange: Exchange,
                     reply: LocalReply) -> None:
        exchange.answer_locally(reply)
        self.pipeline.finish(exchange)
        caller.send_headers(stream, [(b":status", b"%d" % reply.status), (b"content-type", b"text/plain"),
                                     (b"content-length", b"%d" % len(reply.body)),
                                     *((n.encode(), v.encode()) for n, v in reply.headers)])
        await caller.send_data(stream, reply.body, end=True)

    async def _stream_answer(self, caller: CallerConnection, stream: CallerStream, exchange: Exchange,
                             answer: upstream_h2.Answer) -> None:
        exchange.status = answer.status
        head = [(b":status", b"%d" % answer.status), *answer.headers]
        if exchange.grpc:
            exchange.grpc_status = grpc_status(answer.headers)
        if answer.empty:  # e.g. gRPC's trailers-only answer: one HEADERS frame that ends the stream
            answer.discard()
            self.pipeline.finish(exchange)
            caller.send_headers(stream, head, end=True)
            return
        caller.send_headers(stream, head)
        try:
            async for chunk in answer.chunks(STREAM_IDLE_TIMEOUT):
                exchange.response_bytes += len(chunk)
                await caller.send_data(stream, chunk)
        except (Reset, TimeoutError) as exc:
            exchange.error = str(exc) or "stream idle timeout"
            exchange.flags.append("UPE")
            caller.reset_stream(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if exchange.grpc and answer.trailers:
            exchange.grpc_status = grpc_status(answer.trailers) or exchange.grpc_status
        # Counted before the stream's end goes out, so a caller that got the whole answer sees it counted.
        self.pipeline.finish(exchange)
        if answer.trailers:
            caller.send_headers(stream, answer.trailers, end=True)
        else:
            await caller.send_data(stream, b"", end=True)
