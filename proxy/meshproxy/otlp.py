"""OTLP/HTTP export of finished spans: batched on a thread, never in a request's way.

`export()` is all the event loop does: one append to a bounded queue (the oldest span
is dropped when the collector cannot keep up). A daemon thread sends a batch when
BATCH spans wait or every FLUSH_SECONDS, as one ExportTraceServiceRequest in protobuf
(opentelemetry-proto's generated messages, imported only when tracing is on), to the
mesh file's endpoint. `host.docker.internal` (where `meshcli trace` listens, on the host)
resolves by Docker's DNS where Docker provides it, else to the pod's default gateway,
which is the host on a Linux engine. A collector that is down or slow loses its batches, counted and
logged at most once a minute; requests never wait for it.
"""

from __future__ import annotations

import collections
import http.client
import logging
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

from meshproxy.config import Identity, Tracing

logger = logging.getLogger("meshproxy.otlp")

QUEUE = 4096  # spans waiting for the thread
BATCH = 256  # spans per request to the collector
FLUSH_SECONDS = 1.0
TIMEOUT_SECONDS = 2.0
KINDS = {"server": 2, "client": 3}  # OTLP's SpanKind
STATUS_ERROR = 2  # OTLP's Status.STATUS_CODE_ERROR
SCOPE = "meshcli-sidecar"
HOST_ALIAS = "host.docker.internal"


def default_gateway(routes: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway of this network namespace, or None."""
    try:
        with open(routes) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    except (OSError, ValueError):
        pass
    return None


def resolve_host(host: str) -> str:
    """`host`, or for HOST_ALIAS without a DNS entry the default gateway (the Docker host)."""
    if host != HOST_ALIAS:
        return host
    try:
        socket.getaddrinfo(host, None)
        return host
    except OSError:
        return default_gateway() or host


def _value(value, message) -> None:
    """Fill an OTLP AnyValue."""
    if isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int):
        message.int_value = value
    elif isinstance(value, float):
        message.double_value = value
    else:
        message.string_value = str(value)


def _attributes(attributes: dict, repeated) -> None:
    for key, value in attributes.items():
        entry = repeated.add()
        entry.key = key
        _value(value, entry.value)


def encode(spans, identity: Identity) -> bytes:
    """An ExportTraceServiceRequest of `spans` (policy.tracing.Span) from this workload."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _attributes({"service.name": identity.service, "service.version": identity.version,
                 "service.namespace": identity.project, "meshcli.workload": identity.workload},
                resource_spans.resource.attributes)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE
    for span in spans:
        out = scope_spans.spans.add()
        out.trace_id = bytes.fromhex(span.trace_id)
        out.span_id = bytes.fromhex(span.span_id)
        if span.parent_id:
            out.parent_span_id = bytes.fromhex(span.parent_id)
        out.name = span.name
        out.kind = KINDS[span.kind]
        out.start_time_unix_nano = int(span.start * 1e9)
        out.end_time_unix_nano = int(span.end * 1e9)
        _attributes(span.attributes, out.attributes)
        for at, name, attributes in span.events:
            event = out.events.add()
            event.time_unix_nano = int(at * 1e9)
            event.name = name
            _attributes(attributes, event.attributes)
        if span.error:
            out.status.code = STATUS_ERROR
    return request.SerializeToString()


class Exporter:
    def __init__(self, settings: Tracing, identity: Identity) -> None:
        url = urlsplit(settings.endpoint)
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname, url.port or (443 if self.https else 80)
        self.path = url.path or "/"
        self.identity = identity
        self.queue: collections.deque = collections.deque(maxlen=QUEUE)
        self.wake = threading.Event()
        self.stopped = False
        self.sent = self.dropped = self.failed = 0
        self._last_warning = 0.0
        self._thread: threading.Thread | None = None

    def export(self, span) -> None:
        """On the event loop: queue one finished span."""
        queue = self.queue
        if len(queue) == QUEUE:
            self.dropped += 1
        queue.append(span)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
            self._thread.start()
        elif len(queue) >= BATCH:
            self.wake.set()

    def close(self) -> None:
        """Send what is queued, then stop (the thread ends after its current batch)."""
        self.stopped = True
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
                self._send(batch)
            if self.stopped:
                return

    def _send(self, batch: list) -> None:
        try:
            body = encode(batch, self.identity)
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = kind(resolve_host(self.host), self.port, timeout=TIMEOUT_SECONDS)
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/x-protobuf"})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            if response.status >= 300:
                raise OSError(f"HTTP {response.status}")
            self.sent += len(batch)
        except Exception as exc:  # a collector that is down, slow or wrong costs its batch, nothing else
            self.failed += len(batch)
            now = time.monotonic()
            if now - self._last_warning >= 60:
                self._last_warning = now
                logger.warning("cannot export %d spans to %s:%s%s: %s", len(batch), self.host, self.port,
                               self.path, exc)

    def stats(self) -> dict:
        return {"queued": len(self.queue), "sent": self.sent, "failed": self.failed, "dropped": self.dropped}
