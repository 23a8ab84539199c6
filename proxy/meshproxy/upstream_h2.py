"""An HTTP/2 cleartext (prior knowledge) client for the sidecar's own upstream exchanges.

The HTTP/2 sibling of upstream.py, with the same interface (request_headers(), Pool.request())
and the same failures, so Resilience and Mirroring treat gRPC calls like HTTP/1 requests.
The h2 library (which mitmproxy ships) does the framing. One multiplexed connection per
(host, port) carries many streams; another is opened when it cannot take one more (the
server's SETTINGS_MAX_CONCURRENT_STREAMS, the circuit breaker's max requests per connection)
or it is going away. One reader task per connection hands each stream's events to its
exchange. Request bodies are sent as the peer's flow-control windows allow; received data is
acknowledged at once, since the whole response is buffered anyway.

A cancelled exchange (a timeout) resets only its own stream (RST_STREAM CANCEL). After a
GOAWAY, h2 accepts no more frames on the connection (python-hyper/h2#1181), so every stream
still open on it fails: those above the GOAWAY's last stream id were never processed, and
are sent once more on a new connection, as are streams refused with REFUSED_STREAM.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshproxy.upstream import HOP_BY_HOP, NOT_FORWARDED, READ_SIZE, ConnectFailure, Reset, Response

CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                   # as mitmproxy's own HTTP/2 layer: the app's headers go as they came
                                   validate_outbound_headers=False, normalize_outbound_headers=False)
HTTP2 = b"HTTP/2.0"
CONNECT_TIMEOUT = 5.0  # seconds for TCP and the server's SETTINGS, as Envoy's default connect_timeout


class Refused(Reset):
    """The server never processed the stream (above a GOAWAY's last stream id, or
    REFUSED_STREAM): it can be sent again as it is."""


def request_headers(fields, authority: str, body: bytes, method: str) -> list[tuple[bytes, bytes]]:
    """What to send upstream besides :method, :scheme and :path: :authority (the app's, as
    HTTP/1 sends Host), then the app's headers in their order with lower-case names, minus
    hop-by-hop ones (but `te: trailers`, which gRPC needs and HTTP/2 allows), Host and Expect;
    a Content-Length from the buffered body. (An HTTP/2 request has no Connection header
    naming more hop-by-hop ones: HTTP/2 forbids it.)"""
    headers = [(b":authority", authority.encode())]
    for name, value in fields:
        name = name.lower()
        if (name == b"te" and value.strip().lower() == b"trailers"
                or name not in HOP_BY_HOP and name not in NOT_FORWARDED):
            headers.append((name, value))
    if body or method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers


class Stream:
    """One exchange's state, filled in by the connection's reader."""

    __slots__ = ("answer", "headers", "chunks", "trailers", "window")

    def __init__(self, answer: asyncio.Future) -> None:
        self.answer = answer  # the Response, or the failure
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.window: asyncio.Event | None = None  # while the body waits for flow-control credit

    def fail(self, error: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)
        self.wake()

    def wake(self) -> None:
        if self.window is not None:
            self.window.set()

    def finish(self) -> None:
        if self.answer.done():
            return
        status = next((int(v) for n, v in self.headers if n == b":status"), 0)
        if not status:
            self.fail(Reset("stream ended without a response"))
            return
        self.answer.set_result(Response(status, b"", [(n, v) for n, v in self.headers if not n.startswith(b":")],
                                        b"".join(self.chunks), HTTP2, self.trailers))


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 siblings: list[Connection]) -> None:
        self.reader, self.writer = reader, writer
        self.siblings = siblings  # the pool's connections to the same host, this one included while usable
        self.h2 = h2.connection.H2Connection(CONFIG)
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.streams: dict[int, Stream] = {}
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

    async def exchange(self, head: list, body: bytes, max_requests: int | None) -> Response:
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = Stream(asyncio.get_running_loop().create_future())
        self.started += 1
        if max_requests and self.started >= max_requests:
            self.retire()
        try:
            self.h2.send_headers(stream_id, head, end_stream=not body)
            self.flush()
            if body:
                await self._send_body(stream_id, stream, body)
            return await stream.answer
        finally:
            del self.streams[stream_id]
            h2_stream = self.h2.streams.get(stream_id)
            if not self.lost and h2_stream is not None and not h2_stream.closed:
                # cancelled (a timeout), or answered before the whole body went: end only this stream
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self.flush()
            if self.closing and not self.streams:
                self.close()

    async def _send_body(self, stream_id: int, stream: Stream, body: bytes) -> None:
        view = memoryview(body)
        sent = 0
        while sent < len(body) and not stream.answer.done():
            window = self.h2.local_flow_control_window(stream_id)
            if window <= 0:
                stream.window = stream.window or asyncio.Event()
                stream.window.clear()
                await stream.window.wait()
                continue
            size = min(window, self.h2.max_outbound_frame_size, len(body) - sent)
            self.h2.send_data(stream_id, bytes(view[sent:sent + size]), end_stream=sent + size == len(body))
            sent += size
            self.flush()
            try:
                await self.writer.drain()
            except OSError as exc:
                stream.fail(Reset(f"connection reset: {exc}"))

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
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.ResponseReceived) and stream:
            stream.headers = event.headers
        elif isinstance(event, h2.events.DataReceived) and stream:
            stream.chunks.append(event.data)
        elif isinstance(event, h2.events.TrailersReceived) and stream:
            stream.trailers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
        elif isinstance(event, h2.events.StreamEnded) and stream:
            stream.finish()
        elif isinstance(event, h2.events.StreamReset) and stream:
            error = Refused if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM else Reset
            stream.fail(error(f"stream reset by the server: {event.error_code!r}"))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:  # the connection's window: every stream may go on
                for waiting in self.streams.values():
                    waiting.wake()
            elif stream:
                stream.wake()
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
        for stream in self.streams.values():
            stream.fail(error)
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

    def __init__(self) -> None:
        self._connections: dict[tuple[str, int], list[Connection]] = {}
        self._connecting: dict[tuple[str, int], asyncio.Task] = {}
        self.opened = 0  # connections opened so far, for stats and tests

    async def request(self, host: str, port: int, method: str, target: str, headers: list, body: bytes,
                      max_requests_per_connection: int | None = None) -> Response:
        head = [(b":method", method.encode()), (b":scheme", b"http"),
                (b":path", target.encode("utf-8", "surrogateescape")), *headers]
        try:
            return await self._exchange((host, port), head, body, max_requests_per_connection)
        except Refused:  # nothing was processed: once more, on a connection that takes it
            return await self._exchange((host, port), head, body, max_requests_per_connection)

    async def _exchange(self, key: tuple[str, int], head: list, body: bytes, max_requests: int | None) -> Response:
        return await (await self._connection(key, max_requests)).exchange(head, body, max_requests)

    async def _connection(self, key: tuple[str, int], max_requests: int | None) -> Connection:
        while True:
            for conn in self._connections.get(key, ()):
                if conn.has_room(max_requests):
                    return conn
            connecting = self._connecting.get(key)
            if connecting is None:
                connecting = self._connecting[key] = asyncio.create_task(self._open(key))
                connecting.add_done_callback(lambda task: task.cancelled() or task.exception())
            await asyncio.shield(connecting)  # a waiter's timeout must not cancel the others' connect

    async def _open(self, key: tuple[str, int]) -> None:
        host, port = key
        conn = None
        try:
            # Shared by every request waiting for it, so bounded by its own time, not theirs.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
                self.opened += 1
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
