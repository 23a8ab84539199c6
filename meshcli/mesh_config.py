"""The mesh file (`mesh.yaml`): one typed model and one validator.

`parse()` turns a YAML document into a `MeshConfig`, collecting every problem with its
file:line:column before raising. `resolve()` checks the model against the compose
project and yields the `Mesh` every other module consumes: each logical service with
its versions, the workload (compose service) behind each version, ports and policy
(`TrafficPolicy`: routes, timeouts, retries, mirror, faults, connection policy).
`parse_and_resolve()` does both and reports the problems of both at once. Durations
are kept in milliseconds, as sidecar.json carries them. docs/mesh-file.md is the spec;
meshcli/schema/mesh-v1.schema.json is the same rules as a JSON Schema for editors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from meshproxy.config import (DEFAULT_BACKOFF_MS, DEFAULT_BASE_EJECTION_TIME_MS, DEFAULT_CONSECUTIVE_5XX,
                              DEFAULT_LOAD_BALANCER, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_PERCENT, DEFAULT_RETRY_ON,
                              DEFAULT_ROUTE, LOAD_BALANCERS, PATH_MATCH_KINDS, RETRY_ON, STRING_MATCH_KINDS,
                              TcpFaultKind)

from meshcli import durations, yaml_source
from meshcli.compose_model import ComposeProject, Workload
from meshcli.diagnostics import Diagnostic, did_you_mean
from meshcli.errors import InvalidFileError

# The vocabulary and defaults mesh.yaml shares with sidecar.json are the sidecar's (meshproxy.config).
API_VERSION = "meshcli/v1"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# TCP fault kind -> the fields it takes besides kind and percent; then the ones it needs.
TCP_FAULT_FIELDS = {TcpFaultKind.LATENCY.value: ("latency", "jitter"), TcpFaultKind.BANDWIDTH.value: ("rate",),
                    TcpFaultKind.RESET.value: (), TcpFaultKind.BLACKHOLE.value: (),
                    TcpFaultKind.LIMIT_DATA.value: ("bytes",), TcpFaultKind.SLICER.value: ("bytes", "latency")}
TCP_FAULT_REQUIRED = {TcpFaultKind.LATENCY.value: ("latency",), TcpFaultKind.BANDWIDTH.value: ("rate",),
                      TcpFaultKind.LIMIT_DATA.value: ("bytes",), TcpFaultKind.SLICER.value: ("bytes",)}
SCHEMA_RESOURCE = "schema/mesh-v1.schema.json"
# Upper bounds (docs/mesh-file.md, "Limits"); durations and rates: meshcli/durations.py.
MAX_COUNT = 2**31 - 1  # connection limits, error counts, bytes: Istio's int32 fields
MAX_ATTEMPTS = 10  # retries after the first try
MAX_WORKLOADS = 1000  # meshed compose services (three containers each) in one project


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StringMatch:
    kind: str  # exact | prefix | regex | present
    value: str = ""


@dataclass(frozen=True)
class RequestMatch:
    """Every condition must hold (AND); a route's list of matches is an OR."""

    path: StringMatch | None = None
    methods: tuple[str, ...] = ()  # HTTP_METHODS (upper case, as Istio); empty: any method
    headers: tuple[tuple[str, StringMatch], ...] = ()  # (lower-case name, match), sorted by name
    query: tuple[tuple[str, StringMatch], ...] = ()  # sorted by name
    source: str | None = None  # only calls made by this service


@dataclass(frozen=True)
class WeightedVersion:
    version: str
    weight: int  # percent; the weights of a split sum to 100


@dataclass(frozen=True)
class Retries:
    attempts: int  # retries after the first try (Istio's meaning)
    per_try_timeout_ms: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = ()
    backoff_ms: float = DEFAULT_BACKOFF_MS
    retry_non_idempotent: bool = False


@dataclass(frozen=True)
class Mirror:
    version: str
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class Delay:
    ms: float
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class Abort:
    status: int | None = None  # answer with this HTTP status...
    reset: bool = False  # ...or reset the caller's connection
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class Fault:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class Route:
    """Which requests (matches) and what happens to them; None means "not set here"."""

    name: str
    matches: tuple[RequestMatch, ...] = ()  # empty: every request
    split: tuple[WeightedVersion, ...] | None = None  # sorted by version; `to: v2` is {v2: 100}
    timeout_ms: float | None = None  # the whole request, retries included
    retries: Retries | None = None
    mirror: Mirror | None = None
    fault: Fault | None = None


@dataclass(frozen=True)
class CircuitBreaker:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests_per_connection: int | None = None  # 0: unlimited


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int = DEFAULT_CONSECUTIVE_5XX  # 0 disables (Istio's defaults throughout)
    consecutive_gateway_errors: int = 0  # 0 disables
    base_ejection_time_ms: float = DEFAULT_BASE_EJECTION_TIME_MS
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT


@dataclass(frozen=True)
class TcpFault:
    """Toxiproxy's toxics; which fields matter depends on the kind (TCP_FAULT_FIELDS)."""

    kind: str
    latency_ms: float = 0
    jitter_ms: float = 0
    rate: int = 0  # bytes per second
    bytes: int = 0
    percent: float = DEFAULT_PERCENT


@dataclass(frozen=True)
class TrafficPolicy:
    """What callers' sidecars do with a service's traffic."""

    default_route: Route = Route(DEFAULT_ROUTE)  # the service-level split/timeout/...: routes inherit it
    routes: tuple[Route, ...] = ()  # in order; the first that matches decides
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    tcp_fault: TcpFault | None = None


@dataclass(frozen=True)
class ServiceConfig:
    """What mesh.yaml says about one logical service."""

    name: str
    versions: dict[str, str] = field(default_factory=dict)  # version -> compose service
    load_balancer: str = DEFAULT_LOAD_BALANCER
    ports: tuple[int, ...] = ()
    policy: TrafficPolicy = TrafficPolicy()


@dataclass(frozen=True)
class MeshConfig:
    doc: yaml_source.YamlDocument | None  # kept for positions in later diagnostics
    services: dict[str, ServiceConfig] = field(default_factory=dict)

    @property
    def source(self) -> Path | None:
        return self.doc.path if self.doc else None


@dataclass(frozen=True)
class Version:
    name: str  # "v1"
    workload: str  # compose service, also its DNS name: "payment-v1"


@dataclass(frozen=True)
class Service:
    """A logical service after resolution against the compose project."""

    name: str
    versions: tuple[Version, ...]
    ports: tuple[int, ...]
    load_balancer: str = DEFAULT_LOAD_BALANCER
    policy: TrafficPolicy = TrafficPolicy()


@dataclass(frozen=True)
class Mesh:
    """The resolved mesh: what sidecars and views consume."""

    project: str
    services: dict[str, Service]
    workloads: dict[str, Workload]  # compose service -> identity (service, version)


def json_schema() -> str:
    """The published JSON Schema of the mesh file (`meshcli schema`)."""
    return resources.files("meshcli").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


# --- parse: the shape of the file ---------------------------------------------------------


class _Collector:
    """Gathers diagnostics while walking one document; each check returns None when it failed."""

    def __init__(self, doc: yaml_source.YamlDocument) -> None:
        self.doc = doc
        self.diagnostics: list[Diagnostic] = []

    def add(self, code: str, message: str, node: Any = None, key: Any = None) -> None:
        self.diagnostics.append(self.doc.diag(code, message, node, key))

    def mapping(self, node: Any, where: str, allowed: tuple[str, ...], parent: Any = None, key: Any = None) -> bool:
        if not isinstance(node, dict):
            self.add("MESH0102", f"{where} must be a mapping, got {_kind(node)}", parent if parent is not None else node, key)
            return False
        for name in node:
            if name not in allowed:
                self.add("MESH0101", f'unknown field "{name}" in {where}{did_you_mean(str(name), allowed)}; '
                         f"expected one of: {', '.join(allowed)}", node, name)
        return True

    def number(self, node: dict, key: str, what: str, minimum: float = 0, maximum: float = MAX_COUNT,
               integer: bool = True) -> Any:
        if key not in node:
            return None
        value = node[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
        # 3.0 is a whole number, as in JSON (and for the JSON Schema).
        whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()
        if not number or integer and not whole:
            self.add("MESH0102", f"{what} must be {'a whole number' if integer else 'a number'}, got {_kind(value)}",
                     node, key)
            return None
        if not minimum <= value <= maximum:
            self.add("MESH0106", f"{what} is {value}; it must be from {minimum} to {maximum}", node, key)
            return None
        return int(value) if integer else float(value)

    def percent(self, node: dict, key: str, what: str) -> float | None:
        return self.number(node, key, what, 0, 100, integer=False)

    def duration(self, node: dict, key: str, what: str) -> float | None:
        return self.parsed(node, key, what, durations.parse_ms)

    def parsed(self, node: dict, key: str, what: str, parse: Callable[[Any], Any]) -> Any:
        """A duration or byte rate: `parse` (meshcli/durations.py) raises ValueError."""
        if key not in node:
            return None
        try:
            return parse(node[key])
        except durations.OutOfRangeError as exc:
            self.add("MESH0106", f"{what}: {exc}", node, key)
        except ValueError as exc:
            self.add("MESH0105", f"{what}: {exc}", node, key)
        return None

    def string(self, node: dict, key: str, what: str) -> str | None:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, str) or not value:
            self.add("MESH0102", f"{what} must be a non-empty string, got {_kind(value)}", node, key)
            return None
        return str(value)

    def boolean(self, node: dict, key: str, what: str) -> bool | None:
        if key not in node:
            return None
        if not isinstance(node[key], bool):
            self.add("MESH0102", f"{what} must be true or false, got {_kind(node[key])}", node, key)
            return None
        return bool(node[key])

    def choice(self, node: dict, key: str, what: str, choices: tuple[str, ...]) -> str | None:
        if key not in node:
            return None
        value = node[key]
        if value not in choices:
            self.add("MESH0102", f'{what} "{value}" is not one of: {", ".join(choices)}'
                                 f"{did_you_mean(str(value), choices)}", node, key)
            return None
        return str(value)

    def required(self, node: dict, keys: tuple[str, ...], where: str, parent: Any, key: Any) -> None:
        for name in keys:
            if name not in node:
                self.add("MESH0103", f'{where}: missing "{name}"', parent, key)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if value == "":
        return "an empty string"
    for kind, name in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


TOP_LEVEL_FIELDS = ("apiVersion", "services")
ROUTE_POLICY_FIELDS = ("to", "split", "timeout", "retries", "mirror", "fault")
SERVICE_FIELDS = ("versions", "ports", "loadBalancer", *ROUTE_POLICY_FIELDS, "routes", "circuitBreaker",
                  "outlierDetection", "tcpFault")
ROUTE_FIELDS = ("name", "match", *ROUTE_POLICY_FIELDS)
MATCH_FIELDS = ("headers", "path", "method", "query", "source")
RETRIES_FIELDS = ("attempts", "perTryTimeout", "retryOn", "retriableStatusCodes", "backoff", "retryNonIdempotent")
MIRROR_FIELDS = ("version", "percent")
FAULT_FIELDS = ("delay", "abort")
DELAY_FIELDS = ("fixed", "percent")
ABORT_FIELDS = ("httpStatus", "reset", "percent")
CIRCUIT_BREAKER_FIELDS = ("maxConnections", "maxPendingRequests", "maxRequestsPerConnection")
OUTLIER_DETECTION_FIELDS = ("consecutive5xxErrors", "consecutiveGatewayErrors", "baseEjectionTime",
                            "maxEjectionPercent")
TCP_FAULT_ALL_FIELDS = ("kind", "latency", "jitter", "rate", "bytes", "percent")


def parse(doc: yaml_source.YamlDocument) -> MeshConfig:
    """Validate the document's shape and build the model; raise with every error."""
    config, diagnostics = _parse(doc)
    if any(d.is_error for d in diagnostics):
        raise InvalidFileError(diagnostics)
    return config


def _parse(doc: yaml_source.YamlDocument) -> tuple[MeshConfig, list[Diagnostic]]:
    """The model of everything that is valid, and the diagnostics of the rest."""
    check = _Collector(doc)
    data = doc.data
    if data is None:
        return MeshConfig(doc), []
    if not check.mapping(data, "the mesh file", TOP_LEVEL_FIELDS):
        return MeshConfig(doc), check.diagnostics
    api = data.get("apiVersion")
    if api is None:
        check.add("MESH0103", f'missing "apiVersion"; expected "{API_VERSION}"', data)
    elif api != API_VERSION:
        check.add("MESH0104", f'unsupported apiVersion "{api}"; expected "{API_VERSION}"', data, "apiVersion")

    services: dict[str, ServiceConfig] = {}
    raw_services = data.get("services") or {}
    if check.mapping(raw_services, "services", tuple(raw_services) if isinstance(raw_services, dict) else (), data, "services"):
        for name, body in raw_services.items():
            services[str(name)] = _parse_service(check, raw_services, str(name), body)
    return MeshConfig(doc, services), check.diagnostics


def _parse_service(check: _Collector, parent: Any, name: str, body: Any) -> ServiceConfig:
    if body is None:
        return ServiceConfig(name)
    where = f'service "{name}"'
    if not check.mapping(body, where, SERVICE_FIELDS, parent, name):
        return ServiceConfig(name)
    versions: dict[str, str] = {}
    raw_versions = body.get("versions")
    if raw_versions is not None:
        if not isinstance(raw_versions, dict):
            check.add("MESH0102", f"{where}: versions must map a version name to its compose service, "
                                  f"e.g. `v1: {name}-v1`", body, "versions")
        else:
            for version, workload in raw_versions.items():
                if not isinstance(workload, str) or not workload:
                    check.add("MESH0102", f'{where}: version "{version}" must name a compose service, '
                                          f"got {_kind(workload)}", raw_versions, version)
                else:
                    versions[str(version)] = workload
    ports = body.get("ports")
    if ports is None:
        ports = []
    elif not isinstance(ports, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        check.add("MESH0102", f"{where}: ports must be a list of port numbers (1-65535)", body, "ports")
        ports = []
    load_balancer = check.choice(body, "loadBalancer", f"{where}: loadBalancer", LOAD_BALANCERS)
    policy = TrafficPolicy(
        default_route=_parse_route_policy(check, body, where, DEFAULT_ROUTE),
        routes=_parse_routes(check, body, where),
        circuit_breaker=_parse_circuit_breaker(check, body, where),
        outlier_detection=_parse_outlier_detection(check, body, where),
        tcp_fault=_parse_tcp_fault(check, body, where),
    )
    return ServiceConfig(name, versions, load_balancer or DEFAULT_LOAD_BALANCER, tuple(int(p) for p in ports), policy)


def _parse_route_policy(check: _Collector, node: dict, where: str, name: str,
                        matches: tuple[RequestMatch, ...] = ()) -> Route:
    """split/to, timeout, retries, mirror and fault: the same at the service level and in a route."""
    return Route(name, matches, _parse_split(check, node, where),
                 check.duration(node, "timeout", f"{where}: timeout"),
                 _parse_retries(check, node, where), _parse_mirror(check, node, where),
                 _parse_fault(check, node, where))


def _parse_split(check: _Collector, node: dict, where: str) -> tuple[WeightedVersion, ...] | None:
    if "to" in node and "split" in node:
        check.add("MESH0108", f"{where}: `to` and `split` cannot be used together; "
                              "`to: v2` is short for `split: {v2: 100}`", node, "to")
        return None
    if "to" in node:
        version = check.string(node, "to", f"{where}: to")
        return (WeightedVersion(version, 100),) if version else None
    if "split" not in node:
        return None
    split = node["split"]
    if not isinstance(split, dict) or not split:
        check.add("MESH0102", f"{where}: split must map version names to percentages, "
                              "e.g. `split: {v1: 90, v2: 10}`", node, "split")
        return None
    weights = [(str(version), check.number(split, version, f'{where}: split weight of version "{version}"', 0, 100))
               for version in split]
    if any(weight is None for _, weight in weights):
        return None
    total = sum(weight for _, weight in weights)
    if total != 100:
        check.add("MESH0107", f"split weights of {where} sum to {total}; they must sum to 100", node, "split")
        return None
    return tuple(WeightedVersion(version, weight) for version, weight in sorted(weights))


def _parse_routes(check: _Collector, body: dict, where: str) -> tuple[Route, ...]:
    if "routes" not in body:
        return ()
    items = body["routes"]
    if not isinstance(items, list):
        check.add("MESH0102", f"{where}: routes must be a list of rules, got {_kind(items)}", body, "routes")
        return ()
    routes: list[Route] = []
    named: dict[str, int] = {}
    for i, item in enumerate(items):
        given = item.get("name") if isinstance(item, dict) else None
        route_where = f'{where} route "{given}"' if isinstance(given, str) and given else f"{where} route {i + 1}"
        if not check.mapping(item, route_where, ROUTE_FIELDS, items, i):
            continue
        name = check.string(item, "name", f"{route_where}: name") or f"route-{i + 1}"
        if name in named:
            check.add("MESH0111", f'{where}: route name "{name}" is already used by route {named[name] + 1}; '
                                  "names tell routes apart in access logs and metrics", item, "name")
        named.setdefault(name, i)
        if "match" in item:
            matches = _parse_matches(check, item, route_where)
        else:
            matches = ()
            if i < len(items) - 1:
                check.add("MESH0110", f"{route_where} has no match, so it takes every request and the routes "
                                      "after it are never used; give it a match or move it last", items, i)
        routes.append(_parse_route_policy(check, item, route_where, name, matches))
    return tuple(routes)


def _parse_matches(check: _Collector, route: dict, where: str) -> tuple[RequestMatch, ...]:
    raw = route["match"]
    if not isinstance(raw, list) or not raw:
        check.add("MESH0102", f"{where}: match must be a non-empty list of conditions (any entry may match); "
                              "leave it out to match every request", route, "match")
        return ()
    matches = []
    for j, entry in enumerate(raw):
        entry_where = f"{where} match {j + 1}"
        if not check.mapping(entry, entry_where, MATCH_FIELDS, raw, j):
            continue
        if not entry:
            check.add("MESH0103", f"{entry_where} needs at least one of: {', '.join(MATCH_FIELDS)}", raw, j)
            continue
        path = _parse_string_match(check, entry, "path", f"{entry_where} path", PATH_MATCH_KINDS) \
            if "path" in entry else None
        matches.append(RequestMatch(
            path=path,
            methods=_parse_methods(check, entry, f"{entry_where}: method"),
            headers=_parse_named_matches(check, entry, "headers", f"{entry_where} header", lower=True),
            query=_parse_named_matches(check, entry, "query", f"{entry_where} query parameter", lower=False),
            source=check.string(entry, "source", f"{entry_where}: source"),
        ))
    return tuple(matches)


def _parse_methods(check: _Collector, entry: dict, what: str) -> tuple[str, ...]:
    if "method" not in entry:
        return ()
    raw = entry["method"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        check.add("MESH0102", f"{what} must be one HTTP method or a list of them, got {_kind(raw)}", entry, "method")
        return ()
    methods = []
    for i, method in enumerate(items):
        if method not in HTTP_METHODS:
            node, key = (entry, "method") if isinstance(raw, str) else (raw, i)
            check.add("MESH0102", f'{what} "{method}" is not one of: {", ".join(HTTP_METHODS)}'
                                  f"{did_you_mean(str(method).upper(), HTTP_METHODS)}", node, key)
        else:
            methods.append(str(method))
    return tuple(methods)


def _parse_named_matches(check: _Collector, entry: dict, key: str, what: str,
                         lower: bool) -> tuple[tuple[str, StringMatch], ...]:
    if key not in entry:
        return ()
    raw = entry[key]
    if not isinstance(raw, dict) or not raw:
        check.add("MESH0102", f"{what}s must map names to conditions, e.g. "
                              '`x-canary: {exact: "true"}`', entry, key)
        return ()
    found = {}
    for name, _ in raw.items():
        match = _parse_string_match(check, raw, name, f'{what} "{name}"', STRING_MATCH_KINDS)
        if match is not None:
            found[str(name).lower() if lower else str(name)] = match
    return tuple(sorted(found.items(), key=lambda item: item[0]))


def _parse_string_match(check: _Collector, parent: dict, key: Any, what: str,
                        kinds: tuple[str, ...]) -> StringMatch | None:
    condition = parent[key]
    forms = ", ".join(f"{{{kind}: ...}}" if kind != "present" else "{present: true}" for kind in kinds)
    if not isinstance(condition, dict) or len(condition) != 1:
        check.add("MESH0102", f"{what} must be one condition: {forms}; got {_kind(condition)}", parent, key)
        return None
    [(kind, value)] = condition.items()
    if kind not in kinds:
        check.add("MESH0101", f'unknown match kind "{kind}" in {what}{did_you_mean(str(kind), kinds)}; '
                              f"expected one of: {', '.join(kinds)}", condition, kind)
        return None
    if kind == "present":
        if value is not True:
            check.add("MESH0102", f"{what}: present must be true, got {_kind(value)}", condition, kind)
            return None
        return StringMatch("present")
    if not isinstance(value, str):
        quote = '; quote it, e.g. "true"' if isinstance(value, (bool, int, float)) else ""
        check.add("MESH0102", f"{what}: {kind} must be a string, got {_kind(value)}{quote}", condition, kind)
        return None
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            check.add("MESH0109", f'{what}: invalid regex "{value}": {exc}', condition, kind)
            return None
    return StringMatch(str(kind), str(value))


def _parse_retries(check: _Collector, node: dict, where: str) -> Retries | None:
    if "retries" not in node:
        return None
    raw = node["retries"]
    what = f"{where}: retries"
    if not check.mapping(raw, f"{where} retries", RETRIES_FIELDS, node, "retries"):
        return None
    check.required(raw, ("attempts",), what, node, "retries")
    attempts = check.number(raw, "attempts", f"{what}.attempts", 0, MAX_ATTEMPTS)
    retry_on = _parse_list(check, raw, "retryOn", f"{what}.retryOn", RETRY_ON)
    codes = _parse_list(check, raw, "retriableStatusCodes", f"{what}.retriableStatusCodes", None)
    per_try_timeout = check.duration(raw, "perTryTimeout", f"{what}.perTryTimeout")
    backoff = check.duration(raw, "backoff", f"{what}.backoff")
    retry_non_idempotent = check.boolean(raw, "retryNonIdempotent", f"{what}.retryNonIdempotent")
    if attempts is None:
        return None
    return Retries(
        attempts=attempts,
        per_try_timeout_ms=per_try_timeout,
        retry_on=tuple(retry_on) if retry_on is not None else DEFAULT_RETRY_ON,
        retriable_status_codes=tuple(codes or ()),
        backoff_ms=backoff if backoff is not None else DEFAULT_BACKOFF_MS,
        retry_non_idempotent=bool(retry_non_idempotent),
    )


def _parse_list(check: _Collector, node: dict, key: str, what: str, choices: tuple[str, ...] | None) -> list | None:
    """A list of `choices`, or (choices None) of HTTP status codes."""
    if key not in node:
        return None
    raw = node[key]
    if not isinstance(raw, list):
        check.add("MESH0102", f"{what} must be a list, got {_kind(raw)}", node, key)
        return None
    items = []
    for i, item in enumerate(raw):
        if choices is not None:
            if item not in choices:
                check.add("MESH0102", f'{what}: "{item}" is not one of: {", ".join(choices)}'
                                      f"{did_you_mean(str(item), choices)}", raw, i)
                continue
            items.append(str(item))
        elif isinstance(item, bool) or not isinstance(item, int):
            check.add("MESH0102", f"{what}: {_kind(item)} is not an HTTP status code", raw, i)
        elif not 100 <= item <= 599:
            check.add("MESH0106", f"{what}: {item} is not an HTTP status code (100-599)", raw, i)
        else:
            items.append(int(item))
    return items


def _parse_mirror(check: _Collector, node: dict, where: str) -> Mirror | None:
    if "mirror" not in node:
        return None
    raw = node["mirror"]
    what = f"{where}: mirror"
    if not check.mapping(raw, f"{where} mirror", MIRROR_FIELDS, node, "mirror"):
        return None
    check.required(raw, ("version",), what, node, "mirror")
    version = check.string(raw, "version", f"{what}.version")
    percent = check.percent(raw, "percent", f"{what}.percent")
    return Mirror(version, DEFAULT_PERCENT if percent is None else percent) if version else None


def _parse_fault(check: _Collector, node: dict, where: str) -> Fault | None:
    """`fault: {delay: {fixed, percent}, abort: {httpStatus | reset, percent}}`."""
    if "fault" not in node:
        return None
    raw = node["fault"]
    what = f"{where}: fault"
    if not check.mapping(raw, f"{where} fault", FAULT_FIELDS, node, "fault"):
        return None
    if not raw:
        check.add("MESH0103", f"{what} needs delay, abort or both", node, "fault")
        return None
    delay = abort = None
    if "delay" in raw and check.mapping(raw["delay"], f"{where} fault.delay", DELAY_FIELDS, raw, "delay"):
        body = raw["delay"]
        check.required(body, ("fixed",), f"{what}.delay", raw, "delay")
        fixed = check.duration(body, "fixed", f"{what}.delay.fixed")
        percent = check.percent(body, "percent", f"{what}.delay.percent")
        delay = Delay(fixed, DEFAULT_PERCENT if percent is None else percent) if fixed is not None else None
    if "abort" in raw and check.mapping(raw["abort"], f"{where} fault.abort", ABORT_FIELDS, raw, "abort"):
        body = raw["abort"]
        status = check.number(body, "httpStatus", f"{what}.abort.httpStatus", 200, 599)
        reset = check.boolean(body, "reset", f"{what}.abort.reset")
        percent = check.percent(body, "percent", f"{what}.abort.percent")
        if "httpStatus" in body and "reset" in body:
            check.add("MESH0108", f"{what}.abort: use httpStatus or reset, not both", body, "reset")
        elif "httpStatus" not in body and "reset" not in body:
            check.add("MESH0103", f'{what}.abort: missing "httpStatus" (or "reset: true")', raw, "abort")
        elif reset is False:
            check.add("MESH0102", f"{what}.abort.reset must be true; leave abort out to not abort", body, "reset")
        elif status is not None or reset:
            abort = Abort(status, bool(reset), DEFAULT_PERCENT if percent is None else percent)
    return Fault(delay, abort) if delay or abort else None


def _parse_tcp_fault(check: _Collector, node: dict, where: str) -> TcpFault | None:
    """`tcpFault: {kind, ...}` with the fields its kind takes (TCP_FAULT_FIELDS) and percent."""
    if "tcpFault" not in node:
        return None
    raw = node["tcpFault"]
    what = f"{where}: tcpFault"
    if not check.mapping(raw, f"{where} tcpFault", TCP_FAULT_ALL_FIELDS, node, "tcpFault"):
        return None
    kind = check.choice(raw, "kind", f"{what}.kind", tuple(TCP_FAULT_FIELDS))
    if "kind" not in raw:
        check.add("MESH0103", f'{what}: missing "kind"; expected one of: {", ".join(TCP_FAULT_FIELDS)}',
                  node, "tcpFault")
    if kind is None:
        return None
    takes = ("kind", *TCP_FAULT_FIELDS[kind], "percent")
    for name in raw:
        if name in TCP_FAULT_ALL_FIELDS and name not in takes:
            check.add("MESH0101", f'{what}: a {kind} fault does not take "{name}"; it takes: {", ".join(takes)}',
                      raw, name)
    check.required(raw, TCP_FAULT_REQUIRED.get(kind, ()), f"{what} of kind {kind}", node, "tcpFault")
    rate = check.parsed(raw, "rate", f"{what}.rate", durations.parse_rate)
    latency = check.duration(raw, "latency", f"{what}.latency")
    jitter = check.duration(raw, "jitter", f"{what}.jitter")
    size = check.number(raw, "bytes", f"{what}.bytes")
    percent = check.percent(raw, "percent", f"{what}.percent")
    return TcpFault(kind, latency or 0, jitter or 0, rate or 0, size or 0,
                    DEFAULT_PERCENT if percent is None else percent)


def _parse_circuit_breaker(check: _Collector, body: dict, where: str) -> CircuitBreaker | None:
    if "circuitBreaker" not in body:
        return None
    raw = body["circuitBreaker"]
    if not check.mapping(raw, f"{where} circuitBreaker", CIRCUIT_BREAKER_FIELDS, body, "circuitBreaker"):
        return None
    return CircuitBreaker(*(check.number(raw, name, f"{where}: circuitBreaker.{name}")
                            for name in CIRCUIT_BREAKER_FIELDS))


def _parse_outlier_detection(check: _Collector, body: dict, where: str) -> OutlierDetection | None:
    if "outlierDetection" not in body:
        return None
    raw = body["outlierDetection"]
    what = f"{where}: outlierDetection"
    if not check.mapping(raw, f"{where} outlierDetection", OUTLIER_DETECTION_FIELDS, body, "outlierDetection"):
        return None
    values = {
        "consecutive_5xx_errors": check.number(raw, "consecutive5xxErrors", f"{what}.consecutive5xxErrors"),
        "consecutive_gateway_errors": check.number(raw, "consecutiveGatewayErrors", f"{what}.consecutiveGatewayErrors"),
        "base_ejection_time_ms": check.duration(raw, "baseEjectionTime", f"{what}.baseEjectionTime"),
        "max_ejection_percent": check.number(raw, "maxEjectionPercent", f"{what}.maxEjectionPercent", 0, 100),
    }
    return OutlierDetection(**{name: value for name, value in values.items() if value is not None})


def load(path: Path) -> MeshConfig:
    return parse(yaml_source.load(path))


# --- resolve: the file against the compose project ----------------------------------------


def resolve(config: MeshConfig | None, project: ComposeProject) -> Mesh:
    """Check the mesh file against the compose project and build the resolved `Mesh`.

    Every meshed compose service is part of the mesh; mesh.yaml may regroup workloads
    into versions and set policy, but may only name what the compose file has: compose
    services, and in routes the versions of the service and the services of the mesh.
    """
    mesh, problems = _resolve(config, project)
    if problems:
        raise InvalidFileError(problems)
    return mesh


def parse_and_resolve(doc: yaml_source.YamlDocument | None,
                      project: ComposeProject) -> tuple[MeshConfig | None, Mesh]:
    """parse() then resolve(), reporting the problems of both at once (what `meshcli validate` shows)."""
    if doc is None:
        return None, resolve(None, project)
    config, diagnostics = _parse(doc)
    if any(d.is_error for d in diagnostics):
        # Resolve what is valid too, so unknown services and versions come in the same report.
        _, problems = _resolve(config, project)
        raise InvalidFileError(sorted(diagnostics + problems, key=lambda d: (d.line or 0, d.column or 0)))
    return config, resolve(config, project)


def _resolve(config: MeshConfig | None, project: ComposeProject) -> tuple[Mesh, list[Diagnostic]]:
    workloads = dict(project.workloads)
    problems: list[Diagnostic] = []
    discovered = project.logical_services()
    doc = config.doc if config else None

    def problem(code: str, message: str, *path: Any) -> None:
        node, key = doc.node_at(path) if doc else (None, None)
        line, column = yaml_source.position(node, key)
        problems.append(Diagnostic(code, message, config.source if config else None, line, column))

    if len(project.workloads) > MAX_WORKLOADS:  # the rendered file grows ~30 values per workload
        first_beyond = list(project.workloads)[MAX_WORKLOADS]
        problems.append(project.diag(
            "MESH0207", f"{project.path.name} has {len(project.workloads)} meshed services; meshcli meshes at most "
                        f"{MAX_WORKLOADS} (four containers each): opt the others out with "
                        "`x-mesh: {inject: false}`", first_beyond))
    claimed: dict[str, tuple[str, str]] = {}
    for service in (config.services.values() if config else ()):
        if not service.versions and service.name not in discovered:
            problem("MESH0201", f'unknown service "{service.name}": {project.path.name} has no such service'
                                f"{did_you_mean(service.name, discovered)}; known services: "
                                f"{', '.join(sorted(discovered)) or 'none'}",
                    "services", service.name)
        for version, workload_name in service.versions.items():
            path = ("services", service.name, "versions", version)
            if workload_name in project.skipped:
                problem("MESH0204", f'service "{service.name}" version "{version}": compose service '
                                    f'"{workload_name}" is not meshed ({project.skipped[workload_name]})', *path)
            elif workload_name not in project.workloads:
                problem("MESH0202", f'service "{service.name}" version "{version}": no compose service '
                                    f'"{workload_name}" in {project.path.name}'
                                    f"{did_you_mean(workload_name, project.workloads)}", *path)
            elif workload_name in claimed:
                other = claimed[workload_name]
                problem("MESH0203", f'compose service "{workload_name}" is already version "{other[1]}" of '
                                    f'service "{other[0]}"', *path)
            else:
                claimed[workload_name] = (service.name, version)

    for workload_name, (service_name, version) in claimed.items():
        old = workloads[workload_name]
        workloads[workload_name] = Workload(old.name, service_name, version, old.ports, old.profiles)
    configs = config.services if config else {}
    grouped: dict[str, list[Workload]] = {}
    for workload in workloads.values():
        grouped.setdefault(workload.service, []).append(workload)
    services = {}
    for name, members in sorted(grouped.items()):
        members.sort(key=lambda w: w.version)
        declared = configs.get(name, ServiceConfig(name))
        ports = tuple(sorted({p for w in members for p in w.ports} | set(declared.ports)))
        services[name] = Service(name, tuple(Version(w.version, w.name) for w in members), ports,
                                 declared.load_balancer, declared.policy)
    for service in services.values():
        for code, message, path in _policy_problems(service, services, doc):
            problem(code, message, *path)
    return Mesh(project.name, services, workloads), problems


def _policy_problems(service: Service, services: dict[str, Service], doc: yaml_source.YamlDocument | None):
    """(code, message, path) for the versions and sources a service's routes name that do not exist."""
    known = [v.name for v in service.versions]
    versions_hint = f"; {service.name} has: {', '.join(known)}"
    base: tuple[Any, ...] = ("services", service.name)
    rules = [(service.policy.default_route, base, f'service "{service.name}"')]
    rules += [(route, base + ("routes", i), f'service "{service.name}" route "{route.name}"')
              for i, route in enumerate(service.policy.routes)]
    for route, path, where in rules:
        for weighted in route.split or ():
            if weighted.version not in known:
                at = path + ("split", weighted.version) if _exists(doc, path + ("split",)) else path + ("to",)
                yield ("MESH0205", f'{where}: unknown version "{weighted.version}"'
                                   f"{did_you_mean(weighted.version, known)}{versions_hint}", at)
        if route.mirror is not None and route.mirror.version not in known:
            yield ("MESH0205", f'{where}: mirror to unknown version "{route.mirror.version}"'
                               f"{did_you_mean(route.mirror.version, known)}{versions_hint}",
                   path + ("mirror", "version"))
        for j, match in enumerate(route.matches):
            if match.source is not None and match.source not in services:
                yield ("MESH0206", f'{where}: unknown source "{match.source}": no service of the mesh has that name'
                                   f"{did_you_mean(match.source, services)}", path + ("match", j, "source"))


def _exists(doc: yaml_source.YamlDocument | None, path: tuple[Any, ...]) -> bool:
    if doc is None:
        return False
    node, key = doc.node_at(path)
    return key == path[-1] and node is not doc.data
