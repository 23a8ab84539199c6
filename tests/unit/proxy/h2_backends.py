"""Real HTTP/2 cleartext (prior knowledge) servers on loopback, scripted per request, on h2.

The HTTP/2 sibling of http_backends.py: `reply(n, request)` decides what the n-th request
(from 1) gets - an answer with optional trailers, after an optional delay; a reset of its
stream; or a GOAWAY. Each stream is answered in its own task, so streams overlap, and
bodies are sent as the client's flow-control windows allow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidecar_kit import LoopbackServer


@dataclass
class Request:
    stream_id: int
    headers: list[tuple[str, str]]  # as received, pseudo-headers first
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0
    reset: bool = False  # RST_STREAM INTERNAL_ERROR instead of an answer
    # GOAWAY: "after" the answer (last stream = this one), "refuse" this stream (last stream = the
    # one before: never processed), "abort" after processing it (last stream = this one, no answer)
    goaway: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)


def ok(n: int, request: Request) -> Reply:
    return Reply()


class H2Backend(LoopbackServer):
    def __init__(self, reply: Callable[[int, Request], Reply] = ok, host: str = "127.0.0.1", port: int = 0,
                 max_concurrent_streams: int | None = None) -> None:
        super().__init__(host, port)
        self.reply = reply
        self.max_concurrent_streams = max_concurrent_streams
        self.requests: list[Request] = []
        self.client_resets: list[tuple[int, int]] = []  # (stream id, error code) of RST_STREAMs received

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if self.max_concurrent_streams:
            conn.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        window = asyncio.Event()  # set when the client grants more flow-control credit
        heads: dict[int, list] = {}
        bodies: dict[int, bytearray] = {}
        answering: dict[int, asyncio.Task] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        heads[event.stream_id] = event.headers
                        bodies[event.stream_id] = bytearray()
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        request = Request(event.stream_id, heads.pop(event.stream_id),
                                          bytes(bodies.pop(event.stream_id)))
                        self.requests.append(request)
                        task = asyncio.create_task(self._answer(conn, writer, window, request,
                                                                self.reply(len(self.requests), request)))
                        answering[event.stream_id] = task
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    elif isinstance(event, h2.events.StreamReset):
                        self.client_resets.append((event.stream_id, event.error_code))
                        if event.stream_id in answering:
                            answering[event.stream_id].cancel()
                    elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        window.set()
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass

    async def _answer(self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, window: asyncio.Event,
                      request: Request, reply: Reply) -> None:
        stream_id = request.stream_id
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.reset:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif reply.goaway in ("refuse", "abort"):
            last = stream_id - 2 if reply.goaway == "refuse" else stream_id
            conn.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=last)
        else:
            conn.send_headers(stream_id, [(":status", str(reply.status)), *reply.headers],
                              end_stream=not reply.body and not reply.trailers)
            sent = 0
            while sent < len(reply.body):
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size,
                           len(reply.body) - sent)
                if size <= 0:
                    writer.write(conn.data_to_send())
                    window.clear()
                    await window.wait()
                    continue
                end = sent + size == len(reply.body) and not reply.trailers
                conn.send_data(stream_id, reply.body[sent:sent + size], end_stream=end)
                sent += size
            if reply.trailers:
                conn.send_headers(stream_id, reply.trailers, end_stream=True)
            if reply.goaway == "after":
                conn.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=stream_id)
        writer.write(conn.data_to_send())
        await writer.drain()
        if reply.goaway:
            writer.close()
