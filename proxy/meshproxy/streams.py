"""The data path's connections: one Protocol that is both the reader and the writer.

asyncio's streams take three objects and about seven Python calls to hand one received
piece to a reader (protocol, reader buffer, waiter, flow control, a copy out of the
buffer). Under a demo's load a sidecar's caches are cold at every request, and each
distinct function a request touches costs more than the work it does
(`python -m benchmarks.inprocess --cold 40`), so the listeners, the pools and mesh mTLS
use this instead. It keeps asyncio's semantics where the code relies on them:
`read(n)` returns what arrived (at most n bytes; b"" at the end), a connection that
broke raises its error on the next read and drain, reading pauses when the buffer
passes twice the limit, `drain()` waits while the transport asks to, and EOF from the
peer half-closes (except over TLS, which cannot). The same object goes where asyncio
would pass a (reader, writer) pair, so code written for those works on it unchanged.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Awaitable, Callable

LIMIT = 65536  # reading pauses above twice this (asyncio's default limit)


class Stream(asyncio.Protocol):
    """A connection: received pieces queue here until read; writes go to the transport."""

    def __init__(self, on_connected: Callable[[Stream, Stream], Awaitable] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None  # a read waiting for data
        self._paused_reading = False
        self._paused_writing = False
        self._drained: collections.deque[asyncio.Future] = collections.deque()
        self._lost = False
        self._closed: asyncio.Future | None = None
        self._on_connected = on_connected
        self._task: asyncio.Task | None = None  # what on_connected started, held until it ends
        self._over_tls = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._over_tls = transport.get_extra_info("sslcontext") is not None
        if self._on_connected is not None:
            self._task = asyncio.get_running_loop().create_task(self._on_connected(self, self))

    def data_received(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._size > 2 * LIMIT and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return not self._over_tls  # keep the sending side open (TLS cannot half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        while self._drained:
            waiter = self._drained.popleft()
            if not waiter.done():
                waiter.set_exception(exc) if exc is not None else waiter.set_result(None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._task = None

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        while self._drained:
            waiter = self._drained.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading (asyncio.StreamReader's) ------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            raise self._error
        if not self._pieces:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            if self._error is not None:
                raise self._error
            if not self._pieces:
                return b""
        pieces = self._pieces
        data = pieces.popleft()
        if pieces and (n < 0 or len(data) < n):  # more queued: as much as n allows, at once
            data = b"".join([data, *pieces])
            pieces.clear()
        if 0 <= n < len(data):
            pieces.appendleft(data[n:])
            data = data[:n]
        self._size -= len(data)
        if self._paused_reading and self._size <= LIMIT:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def readexactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = await self.read(n - len(data))
            if not piece:
                raise asyncio.IncompleteReadError(data, n)
            data += piece
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._pieces

    def exception(self) -> BaseException | None:
        return self._error

    # -- writing (asyncio.StreamWriter's) ------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if self._paused_writing:
            waiter = asyncio.get_running_loop().create_future()
            self._drained.append(waiter)
            await waiter

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        if self._lost:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await self._closed

    def get_extra_info(self, name: str, default=None):
        return self.transport.get_extra_info(name, default)


async def open_connection(host: str, port: int, **kwargs) -> tuple[Stream, Stream]:
    """asyncio.open_connection() with a Stream: (reader, writer), the same object."""
    _, stream = await asyncio.get_running_loop().create_connection(Stream, host, port, **kwargs)
    return stream, stream
