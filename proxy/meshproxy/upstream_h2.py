"""An HTTP/2 cleartext (prior knowledge) client for the sidecar's upstream exchanges.

The HTTP/2 sibling of upstream.py, with the same interface and failures (`Pool.open()`
returns an answer at its response headers whose body streams through `chunks()`;
`Pool.request()` is the buffered form), so resilience treats gRPC calls like HTTP/1
requests. The h2 library does the framing. One multiplexed connection per (host, port)
carries many streams; another is opened when it cannot take one more (the server's
SETTINGS_MAX_CONCURRENT_STREAMS, the circuit breaker's max requests per connection) or it
is going away. One reader task per connection hands each stream's events to its answer.
Flow control is honoured both ways: request bodies go as the server's windows allow, and
received data is acknowledged only as the caller consumes it, so a slow reader slows the
server instead of filling the sidecar's memory.

A cancelled or discarded exchange resets only its own stream (RST_STREAM CANCEL). After a
GOAWAY, h2 accepts no more frames on the connection (python-hyper/h2#1181), so every stream
still open on it fails: those above the GOAWAY's last stream id were never processed, and
are sent once more on a new connection, as are streams refused with REFUSED_STREAM.
"""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshproxy.upstream import (HOP_BY_HOP, NOT_FORWARDED, READ_SIZE, BodySource, ConnectFailure, PoolKey, Reset,
                                Response, Secure, pool_key)

CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                   # as mitmproxy's own HTTP/2 layer: the app's headers go as they came
                                   validate_outbound_headers=False, normalize_outbound_headers=False)
HTTP2 = b"HTTP/2.0"
CONNECT_TIMEOUT = 5.0  # seconds for TCP and the server's SETTINGS, as Envoy's default connect_timeout


class Refused(Reset):
    """The server never processed the stream (above a GOAWAY's last stream id, or
    REFUSED_STREAM): it can be sent again as it is."""


def forwarded_headers(fields, authority: bytes) -> list[tuple[bytes, bytes]]:
    """What to send besides :method, :scheme and :path: :authority (the app's, as HTTP/1
    sends Host), then the app's headers in their order with lower-case names, minus
    hop-by-hop ones (but `te: trailers`, which gRPC needs and HTTP/2 allows), Host,
    Content-Length and Expect."""
    headers = [(b":authority", authority)]
    for name, value in fields:
        name = name.lower()
        if name.startswith(b":"):
            continue
        if (name == b"te" and value.strip().lower() == b"trailers"
                or name not in HOP_BY_HOP and name not in NOT_FORWARDED):
            headers.append((name, value))
    return headers


def request_headers(fields, authority: str, body: bytes, method: str) -> list[tuple[bytes, bytes]]:
    """forwarded_headers() plus a Content-Length from a buffered body."""
    headers = forwarded_headers(fields, authority.encode())
    if body or method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers


class Answer:
    """One stream's response, filled in by the connection's reader; the body streams."""

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self.conn, self.stream_id = conn, stream_id
        loop = asyncio.get_running_loop()
        self.headers_ready = loop.create_future()
        self.status = 0
        self.reason = b""
        self.http_version = HTTP2
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.complete = False  # the server ended the stream
        self.error: Exception | None = None
        self._data: collections.deque[tuple[bytes, int]] = collections.deque()
        self._arrived: asyncio.Event = asyncio.Event()
        self.window: asyncio.Event | None = None  # while the request body waits for flow-control credit
        self._done = False

    # from the reader
    def on_headers(self, headers) -> None:
        self.status = next((int(v) for n, v in headers if n == b":status"), 0)
        self.headers = [(n, v) for n, v in headers if not n.startswith(b":")]
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self._data.append((data, flow_controlled))
        self._arrived.set()

    def on_end(self) -> None:
        self.complete = True
        if not self.headers_ready.done():
            self.fail(Reset("stream ended without a response"))
        self._arrived.set()

    def fail(self, error: Exception) -> None:
        if self.complete:
            return  # the whole answer is here: a GOAWAY or a close after it changes nothing
        if self.error is None:
            self.error = error
        if not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: nobody may be waiting any more
        self._arrived.set()
        self.wake()

    def wake(self) -> None:
        if self.window is not None:
            self.window.set()

    # for the caller
    @property
    def empty(self) -> bool:
        """Ended with its headers: no body, no trailers."""
        return self.complete and not self._data and not self.trailers

    async def chunks(self, idle_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, each piece acknowledged to the server once taken; the
        trailers are in .trailers at the end."""
        try:
            while True:
                while self._data:
                    data, size = self._data.popleft()
                    self.conn.acknowledge(self.stream_id, size)
                    if data:
                        yield data
                if self.error is not None:
                    raise self.error
                if self.complete:
                    break
                self._arrived.clear()
                async with asyncio.timeout(idle_timeout):
                    await self._arrived.wait()
        finally:
            self.discard()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def discard(self) -> None:
        """Not (or no longer) wanted: reset the stream if it is still open."""
        if not self._done:
            self._done = True
            self.conn.forget(self.stream_id)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 siblings: list[Connection]) -> None:
        self.reader, self.writer = reader, writer
        self.siblings = siblings  # the pool's connections to the same host, this one included while usable
        self.h2 = h2.connection.H2Connection(CONFIG)
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.streams: dict[int, Answer] = {}
        self.started = 0  # streams opened, for max requests per connection
        self.closing = False  # takes no new streams
        self.lost = False  # the connection failed or went away: h2 can send nothing more
        self.ready = asyncio.get_running_loop().create_future()  # the server's SETTINGS arrived
        self.flush()
        self.reading = asyncio.create_task(self._read())

    def has_room(self, max_requests: int | None) -> bool:
        return (not self.closing and (not max_requests or self.started < max_requests)
                and len(self.streams) < self.h2.remote_settings.max_concurrent_streams)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.lost:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except (h2.exceptions.StreamClosedError, KeyError):
                return
            self.flush()

    async def open(self, head: list, body: bytes | None, source: BodySource | None,
                   max_requests: int | None) -> Answer:
        stream_id = self.h2.get_next_available_stream_id()
        answer = self.streams[stream_id] = Answer(self, stream_id)
        self.started += 1
        if max_requests and self.started >= max_requests:
            self.retire()
        try:
            self.h2.send_headers(stream_id, head, end_stream=not body and source is None)
            self.flush()
            if body:
                await self._send(answer, body, end=True)
            elif source is not None:
                async for chunk in source:
                    if chunk:
                        await self._send(answer, chunk, end=False)
                if not answer.complete and not self.lost:
                    self.h2.end_stream(stream_id)
                    self.flush()
            await answer.headers_ready
        except BaseException:
            answer.discard()
            raise
        return answer

    async def _send(self, answer: Answer, body: bytes, end: bool) -> None:
        """Send body data as the flow-control windows allow (they may be 0 for a while)."""
        view = memoryview(body)
        sent = 0
        stream_id = answer.stream_id
        while sent < len(body) and answer.error is None and not answer.complete:
            window = self.h2.local_flow_control_window(stream_id)
            if window <= 0:
                answer.window = answer.window or asyncio.Event()
                answer.window.clear()
                await answer.window.wait()
                continue
            size = min(window, self.h2.max_outbound_frame_size, len(body) - sent)
            self.h2.send_data(stream_id, bytes(view[sent:sent + size]), end_stream=end and sent + size == len(body))
            sent += size
            self.flush()
            try:
                await self.writer.drain()
            except OSError as exc:
                answer.fail(Reset(f"connection reset: {exc}"))
        if answer.error is not None and not answer.headers_ready.done():
            raise answer.error

    def forget(self, stream_id: int) -> None:
        """The caller is done with a stream: reset it if it is still open."""
        self.streams.pop(stream_id, None)
        h2_stream = self.h2.streams.get(stream_id)
        if not self.lost and h2_stream is not None and not h2_stream.closed:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self.flush()
        if self.closing and not self.streams:
            self.close()

    async def _read(self) -> None:
        reason = "connection closed by the server"
        try:
            while not self.lost and (data := await self.reader.read(READ_SIZE)):
                for event in self.h2.receive_data(data):
                    self._dispatch(event)
                self.flush()
        except OSError as exc:
            reason = f"connection reset: {exc}"
        except h2.exceptions.ProtocolError as exc:
            reason = f"bad HTTP/2 from the server: {exc}"
            self.flush()  # h2's GOAWAY
        finally:
            self._lose(Reset(reason))

    def _dispatch(self, event: h2.events.Event) -> None:
        answer = self.streams.get(getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.DataReceived):
            if answer is not None:
                answer.on_data(event.data, event.flow_controlled_length)
            else:  # a stream we gave up: keep the connection's window open
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.ResponseReceived) and answer:
            answer.on_headers(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and answer:
            answer.trailers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
        elif isinstance(event, h2.events.StreamEnded) and answer:
            answer.on_end()
        elif isinstance(event, h2.events.StreamReset) and answer:
            error = Refused if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM else Reset
            answer.fail(error(f"stream reset by the server: {event.error_code!r}"))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:  # the connection's window: every stream may go on
                for waiting in self.streams.values():
                    waiting.wake()
            elif answer:
                answer.wake()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
            for waiting in self.streams.values():  # the initial window size may have grown
                waiting.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            last = event.last_stream_id if event.last_stream_id is not None else 0
            why = f"GOAWAY from the server: {event.error_code!r}"
            for stream_id, waiting in self.streams.items():
                waiting.fail(Refused(why) if stream_id > last else Reset(why))
            self._lose(Reset(why))

    def retire(self) -> None:
        """Take no new streams; close once the open ones are done."""
        self.closing = True
        if self in self.siblings:
            self.siblings.remove(self)

    def _lose(self, error: Reset) -> None:
        self.retire()
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectFailure(f"no HTTP/2 connection: {error}"))
            self.ready.exception()  # retrieved: nobody may be waiting any more
        for answer in self.streams.values():
            answer.fail(error)
        self.writer.close()
        if self.reading is not asyncio.current_task():
            self.reading.cancel()

    def close(self) -> None:
        if not self.lost:
            self.h2.close_connection()
            self.flush()
        self._lose(Reset("connection closed by the sidecar"))


class Pool:
    """One connection per (host, port) for as many concurrent streams as it takes, more
    when it is full; concurrent requests to a host that has none wait for the same connect."""

    def __init__(self, on_connect=None, secure: Secure | None = None,
                 secures: Callable[[str], bool] | None = None) -> None:
        self._connections: dict[PoolKey, list[Connection]] = {}
        self._connecting: dict[PoolKey, asyncio.Task] = {}
        self.opened = 0  # connections opened so far, for stats and tests
        self.on_connect = on_connect
        self.secure = secure  # mesh mTLS to destinations that have a sidecar (see upstream.Secure)
        self.secures = secures  # see upstream.pool_key

    async def open(self, host: str, port: int, method: str | bytes, target: str | bytes, headers: list,
                   body: bytes | None = b"", source: BodySource | None = None,
                   max_requests: int | None = None) -> Answer:
        """Send a request (`headers` from forwarded_headers(), :authority first) and return
        its answer at the response headers."""
        method = method.encode() if isinstance(method, str) else method
        target = target.encode("utf-8", "surrogateescape") if isinstance(target, str) else target
        head = [(b":method", method), (b":scheme", b"http"), (b":path", target), *headers]
        key = pool_key(host, port, self.secure, self.secures)
        try:
            return await (await self._connection(key, max_requests)).open(head, body, source, max_requests)
        except Refused:  # nothing was processed: once more, on a connection that takes it
            if source is not None:
                raise
            return await (await self._connection(key, max_requests)).open(head, body, None, max_requests)

    async def request(self, host: str, port: int, method: str, target: str, headers: list, body: bytes,
                      max_requests_per_connection: int | None = None) -> Response:
        """The buffered exchange: `headers` as request_headers() makes them."""
        answer = await self.open(host, port, method, target, headers, body, max_requests=max_requests_per_connection)
        content = await answer.read()
        return Response(answer.status, b"", answer.headers, content, HTTP2, answer.trailers)

    async def _connection(self, key: PoolKey, max_requests: int | None) -> Connection:
        while True:
            for conn in self._connections.get(key, ()):
                if conn.has_room(max_requests):
                    return conn
            connecting = self._connecting.get(key)
            if connecting is None:
                connecting = self._connecting[key] = asyncio.create_task(self._open(key))
                connecting.add_done_callback(lambda task: task.cancelled() or task.exception())
            await asyncio.shield(connecting)  # a waiter's timeout must not cancel the others' connect

    async def _open(self, key: PoolKey) -> None:
        host, port, secured = key
        conn = None
        try:
            # Shared by every request waiting for it, so bounded by its own time, not theirs.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                opening = self.secure(host, port) if secured else None
                reader, writer = await (opening or asyncio.open_connection(host, port))
                self.opened += 1
                if self.on_connect is not None:
                    self.on_connect(host, port)
                conn = Connection(reader, writer, self._connections.setdefault(key, []))
                await conn.ready  # the server's SETTINGS (its stream limit) come before any stream
        except TimeoutError:  # before OSError: it is one
            if conn is not None:
                conn.close()
            raise ConnectFailure(f"no HTTP/2 connection to {host}:{port} within {CONNECT_TIMEOUT} s") from None
        except OSError as exc:  # refused, unreachable, DNS failure (socket.gaierror)
            raise ConnectFailure(f"cannot connect to {host}:{port}: {exc}") from None
        except asyncio.CancelledError:
            if conn is not None:
                conn.close()
            raise
        else:
            conn.siblings.append(conn)
        finally:
            del self._connecting[key]

    def close(self) -> None:
        for conns in list(self._connections.values()):
            for conn in list(conns):
                conn.close()
        self._connections.clear()
