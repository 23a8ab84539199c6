"""Access log: one JSON line per request and per relayed TCP connection, on stdout.

What a line holds is fixed here, field by field (time, both identities, the request, its
answer and timings, bytes, Envoy's response flags, the trace id, the route and version
chosen, the retries): no header is ever copied into it wholesale, so Authorization,
Cookie, Set-Cookie and the headers the mesh file redacts never appear. `docker compose
logs <workload>-sidecar` shows it; each line parses on its own. Lines may be batched
(`flush_interval`, as Envoy flushes its access log every second): a request then does not
cost a write - and, under Docker, a wake-up of the log shim and of dockerd - per line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from json.encoder import encode_basestring_ascii

from meshproxy.config import MeshState
from meshproxy.exchange import INBOUND, Exchange

# One encoder for every line: json.dumps() with arguments builds a new one per call, which
# cost more than the rest of a request's bookkeeping.
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"))
# A request's line, the same JSON LINE_ENCODER would write for its fields in this order, filled
# in directly: building and encoding a dict per request cost twice as much. The strings go
# through json's own (C) string encoder; start_time is made here and needs no escaping.
HTTP_LINE = ('{"kind":"http","start_time":"%s","direction":%s,"workload":%s,"source":%s,"source_principal":%s,'
             '"destination_workload":%s,"destination_service":%s,"destination_version":%s,'
             '"connection_security_policy":%s,"method":%s,"authority":%s,"path":%s,"protocol":%s,"status":%d,'
             '"response_flags":%s,"duration_ms":%r,"request_bytes":%d,"response_bytes":%d,"trace_id":%s,'
             '"route":%s,"attempts":%s,"retries":%s,"error":%s,"time":%r}')
_text = encode_basestring_ascii


def _optional(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


MAX_PENDING_LINES = 256  # a batch is written at once when it reaches this size


_last_second = [-1, ""]  # (epoch second, its date and time of day): formatted once per second


def _iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    second = int(epoch)
    if second != _last_second[0]:
        _last_second[:] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_last_second[1]}.{int((epoch - second) * 1000):03d}Z"


class AccessLog:
    def __init__(self, state: MeshState, stream=sys.stdout, flush_interval: float = 0.0) -> None:
        self.state = state
        self.stream = stream  # None: no access log
        # 0: each line is written at once; more: lines wait at most this many seconds.
        self.flush_interval = flush_interval
        self._pending: list[str] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    def record(self, exchange: Exchange) -> None:
        """The line of one finished request (answered, failed or reset: status 0)."""
        if self.stream is None:
            return
        me = self.state.identity
        source, destination = exchange.workloads(me.workload)
        route = exchange.route
        flags = exchange.flags
        attempts = exchange.attempts
        self._add(HTTP_LINE % (
            _iso(exchange.started), _text(exchange.direction), _text(me.workload), _text(source),
            _optional(exchange.source_principal or None), _text(destination),
            _text(exchange.service_name or "unknown"), _text(exchange.version), _text(exchange.security_policy),
            _text(exchange.method), _text(exchange.authority), _text(exchange.path), _text(exchange.protocol),
            exchange.status, _text(",".join(flags) if flags else "-"), round(exchange.duration_ms, 2),
            exchange.request_bytes, exchange.response_bytes, _optional(exchange.trace_id or None),
            _optional(route.name) if route is not None else "null",
            attempts if route is not None else "null", max(0, attempts - 1) if route is not None else "null",
            _optional(exchange.error), round(time.time(), 3)))

    def tcp(self, direction: str, destination: str, started: float, received: int, sent: int,
            error: str | None, flags: str = "-", principal: str = "", security_policy: str = "none") -> None:
        """The line of one relayed TCP connection, when it closed. `destination` is its
        original 'ip:port'; `received` counts the caller's bytes, `sent` the answer's;
        `principal`, inbound, the caller's verified identity; `security_policy` how the hop
        was secured (Istio's connection_security_policy)."""
        me = self.state.identity
        inbound = direction == INBOUND
        self._write({
            "kind": "tcp",
            "start_time": _iso(started),
            "direction": direction,
            "workload": me.workload,
            "source": "unknown" if inbound else me.workload,
            "source_principal": principal or None,
            "destination_workload": me.workload if inbound else destination,
            "destination": destination,
            "connection_security_policy": security_policy,
            "duration_ms": round((time.time() - started) * 1000, 2),
            "received_bytes": received,
            "sent_bytes": sent,
            "response_flags": flags,
            "error": error,
        })

    def _write(self, entry: dict) -> None:
        if self.stream is None:
            return
        entry["time"] = round(time.time(), 3)
        self._add(LINE_ENCODER.encode(entry))

    def _add(self, line: str) -> None:
        self._pending.append(line)
        if not self.flush_interval or len(self._pending) >= MAX_PENDING_LINES:
            self.flush()
        elif self._flush_timer is None:
            try:
                self._flush_timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
            except RuntimeError:  # no event loop running (a test calling record() directly)
                self.flush()

    def flush(self) -> None:
        """Write the lines not written yet."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._pending and self.stream is not None:
            lines, self._pending = self._pending, []
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
