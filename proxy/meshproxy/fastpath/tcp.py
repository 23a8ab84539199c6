"""Raw TCP relay: bytes both ways, half-closes passed on, optionally through a Toxic.

Used for opaque TCP (and TLS the app started itself, when not handed to mitmproxy),
for upgraded HTTP connections (WebSocket after 101), and to splice a connection into
mitmproxy (handover.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable

from meshproxy.policy.faults import Toxic

READ_SIZE = 65536

OnBytes = Callable[[bool, int], None]  # (from the client?, how many)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN: the peer sees 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes, from_client: bool,
                on_bytes: OnBytes | None, toxic: Toxic | None) -> bool:
    """Copy reader -> writer until EOF; True if it ended cleanly, False if the toxic closed it."""
    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    data = first
    while True:
        if data:
            if on_bytes is not None:
                on_bytes(from_client, len(data))
            if toxic is not None:
                if not await toxic.relay(data, send):
                    return False
            else:
                writer.write(data)
                await writer.drain()
        data = await reader.read(READ_SIZE)
        if not data:
            break
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()  # pass the half-close on: the other direction may still talk
    return True


async def relay(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                client_first: bytes = b"", server_first: bytes = b"",
                on_bytes: OnBytes | None = None, toxic: Toxic | None = None) -> str | None:
    """Relay until both directions are done; returns an error text, or None."""
    (client_reader, client_writer), (server_reader, server_writer) = client, server
    up = asyncio.ensure_future(_pump(client_reader, server_writer, client_first, True, on_bytes, toxic))
    down = asyncio.ensure_future(_pump(server_reader, client_writer, server_first, False, on_bytes, toxic))
    error = None
    try:
        pending = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    error = str(task.exception()) or type(task.exception()).__name__
                    pending = set()  # one side broke: end both
                elif task.result() is False:
                    pending = set()  # the toxic closed the connection
    finally:
        for task in (up, down):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()
    return error
