"""Compiles the resolved mesh into the file every sidecar reads (`sidecar.json`).

The format is the sidecar's own: proxy/meshproxy/config.py defines it (the values, their
JSON, `dump()` and `parse()`), and this module only builds those values from the mesh
model. Every route carries what it does not set itself from the service level of
mesh.yaml, so a sidecar never looks anything up twice. The version is a content hash:
each sidecar reports the version it runs, so `meshcli status` can tell SYNCED from STALE;
the generation counts the configs compiled for the project. Written atomically, so a
sidecar never reads half a file, and only when the version changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from meshproxy import config as wire

from meshcli import mesh_config
from meshcli.mesh_config import Mesh, RequestMatch, Route, Service, StringMatch
from meshcli.yaml_source import atomic_write


@dataclass(frozen=True)
class Compiled:
    """What is (now) in sidecar.json; `changed` says whether this write replaced it."""

    version: str
    generation: int
    changed: bool


def compile_mesh(mesh: Mesh, runtime_faults: Sequence[wire.RuntimeFault] = (),
                 generation: int = 0) -> wire.SidecarConfig:
    """The sidecar config of `mesh` plus the runtime faults, its version set."""
    config = wire.SidecarConfig(version="", services={name: _service(s, mesh) for name, s in mesh.services.items()},
                                generation=generation, faults=tuple(runtime_faults), project=mesh.project,
                                telemetry=_telemetry(mesh.telemetry), trust_domain=mesh.security.trust_domain)
    return replace(config, version=content_version(config))


def content_version(config: wire.SidecarConfig) -> str:
    """sha256[:12] of the canonical JSON of the config without version and generation."""
    return hashlib.sha256(wire.content(config).encode()).hexdigest()[:12]


def _telemetry(telemetry: mesh_config.Telemetry) -> wire.Telemetry:
    tracing = telemetry.tracing
    return wire.Telemetry(telemetry.redact_headers,
                          wire.Tracing(tracing.endpoint, tracing.sampling) if tracing else None)


def _service(service: Service, mesh: Mesh) -> wire.Service:
    policy = service.policy
    return wire.Service(
        name=service.name,
        versions=tuple(wire.Version(v.name, v.workload) for v in service.versions),
        ports=tuple(service.ports),
        load_balancer=service.load_balancer,
        routes=tuple(_route(route) for route in routes_of(service)),
        circuit_breaker=_circuit_breaker(policy.circuit_breaker) if policy.circuit_breaker else None,
        outlier_detection=_outlier_detection(policy.outlier_detection) if policy.outlier_detection else None,
        tcp_fault=tcp_fault(policy.tcp_fault) if policy.tcp_fault else None,
        mtls=mesh.mtls_mode(service),
        authorization=tuple(_authz_policy(p, mesh) for p in policy.authorization),
    )


def principal(source: str, mesh: Mesh) -> str:
    """An authorization source as the sidecar compares it: a service name becomes its SPIFFE ID."""
    if source == wire.NO_IDENTITY or source.startswith("spiffe://"):
        return source
    return wire.spiffe_id(mesh.security.trust_domain, mesh.project, source)


def _authz_policy(policy: mesh_config.AuthzPolicy, mesh: Mesh) -> wire.AuthzPolicy:
    return wire.AuthzPolicy(policy.name, policy.action, tuple(
        wire.AuthzRule(principals=tuple(principal(s, mesh) for s in rule.sources), methods=rule.methods,
                       paths=tuple(_string_match(m) for m in rule.paths),
                       headers=tuple((name, _string_match(m)) for name, m in rule.headers), ports=rule.ports)
        for rule in policy.rules))


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


def _seconds(ms: float | None) -> float | None:
    return wire.seconds(ms) if ms is not None else None


def _route(route: Route) -> wire.Route:
    return wire.Route(
        name=route.name,
        matches=tuple(_request_match(m) for m in route.matches),
        split=tuple(wire.WeightedVersion(w.version, w.weight) for w in route.split or ()),
        timeout=_seconds(route.timeout_ms),
        retries=_retries(route.retries) if route.retries else None,
        mirror=wire.Mirror(route.mirror.version, route.mirror.percent) if route.mirror else None,
        fault=http_fault(route.fault) if route.fault else None,
    )


def _request_match(match: RequestMatch) -> wire.RequestMatch:
    return wire.RequestMatch(
        path=_string_match(match.path) if match.path else None,
        methods=tuple(match.methods),
        headers=tuple((name, _string_match(m)) for name, m in match.headers),
        query=tuple((name, _string_match(m)) for name, m in match.query),
        source=match.source,
    )


def _string_match(match: StringMatch) -> wire.StringMatch:
    return wire.StringMatch(match.kind, match.value)


def _retries(retries: mesh_config.Retries) -> wire.Retries:
    return wire.Retries(
        attempts=retries.attempts,
        per_try_timeout=_seconds(retries.per_try_timeout_ms),
        retry_on=frozenset(retries.retry_on),
        retriable_status_codes=frozenset(retries.retriable_status_codes),
        backoff=wire.seconds(retries.backoff_ms),
        retry_non_idempotent=retries.retry_non_idempotent,
    )


def http_fault(fault: mesh_config.Fault) -> wire.HttpFault:
    """A route's fault, also the `http` of a runtime fault."""
    delay, abort = fault.delay, fault.abort
    return wire.HttpFault(
        wire.Delay(wire.seconds(delay.ms), delay.percent) if delay else None,
        wire.Abort(None if abort.reset else abort.status, abort.reset, abort.percent) if abort else None,
    )


def tcp_fault(fault: mesh_config.TcpFault) -> wire.TcpFault:
    """A service's TCP fault, also the `tcp` of a runtime fault."""
    return wire.TcpFault(fault.kind, wire.seconds(fault.latency_ms), wire.seconds(fault.jitter_ms), fault.rate,
                         fault.bytes, fault.percent)


def _circuit_breaker(breaker: mesh_config.CircuitBreaker) -> wire.CircuitBreaker:
    return wire.CircuitBreaker(breaker.max_connections, breaker.max_pending_requests,
                               breaker.max_requests_per_connection)


def _outlier_detection(detection: mesh_config.OutlierDetection) -> wire.OutlierDetection:
    # mesh.yaml's 0 ("disabled", as in Istio) is None here: the sidecar never ejects on that count.
    return wire.OutlierDetection(detection.consecutive_5xx_errors or None, detection.consecutive_gateway_errors or None,
                                 wire.seconds(detection.base_ejection_time_ms), detection.max_ejection_percent)


def write(mesh: Mesh, config_dir: Path, runtime_faults: Sequence[wire.RuntimeFault] = ()) -> Compiled:
    """Write sidecar.json into config_dir unless it already holds this version."""
    previous = current(config_dir)
    config = compile_mesh(mesh, runtime_faults)
    if previous is not None and previous.version == config.version:
        return replace(previous, changed=False)
    config = replace(config, generation=previous.generation + 1 if previous is not None else 1)
    atomic_write(config_dir / wire.CONFIG_FILE, wire.dump(config))
    return Compiled(config.version, config.generation, changed=True)


def current(config_dir: Path) -> Compiled | None:
    """The version and generation of the sidecar.json in config_dir, None when there is none."""
    try:
        config = wire.parse((config_dir / wire.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Compiled(config.version, config.generation, changed=False)


def current_version(config_dir: Path) -> str | None:
    compiled = current(config_dir)
    return compiled.version if compiled else None
