"""The sidecar's view of the mesh: its own identity and the compiled mesh config.

meshcli writes `sidecar.json` (see meshcli/sidecar_config.py, which documents the
format); `parse()` turns it into typed values once per config version, so request
hooks only read precomputed state. A config is accepted whole or rejected whole.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

CONFIG_FILE = "sidecar.json"
SCHEMA = 2
LOAD_BALANCERS = ("round-robin", "random", "least-request")  # the policies balancer.py implements
STRING_MATCH_KINDS = ("exact", "prefix", "regex", "present")
RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes")
TCP_FAULT_KINDS = ("latency", "bandwidth", "reset", "blackhole", "limit-data", "slicer")


@dataclass(frozen=True)
class Identity:
    project: str
    workload: str
    service: str
    version: str

    @classmethod
    def from_env(cls, env=os.environ) -> Identity:
        return cls(
            project=env.get("MESH_PROJECT", ""),
            workload=env.get("MESH_WORKLOAD", "unknown"),
            service=env.get("MESH_SERVICE", env.get("MESH_WORKLOAD", "unknown")),
            version=env.get("MESH_VERSION", ""),
        )


@dataclass(frozen=True)
class Version:
    name: str
    host: str  # DNS name of the workload's pod


@dataclass(frozen=True)
class StringMatch:
    kind: str  # exact | prefix | regex | present
    value: str = ""
    pattern: re.Pattern | None = field(default=None, compare=False, repr=False)

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.kind == "present":
            return True
        if self.kind == "exact":
            return actual == self.value
        if self.kind == "prefix":
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
    retry_on: frozenset[str] = frozenset({"5xx", "connect-failure", "reset"})
    retriable_status_codes: frozenset[int] = frozenset()
    backoff: float = 0.025  # base interval in seconds; exponential with jitter
    retry_non_idempotent: bool = False


@dataclass(frozen=True)
class Mirror:
    version: str
    percent: float = 100.0


@dataclass(frozen=True)
class Delay:
    seconds: float
    percent: float = 100.0


@dataclass(frozen=True)
class Abort:
    status: int | None = None  # HTTP status to answer with...
    reset: bool = False  # ...or reset the caller's connection instead
    percent: float = 100.0


@dataclass(frozen=True)
class HttpFault:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class TcpFault:
    """Toxiproxy's toxics. Which fields matter depends on the kind."""

    kind: str  # latency | bandwidth | reset | blackhole | limit-data | slicer
    latency: float = 0.0  # seconds, latency and slicer (delay between slices)
    jitter: float = 0.0  # seconds, latency
    rate: int = 0  # bytes per second, bandwidth
    bytes: int = 0  # limit-data: close after this many bytes; slicer: average slice size
    percent: float = 100.0  # share of connections affected


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
    consecutive_5xx: int | None = 5  # 5xx answers in a row that eject a version; 0/None: never
    consecutive_gateway_errors: int | None = None  # 502/503/504 and connect failures in a row; 0/None: never
    base_ejection_time: float = 30.0  # seconds; multiplied by the number of ejections so far
    max_ejection_percent: int = 10  # at most this share of a service's versions is ejected


@dataclass(frozen=True)
class Service:
    name: str
    versions: tuple[Version, ...]
    ports: tuple[int, ...] = ()
    load_balancer: str = "round-robin"
    routes: tuple[Route, ...] = (Route("default"),)  # in order; the last one matches everything
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

    def active(self, now: float | None = None) -> bool:
        return self.until is None or (now if now is not None else time.time()) < self.until

    def applies(self, service: str, source: str, now: float | None = None) -> bool:
        return self.service == service and self.source in (None, source) and self.active(now)


@dataclass(frozen=True)
class SidecarConfig:
    version: str  # content hash; reported so meshcli status can say SYNCED/STALE
    services: dict[str, Service] = field(default_factory=dict)
    # host name (logical service) -> service; built once per version
    by_host: dict[str, Service] = field(default_factory=dict)
    generation: int = 0  # counts the configs meshcli compiled for this project
    faults: tuple[RuntimeFault, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # for /config_dump

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

    def seconds(self, key: str, default: float | None = None) -> float | None:
        ms = self.get(key, (int, float))
        return default if ms is None else ms / 1000.0

    def child(self, key: str) -> _Reader | None:
        value = self.data.get(key)
        return None if value is None else _Reader(value, f"{self.where}.{key}")


def _string_match(data: Any, where: str) -> StringMatch:
    r = _Reader(data, where)
    kind = r.get("kind", str, required=True)
    if kind not in STRING_MATCH_KINDS:
        raise ValueError(f"{where}: unknown match kind {kind!r}")
    value = r.get("value", str, "")
    pattern = None
    if kind == "regex":
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"{where}: bad regex {value!r}: {exc}") from None
    return StringMatch(kind, value, pattern)


def _named_matches(items: Any, where: str, lower: bool) -> tuple[tuple[str, StringMatch], ...]:
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list")
    result = []
    for i, item in enumerate(items):
        r = _Reader(item, f"{where}[{i}]")
        name = r.get("name", str, required=True)
        result.append((name.lower() if lower else name, _string_match(item, f"{where}[{i}]")))
    return tuple(result)


def _request_match(data: Any, where: str) -> RequestMatch:
    r = _Reader(data, where)
    path = r.get("path", dict)
    return RequestMatch(
        path=_string_match(path, f"{where}.path") if path is not None else None,
        methods=tuple(m.upper() for m in r.get("methods", list, [])),
        headers=_named_matches(r.get("headers", list, []), f"{where}.headers", lower=True),
        query=_named_matches(r.get("query", list, []), f"{where}.query", lower=False),
        source=r.get("source", str),
    )


def _retries(r: _Reader | None) -> Retries | None:
    if r is None:
        return None
    retry_on = frozenset(r.get("retryOn", list, list(Retries.retry_on)))
    unknown = retry_on - set(RETRY_ON)
    if unknown:
        raise ValueError(f"{r.where}: unknown retryOn {sorted(unknown)}")
    return Retries(
        attempts=r.get("attempts", int, required=True),
        per_try_timeout=r.seconds("perTryTimeoutMs"),
        retry_on=retry_on,
        retriable_status_codes=frozenset(r.get("retriableStatusCodes", list, [])),
        backoff=r.seconds("backoffMs", Retries.backoff),
        retry_non_idempotent=r.get("retryNonIdempotent", bool, False),
    )


def _http_fault(r: _Reader | None) -> HttpFault | None:
    if r is None:
        return None
    delay = abort = None
    if (d := r.child("delay")) is not None:
        delay = Delay(d.seconds("ms") or 0.0, d.get("percent", float, 100.0))
    if (a := r.child("abort")) is not None:
        abort = Abort(a.get("status", int), a.get("reset", bool, False), a.get("percent", float, 100.0))
        if abort.status is None and not abort.reset:
            raise ValueError(f"{a.where}: needs a status or reset")
    return HttpFault(delay, abort) if delay or abort else None


def _tcp_fault(r: _Reader | None) -> TcpFault | None:
    if r is None:
        return None
    kind = r.get("kind", str, required=True)
    if kind not in TCP_FAULT_KINDS:
        raise ValueError(f"{r.where}: unknown TCP fault {kind!r}; expected one of {', '.join(TCP_FAULT_KINDS)}")
    return TcpFault(kind, latency=r.seconds("latencyMs", 0.0), jitter=r.seconds("jitterMs", 0.0),
                    rate=r.get("rateBytesPerSecond", int, 0), bytes=r.get("bytes", int, 0),
                    percent=r.get("percent", float, 100.0))


def _route(data: Any, where: str, versions: set[str]) -> Route:
    r = _Reader(data, where)
    split = []
    for i, item in enumerate(r.get("split", list, [])):
        w = _Reader(item, f"{where}.split[{i}]")
        version = w.get("version", str, required=True)
        if version not in versions:
            raise ValueError(f"{w.where}: unknown version {version!r}")
        split.append(WeightedVersion(version, w.get("weight", int, required=True)))
    if split and sum(w.weight for w in split) != 100:
        raise ValueError(f"{where}.split: weights must sum to 100")
    mirror = None
    if (m := r.child("mirror")) is not None:
        mirror = Mirror(m.get("version", str, required=True), m.get("percent", float, 100.0))
        if mirror.version not in versions:
            raise ValueError(f"{m.where}: unknown version {mirror.version!r}")
    return Route(
        name=r.get("name", str, "default"),
        matches=tuple(_request_match(m, f"{where}.match[{i}]") for i, m in enumerate(r.get("match", list, []))),
        split=tuple(split),
        timeout=r.seconds("timeoutMs"),
        retries=_retries(r.child("retries")),
        mirror=mirror,
        fault=_http_fault(r.child("fault")),
    )


def _service(name: str, data: Any) -> Service:
    where = f"services.{name}"
    r = _Reader(data, where)
    readers = [_Reader(v, f"{where}.versions[{i}]") for i, v in enumerate(r.get("versions", list, required=True))]
    versions = tuple(Version(v.get("name", str, required=True), v.get("host", str, required=True)) for v in readers)
    if not versions:
        raise ValueError(f"service {name!r} has no versions")
    load_balancer = r.get("loadBalancer", str, "round-robin")
    if load_balancer not in LOAD_BALANCERS:
        raise ValueError(f"service {name!r}: unknown loadBalancer {load_balancer!r}; "
                         f"expected one of {', '.join(LOAD_BALANCERS)}")
    names = {v.name for v in versions}
    routes = tuple(_route(item, f"{where}.routes[{i}]", names) for i, item in enumerate(r.get("routes", list, [])))
    if not routes or routes[-1].matches:
        routes += (Route("default"),)
    circuit_breaker = outlier = None
    if (c := r.child("circuitBreaker")) is not None:
        circuit_breaker = CircuitBreaker(c.get("maxConnections", int), c.get("maxPendingRequests", int),
                                         c.get("maxRequestsPerConnection", int))
    if (o := r.child("outlierDetection")) is not None:
        defaults = OutlierDetection()
        outlier = OutlierDetection(o.get("consecutive5xxErrors", int, defaults.consecutive_5xx),
                                   o.get("consecutiveGatewayErrors", int, defaults.consecutive_gateway_errors),
                                   o.seconds("baseEjectionTimeMs", defaults.base_ejection_time),
                                   o.get("maxEjectionPercent", int, defaults.max_ejection_percent))
    return Service(name, versions, tuple(r.get("ports", list, [])), load_balancer, routes, circuit_breaker,
                   outlier, _tcp_fault(r.child("tcpFault")))


def _runtime_fault(data: Any, where: str) -> RuntimeFault:
    r = _Reader(data, where)
    fault = RuntimeFault(r.get("id", str, required=True), r.get("service", str, required=True),
                         r.get("source", str), _http_fault(r.child("http")), _tcp_fault(r.child("tcp")),
                         r.get("until", float))
    if fault.http is None and fault.tcp is None:
        raise ValueError(f"{where}: a fault needs http or tcp")
    return fault


def parse(text: str) -> SidecarConfig:
    """Parse sidecar.json; raise ValueError with what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"expected a mapping with schema {SCHEMA}")
    r = _Reader(data, "config")
    try:
        services = {str(name): _service(str(name), body)
                    for name, body in r.get("services", dict, required=True).items()}
        faults = tuple(_runtime_fault(item, f"faults[{i}]") for i, item in enumerate(r.get("faults", list, [])))
        version = str(data["version"])
        generation = r.get("generation", int, 0)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed sidecar config: missing or bad {exc}") from exc
    return SidecarConfig(version, services, dict(services), generation, faults, data)


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
    return Path(env.get("MESH_CONFIG_DIR", "/etc/meshcli")) / CONFIG_FILE
