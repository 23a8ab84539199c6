"""Calls a gRPC-style server stream over h2c and prints, as JSON, when each message came.

Usage: python h2_stream_client.py HOST PORT PATH. Runs in the sidecar image (h2 library).
"""

from __future__ import annotations

import json
import socket
import sys
import time

import h2.connection
import h2.events


def main(host: str, port: int, path: str) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    started = time.monotonic()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
                                  (":path", path), ("content-type", "application/grpc"), ("te", "trailers")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    arrivals, trailers, status = [], {}, None
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status", b"").decode()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                arrivals.append([round((time.monotonic() - started) * 1000, 1), len(event.data)])
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.StreamEnded):
                print(json.dumps({"status": status, "arrivals_ms": arrivals, "trailers": trailers}))
                return
        sock.sendall(conn.data_to_send())
    print(json.dumps({"status": status, "arrivals_ms": arrivals, "trailers": trailers, "error": "closed"}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
