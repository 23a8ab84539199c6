"""Tracing: one span per request and sidecar, propagated as W3C Trace Context (or B3).

At the request's headers each sidecar takes the caller's context (`traceparent` and
`tracestate`, else B3's single `b3` header, else its `x-b3-*` headers; a malformed one
is ignored, as W3C says) or starts a trace when none came, sampling new traces by the
mesh file's percentage (exact shares, meshproxy/sampling.py); a caller's decision is
kept. A sampled hop gets a span - SERVER on the inbound side, CLIENT on the outbound
side - and the request goes on with that span as its parent, in the format it came in
(W3C always, B3 too when B3 came), so the next hop is its child. Retries and injected
faults are the span's events (Exchange.note()). Finished spans go to the exporter
(meshproxy/otlp.py), which batches them off the event loop.

Off (no `telemetry.tracing` in the mesh file) it does nothing at all: trace headers pass
as the app sent them.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from meshproxy.config import MeshState, SidecarConfig, Tracing as TracingSettings
from meshproxy.exchange import INBOUND, Exchange
from meshproxy.sampling import Shares

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
B3 = "b3"
B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS = (
    "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")
# What this policy rewrites when it continues a trace (lower case, as HTTP/2 and the field map have them).
TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED,
                           B3_FLAGS})
TRACE_HEADERS_BYTES = frozenset(name.encode() for name in TRACE_HEADERS)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX = re.compile(r"[0-9a-f]+")
ZERO_TRACE, ZERO_SPAN = "0" * 32, "0" * 16
SINGLE, MULTI = "b3-single", "b3-multi"  # how B3 came, so it goes on the same way


@dataclass(frozen=True, slots=True)
class Context:
    """A caller's trace context. `span_id` is its span (our parent); "" when B3 sent only a decision."""

    trace_id: str  # 32 lower-case hex digits (a 64-bit B3 id is padded)
    span_id: str  # 16 hex digits
    sampled: bool
    tracestate: str = ""
    b3: str = ""  # "", SINGLE or MULTI


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Context | None:
    """W3C `traceparent` ("00-<trace id>-<parent id>-<flags>"), or None when absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return Context(trace_id, span_id, bool(int(flags, 16) & 1), (tracestate or "").strip())


def _b3_id(value: str, lengths: tuple[int, ...]) -> str | None:
    value = value.strip().lower()
    if len(value) not in lengths or not _HEX.fullmatch(value) or not value.strip("0"):
        return None
    return value.rjust(max(lengths), "0")


def _b3_sampled(value: str | None) -> bool | None:
    """B3's sampling state: "1"/"d" (debug)/"true" sampled, "0"/"false" not, None undecided or malformed."""
    if value is None:
        return None
    value = value.strip().lower()
    return True if value in ("1", "d", "true") else False if value in ("0", "false") else None


def parse_b3_single(value: str | None) -> Context | None:
    """B3's single header: "<trace id>-<span id>[-<sampled>[-<parent span id>]]", or just a decision."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) == 1:
        sampled = _b3_sampled(parts[0])
        return Context("", "", sampled, b3=SINGLE) if sampled is not None else None
    if len(parts) > 4:
        return None
    trace_id, span_id = _b3_id(parts[0], (16, 32)), _b3_id(parts[1], (16,))
    sampled = _b3_sampled(parts[2]) if len(parts) > 2 else True  # ids without a decision: sample (defer)
    if trace_id is None or span_id is None or sampled is None:
        return None
    if len(parts) == 4 and _b3_id(parts[3], (16,)) is None:
        return None
    return Context(trace_id, span_id, sampled, b3=SINGLE)


def parse_b3_multi(fields: Mapping[str, str]) -> Context | None:
    """B3's x-b3-* headers, or None when there are none or they are malformed."""
    raw_trace, raw_span = fields.get(B3_TRACE_ID), fields.get(B3_SPAN_ID)
    sampled = True if fields.get(B3_FLAGS, "").strip() == "1" else _b3_sampled(fields.get(B3_SAMPLED))
    if raw_trace is None and raw_span is None:
        return Context("", "", sampled, b3=MULTI) if sampled is not None else None
    trace_id = _b3_id(raw_trace or "", (16, 32))
    span_id = _b3_id(raw_span or "", (16,))
    if trace_id is None or span_id is None:
        return None
    return Context(trace_id, span_id, True if sampled is None else sampled, b3=MULTI)


def extract(fields: Mapping[str, str]) -> Context | None:
    """The caller's context from request headers (lower-case names): W3C first, then B3."""
    return (parse_traceparent(fields.get(TRACEPARENT), fields.get(TRACESTATE))
            or parse_b3_single(fields.get(B3)) or parse_b3_multi(fields))


# Ids need to be unique, not secret: the random module's generator (as OpenTelemetry's SDKs
# use), not a system call per id. Never all zeros, which W3C reserves.
def new_trace_id() -> str:
    return "%032x" % (random.getrandbits(128) or 1)


def new_span_id() -> str:
    return "%016x" % (random.getrandbits(64) or 1)


def propagation_headers(trace_id: str, span_id: str, sampled: bool, tracestate: str = "", b3: str = "",
                        parent_id: str = "") -> list[tuple[str, str]]:
    """The headers that make `span_id` the parent of the next hop: W3C, and B3 as it came."""
    headers = [(TRACEPARENT, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}")]
    if tracestate:
        headers.append((TRACESTATE, tracestate))
    if b3 == SINGLE:
        headers.append((B3, f"{trace_id}-{span_id}-{int(sampled)}" + (f"-{parent_id}" if parent_id else "")))
    elif b3 == MULTI:
        headers += [(B3_TRACE_ID, trace_id), (B3_SPAN_ID, span_id), (B3_SAMPLED, str(int(sampled)))]
        if parent_id:
            headers.append((B3_PARENT_SPAN_ID, parent_id))
    return headers


@dataclass(slots=True)
class Span:
    """One hop's span while its request runs; the exporter turns it into OTLP."""

    trace_id: str
    span_id: str
    parent_id: str  # "": the root
    kind: str  # "server" (inbound) or "client" (outbound)
    name: str
    start: float  # epoch seconds
    end: float = 0.0
    attributes: dict = field(default_factory=dict)
    events: list = field(default_factory=list)  # (epoch seconds, name, attributes)
    error: bool = False


class Tracing:
    def __init__(self, state: MeshState, exporter_for: Callable[[TracingSettings], object]) -> None:
        """`exporter_for(settings)` makes the exporter of an endpoint (otlp.Exporter); it
        has `export(span)` and `close()`."""
        self.state = state
        self.exporter_for = exporter_for
        self.settings: TracingSettings | None = None
        self.exporter = None
        self.shares = Shares()
        state.subscribe(self._configure)

    @property
    def on(self) -> bool:
        return self.settings is not None

    def _configure(self, config: SidecarConfig) -> None:
        settings = config.telemetry.tracing
        if settings == self.settings:
            return
        old, self.exporter = self.exporter, None
        if old is not None:
            old.close()
        self.shares.clear()
        if settings is not None:
            self.exporter = self.exporter_for(settings)
        self.settings = settings

    def start(self, exchange: Exchange, fields: Mapping[str, str], headers: list[tuple[bytes, bytes]]) -> None:
        """At the request's headers, once routing has run: join or start its trace, and set
        the headers (in `headers`, the list to forward) that carry it on."""
        settings = self.settings
        if settings is None:
            return
        caller = extract(fields)
        if caller is not None and caller.trace_id:
            trace_id, parent_id, sampled = caller.trace_id, caller.span_id, caller.sampled
        else:
            trace_id, parent_id = new_trace_id(), ""
            sampled = caller.sampled if caller is not None else self.shares.pick(settings,
                                                                                  settings.sampling_percent)
        exchange.trace_id = trace_id
        if not sampled and caller is not None and caller.trace_id:
            return  # the caller decided: its headers go on as they are
        span_id = new_span_id()
        # The caller's trace headers give way to ours, malformed ones too (never two traceparents).
        headers[:] = [h for h in headers if h[0].lower() not in TRACE_HEADERS_BYTES]
        for name, value in propagation_headers(trace_id, span_id, sampled, caller.tracestate if caller else "",
                                               caller.b3 if caller else "", parent_id):
            headers.append((name.encode(), value.encode()))
        if sampled:
            inbound = exchange.direction == INBOUND
            name = exchange.service_name or exchange.authority
            exchange.span = Span(trace_id, span_id, parent_id, "server" if inbound else "client",
                                 f"{exchange.method} {name}{exchange.path.split('?', 1)[0]}", exchange.started)
            exchange.events = []

    def finish(self, exchange: Exchange) -> None:
        """The request is over: its span, complete, to the exporter."""
        span, exchange.span = exchange.span, None
        if span is None or self.exporter is None:
            return
        source, destination = exchange.workloads(self.state.identity.workload)
        span.end = exchange.ended or time.time()
        span.events = exchange.events or []
        span.error = exchange.status == 0 or exchange.status >= 500
        attributes = {
            "http.request.method": exchange.method,
            "url.path": exchange.path.split("?", 1)[0],
            "server.address": exchange.authority,
            "network.protocol.version": exchange.protocol.removeprefix("HTTP/"),
            "http.response.status_code": exchange.status,
            "meshcli.direction": exchange.direction,
            "meshcli.source_workload": source,
            "meshcli.destination_service": exchange.service_name or "unknown",
            "meshcli.destination_workload": destination,
            "meshcli.destination_version": exchange.version,
            "meshcli.response_flags": ",".join(exchange.flags) or "-",
        }
        if exchange.route is not None:
            attributes["meshcli.route"] = exchange.route.name
            attributes["meshcli.attempts"] = exchange.attempts
            attributes["meshcli.retries"] = max(0, exchange.attempts - 1)
        if exchange.source_principal:
            attributes["meshcli.source_principal"] = exchange.source_principal
        if exchange.error:
            attributes["error.type"] = exchange.error
        span.attributes = attributes
        self.exporter.export(span)

    def stop(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
