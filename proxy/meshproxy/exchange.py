"""Exchange: what one request carries through the policies, on either path.

The fast path (meshproxy/fastpath/) and the mitmproxy adapters (meshproxy/addons/) make
one Exchange per request and hand it to the policies in meshproxy/policy/ in the same
order: routing fills in where it goes, faults may answer it, resilience forwards it,
telemetry, the access log, tracing and tap record it. Nothing else travels between the policies, so a policy is written
once for both paths. Also here: the local replies the sidecar answers with itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from meshproxy.config import REDACTED, Direction, Route, Service, Version

INBOUND = Direction.INBOUND.value
OUTBOUND = Direction.OUTBOUND.value


@dataclass(slots=True, eq=False)
class Exchange:
    direction: str  # INBOUND (to the app behind this sidecar) or OUTBOUND (from it)
    method: str
    authority: str  # the Host / :authority the app sent
    path: str  # with the query
    protocol: str = "HTTP/1.1"  # as the app spoke it: HTTP/1.0, HTTP/1.1, HTTP/2.0
    grpc: bool = False
    source: str = "unknown"  # the calling workload
    # The caller's verified identity (a SPIFFE ID from its mTLS certificate; "" without one)
    # and how the hop was secured: Istio's connection_security_policy, "mutual_tls" or "none".
    source_principal: str = ""
    security_policy: str = "none"
    service_name: str = ""  # the destination service, or the host when leaving the mesh
    service: Service | None = None  # its mesh config; None: not a mesh service (no policies)
    route: Route | None = None
    picker: Any = None  # policy.routing.RoutePicker: pick() a version, done() with it
    upstream: Version | None = None  # the version tried last
    version: str = "unknown"
    deadline: float | None = None  # the route's timeout, in time.monotonic()
    flags: list[str] = field(default_factory=list)  # Envoy's response flags: DI, FI, UT, UO, UF, UC, URX
    attempts: int = 0  # upstream tries (0: answered by the sidecar itself)
    mirrored: str | None = None  # the version a copy went to
    denied: LocalReply | None = None  # authorization's 403, when it refused the caller
    status: int = 0  # the answer's status; 0: none (reset, error)
    grpc_status: str = ""  # gRPC's grpc-status of the answer, when the path saw one
    request_bytes: int = 0  # body sizes (Istio's istio_request_bytes / istio_response_bytes)
    response_bytes: int = 0
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    trace_id: str = ""  # the W3C trace id it belongs to ("": tracing is off)
    span: Any = None  # policy.tracing.Span while this hop is sampled, else None
    # (epoch seconds, name, attributes) of what happened to it (retries, faults), kept only
    # for a sampled span; None: nobody reads them, note() drops them.
    events: list | None = None
    headers: Mapping[str, str] | None = None  # the request's headers (lower-case names), kept only while tapped

    @property
    def duration_ms(self) -> float:
        return ((self.ended or time.time()) - self.started) * 1000

    def send_to(self, version: Version) -> Version:
        """Make `version` the upstream (held in the picker's balancer until release())."""
        self.upstream = version
        self.version = version.name
        return version

    def pick_again(self, tried: Collection[Version]) -> Version:
        """For a retry: release the current upstream and pick another, preferring untried versions."""
        self.picker.done(self.upstream)
        return self.send_to(self.picker.pick(tried))

    def answer_locally(self, reply: LocalReply) -> LocalReply:
        """Record a reply the sidecar gives itself (its flag and status); returns it to write."""
        if reply.flag:
            self.flags.append(reply.flag)
        self.status = reply.status
        self.response_bytes = len(reply.body)
        return reply

    def workloads(self, here: str) -> tuple[str, str]:
        """(calling workload, called workload) of this hop, seen from the sidecar of workload `here`."""
        if self.direction == INBOUND:
            return self.source, here
        upstream = self.upstream
        return here, upstream.host if upstream is not None else self.service_name

    def note(self, name: str, **attributes: Any) -> None:
        """Record an event of this request (a retry, an injected fault) for its span."""
        if self.events is not None:
            self.events.append((time.time(), name, attributes))

    def release(self) -> None:
        picker, self.picker = self.picker, None
        if picker is not None:
            picker.done(self.upstream)


def redact(headers: Mapping[str, str], redacted: Collection[str]) -> dict[str, str]:
    """Headers (lower-case names) as logs, tap and spans may show them: the values of the
    `redacted` names (config.Telemetry.redacted) replaced by REDACTED."""
    return {name: REDACTED if name in redacted else value for name, value in headers.items()}


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of an inbound connection, as far as this sidecar can tell:
    the verified SPIFFE ID of a mesh mTLS caller ("" for plaintext), and the port it called."""

    principal: str
    security_policy: str  # config.SecurityPolicy
    port: int
    address: str = ""  # the caller's IP


@dataclass(frozen=True, slots=True)
class LocalReply:
    """An answer the sidecar gives itself (Envoy's local replies), with the flag it sets."""

    status: int
    body: bytes
    flag: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def grpc_status(headers) -> str:
    """The grpc-status among an answer's headers or trailers ((bytes, bytes) pairs); "" without one."""
    return next((value.decode("latin-1") for name, value in headers if name == b"grpc-status"), "")


CIRCUIT_HEADER = "x-meshcli-circuit"
FAULT_HEADER = "x-meshcli-fault"


def timed_out() -> LocalReply:
    """The route's timeout expired (Envoy's 504, flag UT)."""
    return LocalReply(504, b"upstream request timeout", "UT")


def overflow() -> LocalReply:
    return LocalReply(503, b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
                      "UO", ((CIRCUIT_HEADER, "open"),))


def connect_failure() -> LocalReply:
    return LocalReply(503, b"upstream connect error or disconnect/reset before headers. "
                           b"reset reason: connection failure", "UF")


def reset_before_headers() -> LocalReply:
    # Envoy's "upstream connection termination"
    return LocalReply(503, b"upstream connect error or disconnect/reset before headers. "
                           b"reset reason: connection termination", "UC")


def fault_abort(status: int) -> LocalReply:
    return LocalReply(status, b"fault filter abort", "FI", ((FAULT_HEADER, "abort"),))
