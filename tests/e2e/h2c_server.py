"""A tiny HTTP/2 cleartext (prior knowledge) server for the e2e tests, on the h2 library.

Answers every request with JSON {"service": "h2echo", "protocol": "HTTP/2", "path": ...},
except `/stream`: a gRPC-style server stream, one length-prefixed message every 20 ms
(10 in all), then the trailers `grpc-status: 0`. It runs inside the sidecar image (which
has the h2 library).
"""

from __future__ import annotations

import asyncio
import json

import h2.config
import h2.connection
import h2.events


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    paths: dict[int, str] = {}
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                paths[event.stream_id] = dict(event.headers).get(b":path", b"/").decode()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and paths.get(event.stream_id) == "/stream":
                paths.pop(event.stream_id)
                asyncio.ensure_future(stream(conn, writer, event.stream_id))
            elif isinstance(event, h2.events.StreamEnded):  # h2 reports it even for header-only requests
                body = json.dumps({"service": "h2echo", "protocol": "HTTP/2",
                                   "path": paths.pop(event.stream_id, "/")}).encode()
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                    ("content-length", str(len(body)))])
                conn.send_data(event.stream_id, body, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
    writer.close()


async def stream(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter, stream_id: int) -> None:
    conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    for i in range(10):
        message = b"message %d" % i
        conn.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
        writer.write(conn.data_to_send())
        await asyncio.sleep(0.02)
    conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
    writer.write(conn.data_to_send())


async def main() -> None:
    server = await asyncio.start_server(serve_connection, "0.0.0.0", 8080)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
