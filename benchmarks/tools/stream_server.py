"""A streaming upstream: one message every 20 ms for 1 s, per request.

Port 8081 answers HTTP/1.1 with a chunked body, one chunk per message; port 8082 answers
HTTP/2 with prior knowledge (h2c) as a gRPC server-streaming call: one length-prefixed
message per DATA frame, then trailers with grpc-status 0. Runs in the tools image
(Debian's python3-h2).
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events

INTERVAL = 0.020
COUNT = 50


def message(i: int) -> bytes:
    return f"message {i:03d}\n".encode()


async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head:
            break
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(COUNT):
            body = message(i)
            writer.write(b"%x\r\n%s\r\n" % (len(body), body))
            await writer.drain()
            await asyncio.sleep(INTERVAL)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def http1_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await http1(reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def grpc_stream(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, stream_id: int) -> None:
    conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    writer.write(conn.data_to_send())
    for i in range(COUNT):
        body = message(i)
        conn.send_data(stream_id, b"\x00" + len(body).to_bytes(4, "big") + body)
        writer.write(conn.data_to_send())
        await writer.drain()
        await asyncio.sleep(INTERVAL)
    conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()


async def h2c_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    streams: set[asyncio.Task] = set()
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    task = asyncio.create_task(grpc_stream(conn, writer, event.stream_id))
                    streams.add(task)
                    task.add_done_callback(streams.discard)
            writer.write(conn.data_to_send())
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        for task in streams:
            task.cancel()
        writer.close()


async def main() -> None:
    servers = [await asyncio.start_server(http1_connection, "0.0.0.0", 8081),
               await asyncio.start_server(h2c_connection, "0.0.0.0", 8082)]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
