"""Compiles the resolved mesh into the file every sidecar reads (`sidecar.json`, schema 2).

proxy/meshproxy/config.py parses this format; the two sides agree on it key for key
(tests/unit/test_sidecar_config.py feeds compiled configs to that parser). Durations
are milliseconds, percentages numbers from 0 to 100, optional keys absent or null:

    {"schema": 2, "project": "shop",
     "version": "3f2a9c0d1b7e",    # sha256[:12] of the canonical JSON of all but version and generation
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
         "tcp": {...a tcpFault...}, "until": 1764000000.5}]}   # epoch seconds; null: until cleared

Every route carries what it does not set itself from the service level of mesh.yaml, so
a sidecar never looks anything up twice. The version is a content hash: each sidecar
reports the version it runs, so `meshcli status` can tell SYNCED from STALE; the
generation counts the configs compiled for the project. Written atomically, so a sidecar
never reads half a file, and only when the version changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from meshcli.mesh_config import (CircuitBreaker, Fault, Mesh, OutlierDetection, RequestMatch, Retries, Route,
                                 Service, StringMatch, TcpFault)
from meshcli.yaml_source import atomic_write

FILE_NAME = "sidecar.json"
SCHEMA = 2


@dataclass(frozen=True)
class Compiled:
    """What is (now) in sidecar.json; `changed` says whether this write replaced it."""

    version: str
    generation: int
    changed: bool


def compile_mesh(mesh: Mesh, runtime_faults: Sequence[dict] = (), generation: int = 0) -> dict:
    """The sidecar.json document; `runtime_faults` are already in the compiled form."""
    body = {
        "schema": SCHEMA,
        "project": mesh.project,
        "services": {name: _service(service) for name, service in mesh.services.items()},
        "faults": [dict(fault) for fault in runtime_faults],
    }
    return {"schema": SCHEMA, "project": mesh.project, "version": content_version(body), "generation": generation,
            **body}


def content_version(body: dict) -> str:
    """sha256[:12] of the canonical JSON of the config without version and generation."""
    content = {key: value for key, value in body.items() if key not in ("version", "generation")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _service(service: Service) -> dict:
    policy = service.policy
    return _without_none({
        "versions": [{"name": v.name, "host": v.workload} for v in service.versions],
        "ports": list(service.ports),
        "loadBalancer": service.load_balancer,
        "routes": [_route(route) for route in routes_of(service)],
        "circuitBreaker": _circuit_breaker(policy.circuit_breaker) if policy.circuit_breaker else None,
        "outlierDetection": _outlier_detection(policy.outlier_detection) if policy.outlier_detection else None,
        "tcpFault": compile_tcp_fault(policy.tcp_fault) if policy.tcp_fault else None,
    })


def routes_of(service: Service) -> tuple[Route, ...]:
    """The routes a sidecar applies, in order: the file's routes with what they leave out taken
    from the service level, then the service-level default route unless the last route has no match."""
    default = service.policy.default_route
    routes = tuple(_inherit(route, default) for route in service.policy.routes)
    if not routes or routes[-1].matches:
        routes += (default,)
    return routes


INHERITED = ("split", "timeout_ms", "retries", "mirror", "fault")  # what a route takes from the service level


def _inherit(route: Route, default: Route) -> Route:
    return replace(route, **{name: getattr(default, name) for name in INHERITED if getattr(route, name) is None})


def _route(route: Route) -> dict:
    return _without_none({
        "name": route.name,
        "match": [_request_match(m) for m in route.matches] or None,
        "split": [{"version": w.version, "weight": w.weight} for w in route.split or ()],
        "timeoutMs": route.timeout_ms,
        "retries": _retries(route.retries) if route.retries else None,
        "mirror": {"version": route.mirror.version, "percent": route.mirror.percent} if route.mirror else None,
        "fault": compile_http_fault(route.fault) if route.fault else None,
    })


def _request_match(match: RequestMatch) -> dict:
    return _without_none({
        "path": _string_match(match.path) if match.path else None,
        "methods": list(match.methods) or None,
        "headers": [{"name": name, **_string_match(m)} for name, m in match.headers] or None,
        "query": [{"name": name, **_string_match(m)} for name, m in match.query] or None,
        "source": match.source,
    })


def _string_match(match: StringMatch) -> dict:
    return {"kind": match.kind} if match.kind == "present" else {"kind": match.kind, "value": match.value}


def _retries(retries: Retries) -> dict:
    return _without_none({
        "attempts": retries.attempts,
        "perTryTimeoutMs": retries.per_try_timeout_ms,
        "retryOn": list(retries.retry_on),
        "retriableStatusCodes": list(retries.retriable_status_codes),
        "backoffMs": retries.backoff_ms,
        "retryNonIdempotent": retries.retry_non_idempotent,
    })


def compile_http_fault(fault: Fault) -> dict:
    """A route's `fault`, also the `http` of a runtime fault."""
    compiled = {}
    if fault.delay is not None:
        compiled["delay"] = {"ms": fault.delay.ms, "percent": fault.delay.percent}
    if fault.abort is not None:
        abort = {"status": fault.abort.status} if not fault.abort.reset else {"reset": True}
        compiled["abort"] = {**abort, "percent": fault.abort.percent}
    return compiled


def compile_tcp_fault(fault: TcpFault) -> dict:
    """A service's `tcpFault`, also the `tcp` of a runtime fault."""
    return {"kind": fault.kind, "latencyMs": fault.latency_ms, "jitterMs": fault.jitter_ms,
            "rateBytesPerSecond": fault.rate, "bytes": fault.bytes, "percent": fault.percent}


def _circuit_breaker(breaker: CircuitBreaker) -> dict:
    return _without_none({"maxConnections": breaker.max_connections,
                          "maxPendingRequests": breaker.max_pending_requests,
                          "maxRequestsPerConnection": breaker.max_requests_per_connection})


def _outlier_detection(detection: OutlierDetection) -> dict:
    # mesh.yaml's 0 ("disabled", as in Istio) is null here: the sidecar never ejects on that count.
    return {"consecutive5xxErrors": detection.consecutive_5xx_errors or None,
            "consecutiveGatewayErrors": detection.consecutive_gateway_errors or None,
            "baseEjectionTimeMs": detection.base_ejection_time_ms,
            "maxEjectionPercent": detection.max_ejection_percent}


def _without_none(data: dict) -> dict:
    return {key: value for key, value in data.items() if value is not None}


def write(mesh: Mesh, config_dir: Path, runtime_faults: Sequence[dict] = ()) -> Compiled:
    """Write sidecar.json into config_dir unless it already holds this version."""
    previous = current(config_dir)
    compiled = compile_mesh(mesh, runtime_faults)
    if previous is not None and previous.version == compiled["version"]:
        return replace(previous, changed=False)
    compiled["generation"] = previous.generation + 1 if previous is not None else 1
    atomic_write(config_dir / FILE_NAME, json.dumps(compiled, indent=2) + "\n")
    return Compiled(compiled["version"], compiled["generation"], changed=True)


def current(config_dir: Path) -> Compiled | None:
    """The version and generation of the sidecar.json in config_dir, None when there is none."""
    try:
        data = json.loads((config_dir / FILE_NAME).read_text(encoding="utf-8"))
        generation = data.get("generation") or 0
        return Compiled(str(data["version"]), generation if isinstance(generation, int) else 0, changed=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def current_version(config_dir: Path) -> str | None:
    compiled = current(config_dir)
    return compiled.version if compiled else None
