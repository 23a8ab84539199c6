"""Tap: a live copy of finished requests for whoever reads /tap (`meshcli tap`).

Free when nobody taps: the pipeline only asks `active`, one attribute. While someone
does, each finished request is offered to every reader: taken up to the reader's
`max_rps` per second (as `linkerd viz tap --max-rps`: a tap samples a busy service, it
does not mirror it), into a bounded buffer that loses its oldest entries when the reader
falls behind. The event loop only appends the finished Exchange; the reader's admin
thread (admin.py) turns it into a record - headers redacted as the mesh file says (see
config.Telemetry.redacted) - and writes it, so a tap never slows traffic.
"""

from __future__ import annotations

import collections
import threading

from meshproxy.config import MeshState
from meshproxy.exchange import Exchange, redact

BUFFER = 1000  # requests a reader may fall behind by
DEFAULT_MAX_RPS = 100  # requests per second a reader is sent (linkerd's default)


class Reader:
    """One /tap connection: its rate, its buffer, and what it did not get."""

    def __init__(self, max_rps: int = DEFAULT_MAX_RPS, size: int = BUFFER) -> None:
        self.max_rps = max_rps
        self.exchanges: collections.deque = collections.deque(maxlen=size)
        self.arrived = threading.Event()
        self.dropped = 0  # lost because this reader fell behind
        self.over_rate = 0  # not taken: beyond max_rps in their second
        self._second = 0
        self._taken = 0

    def offer(self, exchange: Exchange, second: int) -> None:
        """On the event loop: take a request that finished in epoch `second`, within the rate."""
        if second != self._second:
            self._second, self._taken = second, 0
        if self._taken >= self.max_rps:
            self.over_rate += 1
            return
        self._taken += 1
        exchanges = self.exchanges
        if not exchanges:
            self.arrived.set()  # once per batch: the reader drains them all
        elif len(exchanges) == exchanges.maxlen:
            self.dropped += 1
        exchanges.append(exchange)

    def take(self, wait: float) -> list[Exchange]:
        """The requests that arrived, after waiting up to `wait` seconds for one."""
        self.arrived.wait(wait)
        self.arrived.clear()  # before draining: a request offered meanwhile sets it again
        taken = []
        while self.exchanges:
            taken.append(self.exchanges.popleft())
        return taken


class Tap:
    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.readers: tuple[Reader, ...] = ()
        self.active = False  # what the hot path reads
        self._lock = threading.Lock()

    def open(self, max_rps: int = DEFAULT_MAX_RPS, size: int = BUFFER) -> Reader:
        reader = Reader(max_rps, size)
        with self._lock:
            self.readers += (reader,)
            self.active = True
        return reader

    def close(self, reader: Reader) -> None:
        with self._lock:
            self.readers = tuple(r for r in self.readers if r is not reader)
            self.active = bool(self.readers)

    def publish(self, exchange: Exchange) -> None:
        """Called for each finished request while active."""
        second = int(exchange.ended or exchange.started)
        for reader in self.readers:
            reader.offer(exchange, second)

    def record(self, exchange: Exchange) -> dict:
        """What a tap shows of one request (camelCase, as `meshcli tap --json`); on the reader's thread."""
        me = self.state.identity
        source, destination = exchange.workloads(me.workload)
        headers = exchange.headers
        return {
            "time": exchange.ended or exchange.started,
            "workload": me.workload,
            "direction": exchange.direction,
            "source": source,
            "sourcePrincipal": exchange.source_principal or None,
            "destination": exchange.service_name or "unknown",
            "destinationWorkload": destination,
            "version": exchange.version,
            "method": exchange.method,
            "authority": exchange.authority,
            "path": exchange.path,
            "status": exchange.status,
            "durationMs": round(exchange.duration_ms, 2),
            "responseFlags": ",".join(exchange.flags) or "-",
            "route": exchange.route.name if exchange.route is not None else None,
            "attempts": exchange.attempts,
            "traceId": exchange.trace_id or None,
            "headers": redact(headers, self.state.config.telemetry.redacted) if headers is not None else {},
        }
