"""Time every message of a streamed answer from stream_server.py, from inside a container.

    python3 stream_client.py http1|grpc HOST PORT [RUNS]

Each run opens a new connection, sends one request and notes when each whole message
arrives (ms since the request was sent). Prints one JSON object:
{"runs": [{"first_ms": .., "last_ms": .., "messages": ..}, ...]}.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

TIMEOUT = 10.0


def http1(host: str, port: int) -> list[float]:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    conn.connect()
    started = time.monotonic()
    conn.request("GET", "/stream")
    response = conn.getresponse()
    arrivals, pending = [], b""
    while chunk := response.read1(65536):  # read1 returns as soon as one chunk is in
        pending += chunk
        while b"\n" in pending:
            _, pending = pending.split(b"\n", 1)
            arrivals.append(time.monotonic() - started)
    conn.close()
    return arrivals


def grpc(host: str, port: int) -> list[float]:
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    started = time.monotonic()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
                          (":path", "/bench.Stream/Ticks"), ("content-type", "application/grpc"),
                          ("te", "trailers")])
    conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)  # one empty request message
    sock.sendall(conn.data_to_send())
    arrivals, pending, ended = [], b"", False
    while not ended:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                pending += event.data
                while len(pending) >= 5 and len(pending) >= 5 + int.from_bytes(pending[1:5], "big"):
                    pending = pending[5 + int.from_bytes(pending[1:5], "big"):]
                    arrivals.append(time.monotonic() - started)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = True
        sock.sendall(conn.data_to_send())
    sock.close()
    return arrivals


def main() -> None:
    protocol, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    call = {"http1": http1, "grpc": grpc}[protocol]
    results = []
    for _ in range(runs):
        arrivals = call(host, port)
        results.append({"messages": len(arrivals),
                        "first_ms": round(arrivals[0] * 1000, 1) if arrivals else None,
                        "last_ms": round(arrivals[-1] * 1000, 1) if arrivals else None})
    print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
