"""Trace: an OTLP/HTTP endpoint for users without a collector (`meshcli trace`).

Listens where the mesh file's `telemetry.tracing.endpoint` points (by default port
4318, OTLP/HTTP's, on every interface, so sidecars reach it as host.docker.internal),
takes ExportTraceServiceRequest bodies in protobuf (or OTLP's JSON), and groups the
spans by trace id. A trace is complete once no span of it arrived for `settle` seconds
(sidecars export in batches, about every second); it is then handed on as a `Trace`:
its spans with parent links, which `tree()` lays out root first.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from meshproxy.config import OTLP_TRACES_PATH

from meshcli.errors import MeshError

DEFAULT_PORT = 4318  # OTLP/HTTP
DEFAULT_SETTLE = 2.0  # seconds without a new span before a trace is shown
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
MAX_BODY = 16 << 20


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str  # "": a root
    name: str
    kind: str
    service: str  # the resource's service.name
    workload: str  # meshcli.workload, when a sidecar sent it
    start: float  # epoch seconds
    end: float
    attributes: dict
    events: list[dict]
    error: bool

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) * 1000

    def to_json(self) -> dict:
        return {"spanId": self.span_id, "parentSpanId": self.parent_id or None, "name": self.name,
                "kind": self.kind, "service": self.service, "workload": self.workload,
                "startTime": self.start, "durationMs": round(self.duration_ms, 3), "error": self.error,
                "attributes": self.attributes, "events": self.events}


@dataclass
class Trace:
    trace_id: str
    spans: list[Span] = field(default_factory=list)
    last_seen: float = 0.0

    def tree(self) -> list[tuple[int, Span]]:
        """(depth, span) root first, children by start time; a span whose parent never came is a root."""
        ids = {s.span_id for s in self.spans}
        children: dict[str, list[Span]] = {}
        for span in self.spans:
            children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
        laid: list[tuple[int, Span]] = []

        def walk(parent: str, depth: int) -> None:
            for span in sorted(children.get(parent, ()), key=lambda s: s.start):
                laid.append((depth, span))
                walk(span.span_id, depth + 1)

        walk("", 0)
        return laid

    def to_json(self) -> dict:
        start = min(s.start for s in self.spans)
        end = max(s.end for s in self.spans)
        return {"traceId": self.trace_id, "spanCount": len(self.spans), "durationMs": round((end - start) * 1000, 3),
                "spans": [dict(span.to_json(), depth=depth) for depth, span in self.tree()]}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(v) for v in value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.values}
    if kind == "bytes_value":
        return value.hex()
    return value


def _attributes(repeated) -> dict:
    return {kv.key: _value(kv.value) for kv in repeated}


ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _ids_as_base64(body: bytes) -> dict:
    """OTLP's JSON writes ids in hex, where protobuf's JSON mapping expects base64."""
    data = json.loads(body)
    for resource_spans in data.get("resourceSpans") or ():
        for scope_spans in resource_spans.get("scopeSpans") or ():
            for span in scope_spans.get("spans") or ():
                for item in (span, *(span.get("links") or ())):
                    for key in ID_FIELDS:
                        if item.get(key):
                            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    return data


def decode(body: bytes, content_type: str) -> list[Span]:
    """The spans of one OTLP/HTTP export request; ValueError when it is not one."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        if content_type.startswith("application/json"):
            json_format.ParseDict(_ids_as_base64(body), request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"not an OTLP trace export: {exc}") from None
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(Span(
                    s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, KINDS.get(s.kind, "?"),
                    str(resource.get("service.name", "unknown")), str(resource.get("meshcli.workload", "")),
                    s.start_time_unix_nano / 1e9, s.end_time_unix_nano / 1e9, _attributes(s.attributes),
                    [{"name": e.name, "time": e.time_unix_nano / 1e9, "attributes": _attributes(e.attributes)}
                     for e in s.events],
                    s.status.code == 2))
    return spans


class Receiver:
    """The OTLP/HTTP server; `traces()` yields each trace once it settled."""

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, settle: float = DEFAULT_SETTLE) -> None:
        self.settle = settle
        self.arrived: queue.Queue = queue.Queue()
        arrived = self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != OTLP_TRACES_PATH:
                    self._answer(404, b"only " + OTLP_TRACES_PATH.encode() + b" is served here\n")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._answer(413, b"too large\n")
                    return
                try:
                    spans = decode(self.rfile.read(length), self.headers.get("Content-Type", ""))
                except ValueError as exc:
                    self._answer(400, str(exc).encode())
                    return
                arrived.put(spans)
                # An empty ExportTraceServiceResponse, in the request's encoding.
                json_body = self.headers.get("Content-Type", "").startswith("application/json")
                self._answer(200, b"{}" if json_body else b"",
                             "application/json" if json_body else "application/x-protobuf")

            def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MeshError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            hint="another collector may use the port: pick one with --port") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def traces(self, count: int | None = None, seconds: float | None = None) -> Iterator[Trace]:
        """Each trace once settled, until `count` were yielded or `seconds` passed (then the
        traces still open are yielded as they are)."""
        open_traces: dict[str, Trace] = {}
        until = time.monotonic() + seconds if seconds is not None else None
        done = 0
        while count is None or done < count:
            if until is not None and time.monotonic() >= until:
                break
            try:
                for span in self.arrived.get(timeout=0.2):
                    trace = open_traces.setdefault(span.trace_id, Trace(span.trace_id))
                    trace.spans.append(span)
                    trace.last_seen = time.monotonic()
            except queue.Empty:
                pass
            now = time.monotonic()
            for trace_id in [t for t, trace in open_traces.items() if now - trace.last_seen >= self.settle]:
                yield open_traces.pop(trace_id)
                done += 1
                if count is not None and done >= count:
                    return
        for trace in open_traces.values():
            if count is not None and done >= count:
                return
            yield trace
            done += 1
