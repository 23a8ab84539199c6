"""Tap: a live copy of every finished request for whoever reads /tap (`meshcli tap`).

Free when nobody taps: the pipeline only asks `active`, one attribute. While someone
does, each finished request becomes one small record (its headers redacted as the
mesh file says, see config.Telemetry.redacted) appended to every reader's bounded
buffer; a reader that falls behind loses the oldest records (and is told how many),
it never slows traffic: the event loop only appends and signals, the admin thread of
each reader (admin.py) writes to its socket.
"""

from __future__ import annotations

import collections
import threading

from meshproxy.config import MeshState
from meshproxy.exchange import Exchange, redact

BUFFER = 1000  # records a reader may fall behind by


class Reader:
    """One /tap connection's buffer."""

    def __init__(self, size: int = BUFFER) -> None:
        self.records: collections.deque = collections.deque(maxlen=size)
        self.arrived = threading.Event()
        self.dropped = 0  # records lost because this reader fell behind

    def push(self, record: dict) -> None:
        records = self.records
        if len(records) == records.maxlen:
            self.dropped += 1
        records.append(record)
        self.arrived.set()

    def take(self, wait: float) -> list[dict]:
        """The records that arrived, after waiting up to `wait` seconds for one."""
        self.arrived.wait(wait)
        self.arrived.clear()  # before draining: a record pushed meanwhile sets it again
        taken = []
        while self.records:
            taken.append(self.records.popleft())
        return taken


class Tap:
    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.readers: tuple[Reader, ...] = ()
        self.active = False  # what the hot path reads
        self._lock = threading.Lock()

    def open(self, size: int = BUFFER) -> Reader:
        reader = Reader(size)
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
        record = self.record(exchange)
        for reader in self.readers:
            reader.push(record)

    def record(self, exchange: Exchange) -> dict:
        """What a tap shows of one request (camelCase, as `meshcli tap --json`)."""
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
