"""What the fault machinery costs a request when no fault is active (issue goal: at most
0.1 ms), measured in this process on the sidecar's own policy objects, with a config that
has faults for other services and runtime faults for other callers - so the lookups do
the work they do in a real mesh, and only the answer is "no fault".

Per request the sidecar asks HttpFaults.apply() (every HTTP request to a mesh service)
and, once per outbound connection, TcpFaults.for_connection(). Both are timed here over
many calls; the figure is their sum in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import time

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.exchange import OUTBOUND, Exchange
from meshproxy.outlier import Outliers
from meshproxy.policy.faults import HttpFaults, TcpFaults
from meshproxy.policy.routing import Router

CALLS = 50_000
CALLER = Identity("bench", "web-v1", "web", "v1")


def _state() -> MeshState:
    faulty = {"name": "main", "fault": {"abort": {"status": 503, "percent": 50}}}
    services = {
        "payment": {"versions": [{"name": "v1", "host": "10.0.0.2"}]},  # the one called: no fault
        "orders": {"versions": [{"name": "v1", "host": "10.0.0.3"}], "routes": [faulty]},
    }
    runtime = [{"id": "f-1", "service": "payment", "source": "someone-else", "until": None,
                "http": {"abort": {"status": 500, "percent": 100}}, "tcp": None},
               {"id": "f-2", "service": "orders", "source": None, "until": None,
                "http": None, "tcp": {"kind": "reset", "percent": 100}}]
    state = MeshState(CALLER)
    state.apply(config.parse(json.dumps({"schema": 2, "version": "bench", "services": services,
                                         "faults": runtime})))
    return state


async def _measure() -> dict:
    state = _state()
    router = Router(state, Outliers(state))
    http_faults, tcp_faults = HttpFaults(state), TcpFaults(state)
    exchange = Exchange(OUTBOUND, "GET", "payment:8080", "/pay")
    router.outbound(exchange, {}, lambda name, value: None)
    assert exchange.service is not None and await http_faults.apply(exchange) is None
    started = time.perf_counter()
    for _ in range(CALLS):
        await http_faults.apply(exchange)
    http_us = (time.perf_counter() - started) / CALLS * 1e6
    started = time.perf_counter()
    for _ in range(CALLS):
        tcp_faults.for_connection("10.0.0.2")
    tcp_us = (time.perf_counter() - started) / CALLS * 1e6
    return {"http_us": round(http_us, 2), "tcp_us": round(tcp_us, 2), "total_ms": round((http_us + tcp_us) / 1000, 4)}


def run() -> dict:
    return asyncio.run(_measure())


if __name__ == "__main__":
    print(run())
