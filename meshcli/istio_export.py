"""`meshcli export istio`: the resolved mesh as Istio resources, and what could not be said in them.

Every logical service becomes a DestinationRule (one subset per version, selected by the
`version` label; load balancer, connection pool from the circuit breaker, outlier
detection) and a VirtualService (the routes in order, each complete: what a mesh.yaml
route inherits from the service level is written out, since Istio routes inherit
nothing). A route without retries gets `retries: {attempts: 0}`: Istio would otherwise
retry it (ISTIO_DEFAULT_RETRIES) where the local sidecars do not. Every mesh-file setting
is either mapped or reported with its file:line (MESH0401: not exported, MESH0402: exported
with a difference); the mapping tables are istio_model.py's.

Security: a service's `mtls` mode becomes a PeerAuthentication selecting its pods
(`app: SERVICE`), the mesh-wide `mtls.mode` a namespace-wide one without a selector
(`default`), each authorization policy an AuthorizationPolicy `SERVICE-POLICY`. Callers
need no DestinationRule `tls` for STRICT and PERMISSIVE: Istio's auto mTLS (on by default)
sends mTLS to every workload with a sidecar, as the local sidecars do; ISTIO_MUTUAL would
break calls to pods without one. A DISABLE service's DestinationRule says `tls: {mode:
DISABLE}`, so callers send plain text even where auto mTLS is turned off. The trust domain
and the certificates' lifetime are the Istio installation's, not a resource's: reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Callable

from meshcli import fault_layer, istio_model as istio, rule_layer
from meshcli.diagnostics import Diagnostic
from meshcli.errors import InputError
from meshcli.mesh_config import (AuthzPolicy, AuthzRule, Fault, Mesh, MeshConfig, RequestMatch, Retries, Route,
                                  Service, StringMatch)
from meshproxy.config import NO_IDENTITY, MtlsMode
from meshcli.sidecar_config import routes_of
from meshcli.workspace import Loaded
from meshcli.yaml_source import atomic_write, dump_plain


@dataclass(frozen=True)
class Resource:
    manifest: dict[str, Any]  # apiVersion, kind, metadata, spec: what `kubectl apply` takes

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def file_name(self) -> str:
        """One file per resource (`-o DIR`): `virtualservice-reviews.yaml`."""
        return f"{self.kind.lower()}-{self.name}.yaml"


@dataclass(frozen=True)
class Export:
    resources: tuple[Resource, ...]
    diagnostics: tuple[Diagnostic, ...]  # warnings and notes, in the mesh file's order


class _Notes:
    """Diagnostics about mesh-file settings, at their line (the closest one when not written)."""

    def __init__(self, config: MeshConfig | None) -> None:
        self.doc = config.doc if config else None
        self.items: list[Diagnostic] = []

    def add(self, code: str, message: str, *path: Any) -> None:
        self.add_at(code, message, "services", *path)

    def add_at(self, code: str, message: str, *path: Any) -> None:
        """A diagnostic at a path from the file's top (`mtls`, `trustDomain`)."""
        self.items.append(self.doc.diag_at(code, message, path) if self.doc else Diagnostic(code, message))

    def written(self, *path: Any) -> bool:
        """Whether the mesh file writes this setting (not a default)."""
        node: Any = self.doc.data if self.doc else None
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True


@dataclass(frozen=True)
class _Scope:
    """What a service's resources depend on beyond the service."""

    mesh: Mesh
    namespace: str | None
    notes: _Notes

    @property
    def principal_namespace(self) -> str:
        return self.namespace or istio.DEFAULT_NAMESPACE


def export(mesh: Mesh, config: MeshConfig | None, namespace: str | None = None) -> Export:
    """The Istio resources of every service of `mesh` (`config`: the mesh file, for positions)."""
    notes = _Notes(config)
    scope = _Scope(mesh, namespace, notes)
    resources = [Resource(_manifest(istio.PEER_AUTHENTICATION, name, namespace, spec))
                 for name, spec in _namespace_peer_authentication(scope)]
    for service in mesh.services.values():
        _report(service, config, notes)
        resources += [Resource(_manifest(kind, name, namespace, spec))
                      for kind, build in RESOURCES for name, spec in build(service, scope)]
    ordered = sorted(notes.items, key=lambda d: (d.line or 0, d.column or 0))
    return Export(tuple(resources), tuple(ordered))


def to_yaml(resources: tuple[Resource, ...] | list[Resource]) -> str:
    """One multi-document YAML stream (what `kubectl apply -f -` reads)."""
    return "---\n".join(dump_plain(r.manifest) for r in resources)


def write(result: Export, directory: Path) -> list[Path]:
    """One file per resource in `directory` (created if missing; its parent must exist)."""
    parent = directory.absolute().parent
    if directory.exists() and not directory.is_dir() or not parent.is_dir():
        why = "it is not a directory" if directory.exists() else f"{parent} does not exist"
        raise InputError(f"cannot write to {directory}: {why}",
                         hint="give a directory (created when only it is missing), or -o - for stdout")
    directory.mkdir(exist_ok=True)
    paths = []
    for resource in result.resources:
        path = directory / resource.file_name
        atomic_write(path, dump_plain(resource.manifest))
        paths.append(path)
    return paths


def _manifest(kind: str, name: str, namespace: str | None, spec: dict) -> dict:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": "meshcli"}
    return {"apiVersion": istio.API_OF[kind], "kind": kind, "metadata": metadata, "spec": spec}


# --- DestinationRule ------------------------------------------------------------------------

def destination_rule(service: Service, scope: _Scope) -> dict:
    policy: dict[str, Any] = {"loadBalancer": {"simple": istio.LOAD_BALANCER_TO_ISTIO[service.load_balancer]}}
    breaker = service.policy.circuit_breaker
    if breaker is not None:
        pool: dict[str, dict[str, int]] = {}
        if breaker.max_connections is not None:
            # In flight from one caller: connections for HTTP/1.1, requests on HTTP/2's shared connection.
            pool["tcp"] = {"maxConnections": breaker.max_connections}
            pool["http"] = {"http2MaxRequests": breaker.max_connections}
        http = pool.setdefault("http", {})
        if breaker.max_pending_requests is not None:
            http["http1MaxPendingRequests"] = breaker.max_pending_requests
        if breaker.max_requests_per_connection is not None:
            http["maxRequestsPerConnection"] = breaker.max_requests_per_connection
        policy["connectionPool"] = {k: v for k, v in pool.items() if v}
    detection = service.policy.outlier_detection
    if detection is not None:
        policy["outlierDetection"] = {
            "consecutive5xxErrors": detection.consecutive_5xx_errors,
            "consecutiveGatewayErrors": detection.consecutive_gateway_errors,
            "baseEjectionTime": istio.duration(detection.base_ejection_time_ms),
            "maxEjectionPercent": detection.max_ejection_percent,
        }
    if scope.mesh.mtls_mode(service) == MtlsMode.DISABLE:
        policy["tls"] = {"mode": istio.CLIENT_TLS_DISABLE}  # callers send plain text (see the module's docstring)
    return {"host": service.name, "trafficPolicy": policy,
            "subsets": [{"name": v.name, "labels": {istio.VERSION_LABEL: v.name}} for v in service.versions]}


# --- VirtualService -------------------------------------------------------------------------

def virtual_service(service: Service, scope: _Scope) -> dict:
    return {"hosts": [service.name], "http": [_http_route(service.name, route) for route in routes_of(service)]}


def _http_route(host: str, route: Route) -> dict:
    body: dict[str, Any] = {"name": route.name}
    if route.matches:
        body["match"] = [_match(m) for m in route.matches]
    if route.split:
        only = len(route.split) == 1
        body["route"] = [{"destination": {"host": host, "subset": w.version}, **({} if only else {"weight": w.weight})}
                         for w in route.split]
    else:
        body["route"] = [{"destination": {"host": host}}]  # every version, by the load balancer
    if route.timeout_ms is not None:
        body["timeout"] = istio.duration(route.timeout_ms)
    body["retries"] = _retries(route.retries) if route.retries else {"attempts": 0}
    if route.mirror is not None:
        body["mirror"] = {"host": host, "subset": route.mirror.version}
        body["mirrorPercentage"] = {"value": route.mirror.percent}
    fault = _fault(route.fault) if route.fault else None
    if fault:
        body["fault"] = fault
    return body


def _match(match: RequestMatch) -> dict:
    body: dict[str, Any] = {}
    if match.path is not None:
        body["uri"] = _string_match(match.path)
    if match.methods:
        body["method"] = ({"exact": match.methods[0]} if len(match.methods) == 1
                          else {"regex": "|".join(match.methods)})
    if match.headers:
        body["headers"] = {name: _string_match(m) for name, m in match.headers}
    if match.query:
        body["queryParams"] = {name: _query_match(m) for name, m in match.query}
    if match.source is not None:
        body["sourceLabels"] = {istio.APP_LABEL: match.source}
    return body


def _string_match(match: StringMatch) -> dict:
    return {} if match.kind == "present" else {match.kind: match.value}


def _query_match(match: StringMatch) -> dict:
    # Istio matches query parameters exactly or by regex only.
    if match.kind == "present":
        return {"regex": istio.PRESENT_QUERY_REGEX}
    if match.kind == "prefix":
        return {"regex": re.escape(match.value) + ".*"}
    return {match.kind: match.value}


def _retries(retries: Retries) -> dict:
    body: dict[str, Any] = {"attempts": retries.attempts}
    if not retries.attempts:
        return body  # no retries: the rest would not be used
    if retries.per_try_timeout_ms is not None:
        body["perTryTimeout"] = istio.duration(retries.per_try_timeout_ms)
    conditions = list(retries.retry_on)
    if istio.RETRIABLE_STATUS_CODES in conditions:
        conditions += [str(code) for code in retries.retriable_status_codes]
    body["retryOn"] = ",".join(conditions)
    body["backoff"] = istio.duration(retries.backoff_ms)
    return body


def _fault(fault: Fault) -> dict:
    body: dict[str, Any] = {}
    if fault.delay is not None:
        body["delay"] = {"fixedDelay": istio.duration(fault.delay.ms), "percentage": {"value": fault.delay.percent}}
    if fault.abort is not None and fault.abort.status is not None:
        body["abort"] = {"httpStatus": fault.abort.status, "percentage": {"value": fault.abort.percent}}
    return body


# --- PeerAuthentication, AuthorizationPolicy ------------------------------------------------

def _selector(service: Service) -> dict:
    return {"matchLabels": {istio.APP_LABEL: service.name}}


def _namespace_peer_authentication(scope: _Scope) -> list[tuple[str, dict]]:
    """The mesh-wide mode, when the mesh file writes it, for every workload of the namespace."""
    notes, security = scope.notes, scope.mesh.security
    if notes.written("mtls", "trustDomain"):
        notes.add_at("MESH0401", "mtls.trustDomain is not exported: Istio's trust domain is the installation's "
                                 f"(meshConfig.trustDomain); the principals of the policies are written in "
                                 f'"{security.trust_domain}"', "mtls", "trustDomain")
    if notes.written("mtls", "certificateLifetime"):
        notes.add_at("MESH0401", "mtls.certificateLifetime is not exported: Istio's workload certificate lifetime "
                                 "is the installation's (istiod's DEFAULT_WORKLOAD_CERT_TTL, the proxies' "
                                 "SECRET_TTL), not a resource's", "mtls", "certificateLifetime")
    if not notes.written("mtls", "mode"):
        return []
    _report_mode(notes, "mtls.mode", security.mode, "mtls", "mode")
    return [(istio.NAMESPACE_PEER_AUTHENTICATION, {"mtls": {"mode": security.mode}})]


def _peer_authentications(service: Service, scope: _Scope) -> list[tuple[str, dict]]:
    mode = service.policy.mtls
    if mode is None:
        return []
    return [(service.name, {"selector": _selector(service), "mtls": {"mode": mode}})]


def _authorization_policies(service: Service, scope: _Scope) -> list[tuple[str, dict]]:
    resources = []
    for i, policy in enumerate(service.policy.authorization):
        name = _resource_name(f"{service.name}-{policy.name}")
        if name != f"{service.name}-{policy.name}":
            scope.notes.add("MESH0402", f'{service.name} authorization policy "{policy.name}" is exported as '
                                        f"{name}: a Kubernetes name is lower-case letters, digits and dashes "
                                        f'(import reads it back as "{name[len(service.name) + 1:]}")',
                            service.name, "authorization", i, "name")
        if scope.namespace is None and any(s != NO_IDENTITY and not s.startswith(istio.SPIFFE)
                                           for rule in policy.rules for s in rule.sources):
            scope.notes.add("MESH0402", f'{service.name} authorization policy "{policy.name}": its sources are '
                                        f"principals in namespace {istio.DEFAULT_NAMESPACE} (no --namespace given)",
                            service.name, "authorization", i)
        resources.append((name, authorization_policy(service, policy, scope)))
    return resources


def _resource_name(text: str) -> str:
    """A DNS-1123 name (what metadata.name takes) for `text`."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "policy"


def authorization_policy(service: Service, policy: AuthzPolicy, scope: _Scope) -> dict:
    return {"selector": _selector(service), "action": policy.action,
            "rules": [_authz_rule(rule, scope) for rule in policy.rules]}


def _authz_rule(rule: AuthzRule, scope: _Scope) -> dict:
    """`from` entries are an OR (a caller without identity is its own entry), `to`'s operation
    fields an AND of ORs, `when` conditions an AND: the mesh rule's shape."""
    body: dict[str, Any] = {}
    trust_domain = scope.mesh.security.trust_domain
    sources = []
    # Consecutive principals share one entry; the order is kept, so import gives the same list.
    for no_identity, group in groupby(rule.sources, key=lambda s: s == NO_IDENTITY):
        if no_identity:
            sources.append({"source": {"notPrincipals": [istio.ANY_PRINCIPAL]}})
        else:
            sources.append({"source": {"principals": [istio.principal(s, trust_domain, scope.principal_namespace)
                                                      for s in group]}})
    if sources:
        body["from"] = sources
    operation: dict[str, list[str]] = {}
    if rule.methods:
        operation["methods"] = list(rule.methods)
    if rule.paths:
        operation["paths"] = [istio.istio_value(m.kind, m.value) for m in rule.paths]
    if rule.ports:
        operation["ports"] = [str(p) for p in rule.ports]
    if operation:
        body["to"] = [{"operation": operation}]
    if rule.headers:
        body["when"] = [{"key": f"request.headers[{name}]", "values": [istio.istio_value(m.kind, m.value)]}
                        for name, m in rule.headers]
    return body


# What each service becomes, in order.
RESOURCES: tuple[tuple[str, Callable[[Service, _Scope], list[tuple[str, dict]]]], ...] = (
    (istio.DESTINATION_RULE, lambda service, scope: [(service.name, destination_rule(service, scope))]),
    (istio.VIRTUAL_SERVICE, lambda service, scope: [(service.name, virtual_service(service, scope))]),
    (istio.PEER_AUTHENTICATION, _peer_authentications),
    (istio.AUTHORIZATION_POLICY, _authorization_policies),
)


# --- what does not map one to one -----------------------------------------------------------

def _report(service: Service, config: MeshConfig | None, notes: _Notes) -> None:
    """Warnings and notes for the settings of `service` as the mesh file writes them (not inherited)."""
    name = service.name
    declared = config.services.get(name) if config else None
    if declared is not None and declared.ports:
        notes.add("MESH0402", f"{name}: ports are not exported: they are informational in mesh.yaml, and the "
                              "Kubernetes Service (kompose writes one per compose service) declares them", name, "ports")
    if declared is not None and declared.policy.mtls is not None:
        _report_mode(notes, name, declared.policy.mtls, "services", name, "mtls")
    _report_authorization(service, notes)
    if service.policy.tcp_fault is not None:
        notes.add("MESH0401", f"{name}: tcpFault is not exported: Istio injects faults into HTTP requests only "
                              "(no TCP latency, bandwidth, reset or blackhole)", name, "tcpFault")
    rules = [(service.policy.default_route, (name,), name)]
    rules += [(r, (name, "routes", i), f'{name} route "{r.name}"') for i, r in enumerate(service.policy.routes)]
    for route, path, where in rules:
        if route.fault and route.fault.abort and route.fault.abort.reset:
            notes.add("MESH0401", f"{where}: fault.abort.reset is not exported: an Istio abort answers with an "
                                  "HTTP status only", *path, "fault", "abort", "reset")
        retries = route.retries
        if retries is not None and not retries.retry_non_idempotent and retries.attempts:
            notes.add("MESH0402", f"{where}: retries are exported for every method: Istio retries POST and "
                                  "PATCH too, where mesh.yaml needs retryNonIdempotent: true", *path, "retries")
        if retries is not None and retries.retriable_status_codes and \
                istio.RETRIABLE_STATUS_CODES not in retries.retry_on:
            notes.add("MESH0401", f"{where}: retries.retriableStatusCodes are not exported: retryOn does not list "
                                  f"{istio.RETRIABLE_STATUS_CODES}, so they are not used",
                      *path, "retries", "retriableStatusCodes")
        for j, match in enumerate(route.matches):
            for parameter, condition in match.query:
                if condition.kind == "prefix":
                    notes.add("MESH0402", f'{where}: query parameter "{parameter}" prefix is exported as a regex: '
                                          "Istio matches query parameters exactly or by regex",
                              *path, "match", j, "query", parameter)


def _report_mode(notes: _Notes, where: str, mode: str, *path: Any) -> None:
    if mode == MtlsMode.STRICT:
        notes.add_at("MESH0402", f"{where}: STRICT in Istio refuses plain text from outside the mesh too: what the "
                                 "published ports take locally enters through an ingress gateway", *path)
    elif mode == MtlsMode.DISABLE:
        notes.add_at("MESH0402", f"{where}: DISABLE is exported twice: PeerAuthentication DISABLE (the pods take "
                                 "plain text) and DestinationRule tls DISABLE (callers send it)", *path)


def _report_authorization(service: Service, notes: _Notes) -> None:
    for i, policy in enumerate(service.policy.authorization):
        for j, rule in enumerate(policy.rules):
            conditions = [("path", m) for m in rule.paths] + [(f'header "{name}"', m) for name, m in rule.headers]
            for what, match in conditions:
                if istio.WILDCARD in match.value:
                    notes.add("MESH0402", f'{service.name} authorization policy "{policy.name}": {match.kind} {what} '
                                          f'"{match.value}" has a *, which Istio reads as a wildcard at either end',
                              service.name, "authorization", i, "rules", j,
                              "path" if what == "path" else "headers")


def export_loaded(loaded: Loaded, namespace: str | None = None) -> Export:
    """export() of a loaded project, with the compose file's diagnostics (a service left out of the
    mesh is left out here too) and notes on what runs beside mesh.yaml and is not part of it."""
    result = export(loaded.mesh, loaded.config, namespace)
    layers = ((fault_layer.active(loaded.workspace), fault_layer.path(loaded.workspace), "faults set with `meshcli fault`"),
              (rule_layer.active(loaded.workspace), rule_layer.path(loaded.workspace), "rules set by the testing API"))
    notes = tuple(Diagnostic("MESH0401", f"{len(items)} runtime {what} {'is' if len(items) == 1 else 'are'} not "
                                         "exported: only mesh.yaml is", path)
                  for items, path, what in layers if items)
    return replace(result, diagnostics=tuple(loaded.diagnostics) + result.diagnostics + notes)
