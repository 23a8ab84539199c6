"""CPU per request through the sidecar's own code in one process: a client, a client
sidecar, a server sidecar and a tiny upstream on one event loop (uvloop), on loopback.

No Docker and no scheduler between processes, so the figure moves a few per cent between
runs where the Docker benchmark's move by a quarter: it is for judging a change to the
per-request path (what users see is `python -m benchmarks`). Plaintext between the two
sidecars, a mesh service with one version, the access log written to /dev/null in 0.1 s
batches as in a pod. The client's own cost is measured alone too (`client_only_us`), so
`sidecars_us` is what the two sidecar passes add.

`--cold MB` copies that many MB between two requests (untimed), evicting the caches, L3
included, as the demo's chain of processes does to each sidecar between its requests. Cold,
a pass costs what it costs in the demo, several times its warm figure: what a request
touches (code, objects) counts far more than the instructions it runs.

    .venv/bin/python -m benchmarks.inprocess [--rounds 6] [--cold 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time

import uvloop

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.config_watcher import InlineConfig
from meshproxy.sidecar import Sidecar

CLIENT, SERVER = Identity("bench", "web-v1", "web", "v1"), Identity("bench", "payment-v1", "payment", "v1")
CLIENT_HOST, SERVER_HOST = "127.0.0.1", "127.0.0.2"  # each sidecar listens on an address of its own
BODY = b"hello world\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (len(BODY), BODY)
REQUESTS = {True: 3000, False: 1500}  # per round, kept alive / a new connection each
COLD_REQUESTS = {True: 150, False: 100}  # each follows a copy of --cold MB


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(ANSWER * data.count(b"\r\n\r\n"))


def _sidecar(identity: Identity, destination: tuple[str, int], devnull) -> Sidecar:
    services = {"payment": {"versions": [{"name": "v1", "host": SERVER_HOST}]}}
    state = MeshState(identity)
    state.apply(config.parse(json.dumps({"schema": 2, "version": "bench", "services": services, "faults": []})))
    sidecar = Sidecar(state, watcher=InlineConfig())
    sidecar.listener.destination_of = lambda sock: destination  # no iptables on loopback
    sidecar.access_log.stream, sidecar.access_log.flush_interval = devnull, 0.1
    return sidecar


class Evictor:
    """Copies `megabytes` from one buffer to another: what is not in them leaves the caches."""

    def __init__(self, megabytes: float) -> None:
        self.source, self.target = bytearray(int(megabytes * 2**20)), bytearray(int(megabytes * 2**20))

    def __call__(self) -> None:
        self.target[:] = self.source


async def _client_cpu(port: int, keep_alive: bool, requests: int, evict: Evictor | None = None) -> float:
    """CPU-µs per request of `requests` GETs to 127.0.0.1:port (each after evict(), untimed)."""
    request = (b"GET / HTTP/1.1\r\nHost: payment:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n"
               + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n")
    spent = 0.0
    reader = writer = None
    for _ in range(requests):
        if evict is not None:
            evict()
        started = time.process_time()
        if reader is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await reader.readuntil(BODY)
        if not keep_alive:
            writer.close()
            reader = None
        spent += time.process_time() - started
    if writer is not None:
        writer.close()
    return spent / requests * 1e6


async def _measure(rounds: int, cold_megabytes: float = 0.0) -> dict:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(_Upstream, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    results: dict = {}
    with open(os.devnull, "w") as devnull:
        server = _sidecar(SERVER, ("127.0.0.1", upstream_port), devnull)
        await server.start(host=SERVER_HOST, outbound_port=0, inbound_port=0)
        inbound_port = server.listener.servers[1].sockets[0].getsockname()[1]
        client = _sidecar(CLIENT, ("10.0.0.9", inbound_port), devnull)  # where the app dialled
        await client.start(host=CLIENT_HOST, outbound_port=0, inbound_port=0)
        outbound_port = client.listener.servers[0].sockets[0].getsockname()[1]
        evict = Evictor(cold_megabytes) if cold_megabytes else None
        try:
            for keep_alive in (True, False):
                requests = (COLD_REQUESTS if evict else REQUESTS)[keep_alive]
                through, alone = [], []
                for _ in range(rounds + 1):  # the first round warms up and is dropped
                    through.append(await _client_cpu(outbound_port, keep_alive, requests, evict))
                    alone.append(await _client_cpu(upstream_port, keep_alive, requests, evict))
                    await asyncio.sleep(0.05)
                total, own = statistics.median(through[1:]), statistics.median(alone[1:])
                results["kept_alive" if keep_alive else "connection_per_request"] = {
                    "total_us": round(total, 1), "client_only_us": round(own, 1), "sidecars_us": round(total - own, 1),
                    "rounds_us": [round(value) for value in through[1:]]}
        finally:
            client.stop()
            server.stop()
            upstream.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cold", type=float, default=0.0, metavar="MB",
                        help="evict the caches before each request by copying this many MB (40: past L3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # connections cut at the end are not news here
    results = uvloop.run(_measure(max(1, args.rounds), args.cold))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, figures in results.items():
        print(f"{name.replace('_', ' ')}: {figures['sidecars_us']:.0f} CPU-µs per request in the two sidecars "
              f"({figures['total_us']:.0f} with the client, {figures['client_only_us']:.0f} the client alone)")


if __name__ == "__main__":
    main()
