"""Real HTTP/1.1 servers on loopback for the sidecar's client-side tests, scripted per request.

Each Backend runs on asyncio in the test's own event loop: `reply(n, request)` decides
what the n-th request (from 1) gets - an answer, after an optional delay, or a reset.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

from sidecar_kit import LoopbackServer


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names lower case
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0
    reset: bool = False  # abort the connection (RST) instead of answering
    chunked: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)


def ok(n: int, request: Request) -> Reply:
    return Reply()


def fail_first(count: int, status: int = 503) -> Callable[[int, Request], Reply]:
    return lambda n, request: Reply(status, b"failed") if n <= count else Reply()


class Backend(LoopbackServer):
    def __init__(self, reply: Callable[[int, Request], Reply] = ok, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.reply = reply
        self.requests: list[Request] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            request = Request(method, target, headers, body)
            self.requests.append(request)
            reply = self.reply(len(self.requests), request)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.reset:
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                          struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
            if reply.chunked:
                framing = "transfer-encoding: chunked\r\n"
                payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(reply.body), reply.body) if reply.body else b"0\r\n\r\n"
            else:
                framing = f"content-length: {len(reply.body)}\r\n"
                payload = reply.body
            writer.write(f"HTTP/1.1 {reply.status} X\r\n{framing}{extra}\r\n".encode() + payload)
            await writer.drain()
