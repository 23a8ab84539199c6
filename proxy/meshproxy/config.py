"""The compiled sidecar config: the one contract between meshcli and its sidecars.

meshcli builds these values from mesh.yaml (meshcli/sidecar_config.py) and writes them
with `dump()`; every sidecar reads them back with `parse()`, once per config version, so
request hooks only read precomputed state; a config is accepted whole or rejected whole.
The vocabulary (enums), the defaults and every constant that crosses the process
boundary (file names, the mount directory, ports, the sidecar's uid, the source header,
environment variables) are defined here and nowhere else. The control plane imports this
module as it is, so it imports nothing beyond the standard library (a unit test checks).

sidecar.json, schema 2. Durations are milliseconds, percentages numbers from 0 to 100,
optional keys absent or null:

    {"schema": 2, "project": "shop",
     "version": "3f2a9c0d1b7e",    # sha256[:12] of content(): all but version and generation
     "generation": 4,              # the previous file's generation + 1 when the version changes
     "services": {"payment": {
        "versions": [{"name": "v1", "host": "payment-v1"}], "ports": [8080], "loadBalancer": "round-robin",
        "routes": [                # in order; always ends with a route without "match" (the default)
          {"name": "canary",
           "match": [{"path": {"kind": "prefix", "value": "/api"}, "methods": ["GET"],
                      "headers": [{"name": "x-canary", "kind": "exact", "value": "true"}],
                      "query": [{"name": "debug", "kind": "present"}], "source": "frontend"}],
           "split": [{"version": "v2", "weight": 100}],     # []: loadBalancer across all versions
           "timeoutMs": 2000,
           "retries": {"attempts": 3, "perTryTimeoutMs": 500, "retryOn": ["5xx"],
                       "retriableStatusCodes": [], "backoffMs": 25, "retryNonIdempotent": false},
           "mirror": {"version": "v2", "percent": 100.0},
           "fault": {"delay": {"ms": 1000, "percent": 100.0},
                     "abort": {"status": 503, "percent": 10.0}}},   # or {"reset": true, ...}
          {"name": "default", "split": [...], ...}],
        "circuitBreaker": {"maxConnections": 100, "maxPendingRequests": 10, "maxRequestsPerConnection": 0},
        "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": null,  # null: off
                             "baseEjectionTimeMs": 30000, "maxEjectionPercent": 10},
        "tcpFault": {"kind": "latency", "latencyMs": 100, "jitterMs": 20, "rateBytesPerSecond": 0,
                     "bytes": 0, "percent": 100.0}}},
     "faults": [                   # runtime faults of `meshcli fault`, on top of the mesh file
        {"id": "f-1a2b", "service": "payment", "source": null, "http": {...a route's fault...},
         "tcp": {...a tcpFault...}, "until": 1764000000.5,   # epoch seconds; null: until cleared
         "created": 1763999970.5}]}

meshcli's `.mesh/faults.json` holds the same fault objects (`dump_faults()`,
`parse_faults()`). In memory durations are seconds; `dump()` writes them back as the
milliseconds they were read as, so `parse(dump(config)) == config`.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

# --- what crosses the process boundary ----------------------------------------------------

SCHEMA = 2
CONFIG_FILE = "sidecar.json"  # written by meshcli only, watched by every sidecar
REJECTED_FILE = "rejected.json"  # beside it: why meshcli did not apply the last mesh file
CONFIG_DIR = "/etc/meshcli"  # where a sidecar finds both (meshcli's config directory, mounted read-only)
ADMIN_PORT = 15000  # /config_dump, /stats
OUTBOUND_PORT = 15001  # the app's outgoing TCP, redirected by the pod's iptables rules
INBOUND_PORT = 15006  # incoming TCP
HEALTH_PORT = 15020  # HEALTH_PATH
METRICS_PORT = 15090  # /stats/prometheus
HEALTH_PATH = "/healthz/ready"
SIDECAR_UID = 1337  # the proxy runs as this user; its own traffic is not redirected
SOURCE_HEADER = "x-meshcli-source"  # the calling workload, from the client side's sidecar to the server side's
# The environment meshcli gives the sidecar (and the controller) containers: Identity.from_env().
ENV_PROJECT = "MESH_PROJECT"
ENV_WORKLOAD = "MESH_WORKLOAD"
ENV_SERVICE = "MESH_SERVICE"
ENV_VERSION = "MESH_VERSION"
ENV_CONFIG_DIR = "MESH_CONFIG_DIR"
TRUST_DOMAIN = "cluster.local"  # of the workloads' SPIFFE IDs, Istio's default


def spiffe_id(namespace: str, service: str) -> str:
    """A workload's identity as Istio spells it (the compose project is the namespace, the
    service its service account): spiffe://cluster.local/ns/<project>/sa/<service>."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


# --- vocabulary and defaults --------------------------------------------------------------


class LoadBalancer(StrEnum):  # the policies balancer.py implements
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    LEAST_REQUEST = "least-request"


class MatchKind(StrEnum):  # headers and query parameters; a path takes all but PRESENT
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"


class RetryOn(StrEnum):  # Envoy's retry conditions
    FIVE_XX = "5xx"
    GATEWAY_ERROR = "gateway-error"
    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"


class TcpFaultKind(StrEnum):  # Toxiproxy's toxics
    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    LIMIT_DATA = "limit-data"
    SLICER = "slicer"


class Direction(StrEnum):  # of a flow through a sidecar: its app calling out, or a call to its app
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def _values(kinds: Iterable[StrEnum]) -> tuple[str, ...]:
    return tuple(kind.value for kind in kinds)


LOAD_BALANCERS = _values(LoadBalancer)
STRING_MATCH_KINDS = _values(MatchKind)
PATH_MATCH_KINDS = _values(kind for kind in MatchKind if kind is not MatchKind.PRESENT)
RETRY_ON = _values(RetryOn)
TCP_FAULT_KINDS = _values(TcpFaultKind)

DEFAULT_LOAD_BALANCER = LoadBalancer.ROUND_ROBIN.value
DEFAULT_ROUTE = "default"  # the name of the route that takes every other request
DEFAULT_RETRY_ON = _values((RetryOn.FIVE_XX, RetryOn.CONNECT_FAILURE, RetryOn.RESET))
DEFAULT_BACKOFF_MS = 25  # base interval between tries; exponential with jitter
DEFAULT_PERCENT = 100.0  # of requests (faults, mirroring) or connections (TCP faults)
DEFAULT_CONSECUTIVE_5XX = 5  # outlier detection, Istio's defaults
DEFAULT_BASE_EJECTION_TIME_MS = 30_000
DEFAULT_MAX_EJECTION_PERCENT = 10


def seconds(ms: int | float) -> float:
    """Milliseconds as the file carries them -> seconds as the sidecar uses them."""
    return ms / 1000.0


def milliseconds(value: float) -> int | float:
    """Seconds -> the milliseconds they came from: 0.3 -> 300, 0.0015 -> 1.5 (whole numbers as int,
    so equal values always write the same JSON, hence the same config version)."""
    ms = round(value * 1000.0, 3)
    return int(ms) if ms == int(ms) else ms


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    project: str
    workload: str
    service: str
    version: str

    @classmethod
    def from_env(cls, env=os.environ) -> Identity:
        return cls(
            project=env.get(ENV_PROJECT, ""),
            workload=env.get(ENV_WORKLOAD, "unknown"),
            service=env.get(ENV_SERVICE, env.get(ENV_WORKLOAD, "unknown")),
            version=env.get(ENV_VERSION, ""),
        )


@dataclass(frozen=True)
class Version:
    name: str
    host: str  # DNS name of the workload's pod


@dataclass(frozen=True)
class StringMatch:
    kind: str  # MatchKind
    value: str = ""
    pattern: re.Pattern | None = field(default=None, compare=False, repr=False)  # REGEX, compiled once

    def __post_init__(self) -> None:
        if self.kind == MatchKind.REGEX and self.pattern is None:
            object.__setattr__(self, "pattern", re.compile(self.value))

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.kind == MatchKind.PRESENT:
            return True
        if self.kind == MatchKind.EXACT:
            return actual == self.value
        if self.kind == MatchKind.PREFIX:
            return actual.startswith(self.value)
        return self.pattern is not None and self.pattern.fullmatch(actual) is not None


@dataclass(frozen=True)
class RequestMatch:
    """All conditions must hold (AND); a route's list of matches is an OR."""

    path: StringMatch | None = None
    methods: tuple[str, ...] = ()  # upper case; empty = any
    headers: tuple[tuple[str, StringMatch], ...] = ()  # header names lower case
    query: tuple[tuple[str, StringMatch], ...] = ()
    source: str | None = None  # the calling service (this sidecar's own service)

    def matches(self, method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str],
                source: str) -> bool:
        if self.source is not None and self.source != source:
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        if self.path is not None and not self.path.matches(path):
            return False
        if any(not m.matches(headers.get(name)) for name, m in self.headers):
            return False
        return all(m.matches(query.get(name)) for name, m in self.query)


@dataclass(frozen=True)
class WeightedVersion:
    version: str
    weight: int  # percent, the weights of a route sum to 100


@dataclass(frozen=True)
class Retries:
    attempts: int  # retries after the first try (Istio's meaning)
    per_try_timeout: float | None = None  # seconds
    retry_on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)  # RetryOn
    retriable_status_codes: frozenset[int] = frozenset()
    backoff: float = seconds(DEFAULT_BACKOFF_MS)  # base interval in seconds; exponential with jitter
    retry_non_idempotent: bool = False


@dataclass(frozen=True)
class Mirror:
    version: str
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class Delay:
    seconds: float
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class Abort:
    status: int | None = None  # HTTP status to answer with...
    reset: bool = False  # ...or reset the caller's connection instead
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class HttpFault:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class TcpFault:
    """Toxiproxy's toxics. Which fields matter depends on the kind."""

    kind: str  # TcpFaultKind
    latency: float = 0.0  # seconds, latency and slicer (delay between slices)
    jitter: float = 0.0  # seconds, latency
    rate: int = 0  # bytes per second, bandwidth
    bytes: int = 0  # limit-data: close after this many bytes; slicer: average slice size
    percent: float = DEFAULT_PERCENT  # share of connections affected


@dataclass(frozen=True)
class Route:
    name: str
    matches: tuple[RequestMatch, ...] = ()  # empty: matches every request
    split: tuple[WeightedVersion, ...] = ()  # empty: balance across all versions
    timeout: float | None = None  # seconds, the whole request including retries
    retries: Retries | None = None
    mirror: Mirror | None = None
    fault: HttpFault | None = None

    def matches_request(self, method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str],
                        source: str) -> bool:
        return not self.matches or any(m.matches(method, path, headers, query, source) for m in self.matches)


@dataclass(frozen=True)
class CircuitBreaker:
    max_connections: int | None = None  # requests in flight to the service (one per connection)
    max_pending_requests: int | None = None  # requests waiting for a connection slot
    max_requests_per_connection: int | None = None  # then the upstream connection is closed


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int | None = DEFAULT_CONSECUTIVE_5XX  # 5xx answers in a row that eject a version; 0/None: never
    consecutive_gateway_errors: int | None = None  # 502/503/504 and connect failures in a row; 0/None: never
    base_ejection_time: float = seconds(DEFAULT_BASE_EJECTION_TIME_MS)  # multiplied by the ejections so far
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT  # at most this share of a service's versions


@dataclass(frozen=True)
class Service:
    name: str
    versions: tuple[Version, ...]
    ports: tuple[int, ...] = ()
    load_balancer: str = DEFAULT_LOAD_BALANCER  # LoadBalancer
    routes: tuple[Route, ...] = (Route(DEFAULT_ROUTE),)  # in order; the last one matches everything
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    tcp_fault: TcpFault | None = None  # from the mesh file

    def version(self, name: str) -> Version | None:
        return next((v for v in self.versions if v.name == name), None)

    def route_for(self, method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str],
                  source: str) -> Route:
        for route in self.routes:
            if route.matches_request(method, path, headers, query, source):
                return route
        return self.routes[-1]


@dataclass(frozen=True)
class RuntimeFault:
    """A fault set with `meshcli fault`: applies on top of the mesh file until it expires."""

    id: str
    service: str
    source: str | None = None  # only calls from this service; None: every caller
    http: HttpFault | None = None
    tcp: TcpFault | None = None
    until: float | None = None  # epoch seconds; None: until cleared
    created: float | None = None  # epoch seconds, when it was set

    def active(self, now: float | None = None) -> bool:
        return self.until is None or (now if now is not None else time.time()) < self.until

    def applies(self, service: str, source: str, now: float | None = None) -> bool:
        return self.service == service and self.source in (None, source) and self.active(now)

    def seconds_left(self, now: float) -> float | None:
        return None if self.until is None else max(0.0, self.until - now)


@dataclass(frozen=True)
class SidecarConfig:
    version: str  # content hash; reported so meshcli status can say SYNCED/STALE
    services: dict[str, Service] = field(default_factory=dict)
    # host name (logical service) -> service; built once per version (from services when not given)
    by_host: dict[str, Service] = field(default_factory=dict)
    generation: int = 0  # counts the configs meshcli compiled for this project
    faults: tuple[RuntimeFault, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # as parsed, for /config_dump
    project: str = ""

    def __post_init__(self) -> None:
        if self.services and not self.by_host:
            object.__setattr__(self, "by_host", dict(self.services))

    def http_fault(self, service: Service, route: Route, source: str, now: float | None = None) -> HttpFault | None:
        """The fault for a call: a runtime fault first, else the route's own."""
        for fault in self.faults:
            if fault.http is not None and fault.applies(service.name, source, now):
                return fault.http
        return route.fault

    def tcp_fault(self, service: Service, source: str, now: float | None = None) -> TcpFault | None:
        for fault in self.faults:
            if fault.tcp is not None and fault.applies(service.name, source, now):
                return fault.tcp
        return service.tcp_fault


EMPTY = SidecarConfig(version="")


# --- JSON: each type's reader beside its writer -------------------------------------------


class _Reader:
    """Typed access to one JSON object; every problem becomes a ValueError naming where."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object")
        self.data, self.where = data, where

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ValueError(f"{self.where}: missing {key!r}")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise ValueError(f"{self.where}: {key!r} has the wrong type")
        return value

    def nullable(self, key: str, kind: type, default: Any) -> Any:
        """get(), except that an explicit null stays None ("off"); only a missing key takes the default."""
        return None if key in self.data and self.data[key] is None else self.get(key, kind, default)

    def seconds(self, key: str, default: float | None = None) -> float | None:
        ms = self.get(key, (int, float))
        return default if ms is None else seconds(ms)

    def choice(self, key: str, choices: tuple[str, ...], what: str, default: str | None = None) -> str:
        value = self.get(key, str, default, required=default is None)
        if value not in choices:
            raise ValueError(f"{self.where}: unknown {what} {value!r}; expected one of {', '.join(choices)}")
        return value

    def child(self, key: str) -> _Reader | None:
        value = self.data.get(key)
        return None if value is None else _Reader(value, f"{self.where}.{key}")

    def items(self, key: str, required: bool = False) -> list[_Reader]:
        return [_Reader(item, f"{self.where}.{key}[{i}]")
                for i, item in enumerate(self.get(key, list, [], required=required))]


def _without_none(data: dict) -> dict:
    return {key: value for key, value in data.items() if value is not None}


def _string_match(r: _Reader, kinds: tuple[str, ...] = STRING_MATCH_KINDS) -> StringMatch:
    kind = r.choice("kind", kinds, "match kind")
    value = r.get("value", str, "")
    try:
        return StringMatch(kind, value)
    except re.error as exc:
        raise ValueError(f"{r.where}: bad regex {value!r}: {exc}") from None


def _string_match_json(match: StringMatch) -> dict:
    return {"kind": match.kind} if match.kind == MatchKind.PRESENT else {"kind": match.kind, "value": match.value}


def _named_matches(readers: list[_Reader], lower: bool) -> tuple[tuple[str, StringMatch], ...]:
    names = [r.get("name", str, required=True) for r in readers]
    return tuple((name.lower() if lower else name, _string_match(r)) for name, r in zip(names, readers))


def _named_matches_json(matches: tuple[tuple[str, StringMatch], ...]) -> list[dict] | None:
    return [{"name": name, **_string_match_json(m)} for name, m in matches] or None


def _request_match(r: _Reader) -> RequestMatch:
    path = r.child("path")
    return RequestMatch(
        path=_string_match(path, PATH_MATCH_KINDS) if path is not None else None,
        methods=tuple(m.upper() for m in r.get("methods", list, [])),
        headers=_named_matches(r.items("headers"), lower=True),
        query=_named_matches(r.items("query"), lower=False),
        source=r.get("source", str),
    )


def _request_match_json(match: RequestMatch) -> dict:
    return _without_none({
        "path": _string_match_json(match.path) if match.path else None,
        "methods": list(match.methods) or None,
        "headers": _named_matches_json(match.headers),
        "query": _named_matches_json(match.query),
        "source": match.source,
    })


def _retries(r: _Reader | None) -> Retries | None:
    if r is None:
        return None
    retry_on = frozenset(r.get("retryOn", list, list(DEFAULT_RETRY_ON)))
    unknown = retry_on - set(RETRY_ON)
    if unknown:
        raise ValueError(f"{r.where}: unknown retryOn {sorted(unknown)}")
    return Retries(
        attempts=r.get("attempts", int, required=True),
        per_try_timeout=r.seconds("perTryTimeoutMs"),
        retry_on=retry_on,
        retriable_status_codes=frozenset(r.get("retriableStatusCodes", list, [])),
        backoff=r.seconds("backoffMs", seconds(DEFAULT_BACKOFF_MS)),
        retry_non_idempotent=r.get("retryNonIdempotent", bool, False),
    )


def _retries_json(retries: Retries) -> dict:
    return _without_none({
        "attempts": retries.attempts,
        "perTryTimeoutMs": milliseconds(retries.per_try_timeout) if retries.per_try_timeout is not None else None,
        "retryOn": [kind for kind in RETRY_ON if kind in retries.retry_on],  # sets in a fixed order
        "retriableStatusCodes": sorted(retries.retriable_status_codes),
        "backoffMs": milliseconds(retries.backoff),
        "retryNonIdempotent": retries.retry_non_idempotent,
    })


def _http_fault(r: _Reader | None) -> HttpFault | None:
    if r is None:
        return None
    delay = abort = None
    if (d := r.child("delay")) is not None:
        delay = Delay(d.seconds("ms") or 0.0, d.get("percent", float, DEFAULT_PERCENT))
    if (a := r.child("abort")) is not None:
        abort = Abort(a.get("status", int), a.get("reset", bool, False), a.get("percent", float, DEFAULT_PERCENT))
        if abort.status is None and not abort.reset:
            raise ValueError(f"{a.where}: needs a status or reset")
    return HttpFault(delay, abort) if delay or abort else None


def _http_fault_json(fault: HttpFault) -> dict:
    delay, abort = fault.delay, fault.abort
    what = ({"reset": True} if abort.reset else {"status": abort.status}) if abort else {}
    return _without_none({
        "delay": {"ms": milliseconds(delay.seconds), "percent": delay.percent} if delay else None,
        "abort": {**what, "percent": abort.percent} if abort else None,
    })


def _tcp_fault(r: _Reader | None) -> TcpFault | None:
    if r is None:
        return None
    return TcpFault(r.choice("kind", TCP_FAULT_KINDS, "TCP fault"), latency=r.seconds("latencyMs", 0.0),
                    jitter=r.seconds("jitterMs", 0.0), rate=r.get("rateBytesPerSecond", int, 0),
                    bytes=r.get("bytes", int, 0), percent=r.get("percent", float, DEFAULT_PERCENT))


def _tcp_fault_json(fault: TcpFault) -> dict:
    return {"kind": fault.kind, "latencyMs": milliseconds(fault.latency), "jitterMs": milliseconds(fault.jitter),
            "rateBytesPerSecond": fault.rate, "bytes": fault.bytes, "percent": fault.percent}


def _version_of(r: _Reader, versions: set[str]) -> str:
    version = r.get("version", str, required=True)
    if version not in versions:
        raise ValueError(f"{r.where}: unknown version {version!r}")
    return version


def _route(r: _Reader, versions: set[str]) -> Route:
    split = tuple(WeightedVersion(_version_of(w, versions), w.get("weight", int, required=True))
                  for w in r.items("split"))
    if split and sum(w.weight for w in split) != 100:
        raise ValueError(f"{r.where}.split: weights must sum to 100")
    m = r.child("mirror")
    return Route(
        name=r.get("name", str, DEFAULT_ROUTE),
        matches=tuple(_request_match(m) for m in r.items("match")),
        split=split,
        timeout=r.seconds("timeoutMs"),
        retries=_retries(r.child("retries")),
        mirror=Mirror(_version_of(m, versions), m.get("percent", float, DEFAULT_PERCENT)) if m else None,
        fault=_http_fault(r.child("fault")),
    )


def _route_json(route: Route) -> dict:
    return _without_none({
        "name": route.name,
        "match": [_request_match_json(m) for m in route.matches] or None,
        "split": [{"version": w.version, "weight": w.weight} for w in route.split],
        "timeoutMs": milliseconds(route.timeout) if route.timeout is not None else None,
        "retries": _retries_json(route.retries) if route.retries else None,
        "mirror": {"version": route.mirror.version, "percent": route.mirror.percent} if route.mirror else None,
        "fault": _http_fault_json(route.fault) if route.fault else None,
    })


def _circuit_breaker(r: _Reader | None) -> CircuitBreaker | None:
    return CircuitBreaker(r.get("maxConnections", int), r.get("maxPendingRequests", int),
                          r.get("maxRequestsPerConnection", int)) if r is not None else None


def _circuit_breaker_json(breaker: CircuitBreaker) -> dict:
    return _without_none({"maxConnections": breaker.max_connections,
                          "maxPendingRequests": breaker.max_pending_requests,
                          "maxRequestsPerConnection": breaker.max_requests_per_connection})


def _outlier_detection(r: _Reader | None) -> OutlierDetection | None:
    if r is None:
        return None
    defaults = OutlierDetection()
    return OutlierDetection(r.nullable("consecutive5xxErrors", int, defaults.consecutive_5xx),
                            r.nullable("consecutiveGatewayErrors", int, defaults.consecutive_gateway_errors),
                            r.seconds("baseEjectionTimeMs", defaults.base_ejection_time),
                            r.get("maxEjectionPercent", int, defaults.max_ejection_percent))


def _outlier_detection_json(detection: OutlierDetection) -> dict:
    # Every key, null included: a null count is "never eject on this count".
    return {"consecutive5xxErrors": detection.consecutive_5xx or None,
            "consecutiveGatewayErrors": detection.consecutive_gateway_errors or None,
            "baseEjectionTimeMs": milliseconds(detection.base_ejection_time),
            "maxEjectionPercent": detection.max_ejection_percent}


def _service(name: str, r: _Reader) -> Service:
    versions = tuple(Version(v.get("name", str, required=True), v.get("host", str, required=True))
                     for v in r.items("versions", required=True))
    if not versions:
        raise ValueError(f"service {name!r} has no versions")
    load_balancer = r.choice("loadBalancer", LOAD_BALANCERS, "loadBalancer", DEFAULT_LOAD_BALANCER)
    names = {v.name for v in versions}
    routes = tuple(_route(route, names) for route in r.items("routes"))
    if not routes or routes[-1].matches:
        routes += (Route(DEFAULT_ROUTE),)
    return Service(name, versions, tuple(r.get("ports", list, [])), load_balancer, routes,
                   _circuit_breaker(r.child("circuitBreaker")), _outlier_detection(r.child("outlierDetection")),
                   _tcp_fault(r.child("tcpFault")))


def _service_json(service: Service) -> dict:
    return _without_none({
        "versions": [{"name": v.name, "host": v.host} for v in service.versions],
        "ports": list(service.ports),
        "loadBalancer": service.load_balancer,
        "routes": [_route_json(route) for route in service.routes],
        "circuitBreaker": _circuit_breaker_json(service.circuit_breaker) if service.circuit_breaker else None,
        "outlierDetection": (_outlier_detection_json(service.outlier_detection)
                             if service.outlier_detection else None),
        "tcpFault": _tcp_fault_json(service.tcp_fault) if service.tcp_fault else None,
    })


def _runtime_fault(r: _Reader) -> RuntimeFault:
    fault = RuntimeFault(r.get("id", str, required=True), r.get("service", str, required=True),
                         r.get("source", str), _http_fault(r.child("http")), _tcp_fault(r.child("tcp")),
                         r.get("until", float), r.get("created", float))
    if fault.http is None and fault.tcp is None:
        raise ValueError(f"{r.where}: a fault needs http or tcp")
    return fault


def fault_json(fault: RuntimeFault) -> dict:
    """One entry of "faults". Every key, null included: null source is "every caller", null until
    is "until cleared"."""
    return {"id": fault.id, "service": fault.service, "source": fault.source,
            "http": _http_fault_json(fault.http) if fault.http else None,
            "tcp": _tcp_fault_json(fault.tcp) if fault.tcp else None,
            "until": fault.until, "created": fault.created}


def _config_json(config: SidecarConfig) -> dict:
    return {"schema": SCHEMA, "project": config.project, "version": config.version, "generation": config.generation,
            "services": {name: _service_json(service) for name, service in config.services.items()},
            "faults": [fault_json(fault) for fault in config.faults]}


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc


def _malformed(parse_body: Callable[[], Any], what: str) -> Any:
    try:
        return parse_body()
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed {what}: missing or bad {exc}") from exc


# --- the public API -----------------------------------------------------------------------


def parse(text: str) -> SidecarConfig:
    """Parse sidecar.json; raise ValueError with what is wrong."""
    data = _load(text)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"expected a mapping with schema {SCHEMA}")
    r = _Reader(data, "config")

    def body() -> SidecarConfig:
        services = {str(name): _service(str(name), _Reader(service, f"services.{name}"))
                    for name, service in r.get("services", dict, required=True).items()}
        return SidecarConfig(str(data["version"]), services, dict(services), r.get("generation", int, 0),
                             tuple(_runtime_fault(fault) for fault in r.items("faults")), data,
                             r.get("project", str, ""))

    return _malformed(body, "sidecar config")


def dump(config: SidecarConfig) -> str:
    """sidecar.json's text: `parse(dump(config)) == config`."""
    return json.dumps(_config_json(config), indent=2) + "\n"


def content(config: SidecarConfig) -> str:
    """Canonical JSON (sorted keys, no spaces) of all but the version and the generation:
    what meshcli hashes into the version, so equal configs get equal versions."""
    body = {key: value for key, value in _config_json(config).items() if key not in ("version", "generation")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def parse_faults(text: str) -> tuple[RuntimeFault, ...]:
    """meshcli's `.mesh/faults.json`: {"faults": [...]}, each as in sidecar.json."""
    r = _Reader(_load(text), "faults file")
    return _malformed(lambda: tuple(_runtime_fault(fault) for fault in r.items("faults", required=True)),
                      "faults file")


def dump_faults(faults: Iterable[RuntimeFault]) -> str:
    return json.dumps({"faults": [fault_json(fault) for fault in faults]}, indent=2) + "\n"


def rules_json(config: SidecarConfig, service: str) -> dict:
    """What callers' sidecars apply to `service`: its entry of "services" plus the runtime faults
    on it (`meshcli route show --json`)."""
    return {**_service_json(config.services[service]),
            "faults": [fault_json(fault) for fault in config.faults if fault.service == service]}


def parse_runtime_fault(data: dict) -> RuntimeFault:
    """One fault object (an entry of "faults"); ValueError when it is not one."""
    return _malformed(lambda: _runtime_fault(_Reader(data, "fault")), "fault")


# --- the sidecar's state ------------------------------------------------------------------


class MeshState:
    """The config currently applied, shared by the addons; listeners run on change."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.config: SidecarConfig = EMPTY
        self.loaded = False
        self.last_error: str | None = None
        self._listeners: list[Callable[[SidecarConfig], None]] = []

    def subscribe(self, listener: Callable[[SidecarConfig], None]) -> None:
        self._listeners.append(listener)
        listener(self.config)

    def apply(self, config: SidecarConfig) -> None:
        self.config = config
        self.loaded = True
        self.last_error = None
        for listener in self._listeners:
            listener(config)


def config_path(env=os.environ) -> Path:
    return Path(env.get(ENV_CONFIG_DIR, CONFIG_DIR)) / CONFIG_FILE
