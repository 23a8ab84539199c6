"""`meshcli import istio`: Istio's traffic rules as mesh.yaml settings, and what has no equivalent.

`read()` turns VirtualServices and DestinationRules into mesh-file settings per service
(mesh.yaml's spelling, ready for mesh_edit.set_service_fields), mapping host names to
the compose project's services (`reviews`, `reviews.NS.svc.cluster.local`, or the compose
service of one version) and subsets to versions through their labels (`version`, or
kompose's `io.kompose.service`) and the compose file. Nothing is guessed: a route that
needs something the sidecars lack (a rewrite, a port match, a gRPC abort...) is left out
whole, with a warning at its file:line; gateways, ServiceEntries, delegate
VirtualServices and other kinds are reported the same way. The mapping tables are
istio_model.py's.

Istio routes are complete; mesh.yaml routes inherit from the service level. The last
route, when it takes every request, becomes the service level, and what an earlier route
has in common with it is left to inheritance (so `import(export(m)) == m`).

PeerAuthentication gives a service's `mtls` mode (selector `app: SERVICE`) or, without a
selector, the mesh-wide `mtls.mode`; AuthorizationPolicy a service's `authorization`
policy (named without the `SERVICE-` prefix export adds), its principals read back as
services where they are a service's identity in the trust domain and the namespace.
A policy with anything the sidecars cannot check (JWT principals, namespaces, IP blocks,
`not*` fields, CUSTOM and AUDIT actions, several values for one header...) is left out
whole: a rule dropped from a DENY policy would allow what it denies. DestinationRule
`tls` is the callers' side of a mode: ISTIO_MUTUAL is what auto mTLS does anyway, DISABLE
matches a DISABLE mode; anything else is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from meshcli import istio_model as istio, mesh_config, mesh_edit, yaml_source
from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError
from meshcli.mesh_config import HTTP_METHODS, Mesh, Service
from meshcli.yaml_source import YamlDocument
from meshproxy.config import AUTHZ_ACTIONS, MTLS_MODES, NO_IDENTITY, MtlsMode

# The mesh-file keys a VirtualService / DestinationRule decides for its service: a merge replaces them.
ROUTING_FIELDS = ("to", "split", "timeout", "retries", "mirror", "fault", "routes")
POLICY_FIELDS = ("loadBalancer", "circuitBreaker", "outlierDetection")
INHERITABLE = ("split", "timeout", "retries", "mirror", "fault")  # route fields taken from the service level
# HTTP route fields the sidecars cannot do; a route that sets one is not imported.
UNSUPPORTED_ROUTE_FIELDS = ("redirect", "rewrite", "directResponse", "delegate", "headers", "corsPolicy",
                            "mirror_percent", "mirrorPercent")
UNSUPPORTED_MATCH_FIELDS = ("port", "authority", "scheme", "ignoreUriCase", "withoutHeaders", "sourceNamespace",
                            "gateways", "statPrefix")
ROUTE_FIELDS = ("name", "match", "route", "timeout", "retries", "fault", "mirror", "mirrorPercentage", "mirrors")
RETRY_FIELDS = ("attempts", "perTryTimeout", "retryOn", "backoff")
IGNORED_RETRY_FIELDS = ("retryRemoteLocalities", "retryIgnorePreviousHosts")  # about localities and hosts
# What pilot retries on when a route gives attempts without retryOn, as far as the sidecars can.
ISTIO_DEFAULT_RETRY_ON = ("connect-failure", istio.RETRIABLE_STATUS_CODES)
ISTIO_DEFAULT_RETRY_CODES = (503,)
UNSET_MODE = "UNSET"  # a PeerAuthentication mode: inherit the namespace's (or the mesh's)
OPERATION_FIELDS = ("methods", "paths", "ports")
# What an authorization source can say that the sidecars cannot check.
SOURCE_FIELD_REASONS = {
    "requestPrincipals": "end-user (JWT) identities are not checked by the sidecars",
    "notRequestPrincipals": "end-user (JWT) identities are not checked by the sidecars",
    "namespaces": "a Compose mesh is one namespace",
    "notNamespaces": "a Compose mesh is one namespace",
    "serviceAccounts": "a Compose mesh is one namespace; name the services with principals",
    "notServiceAccounts": "a Compose mesh is one namespace; name the services with principals",
    "ipBlocks": "the sidecars authorize identities, not addresses",
    "notIpBlocks": "the sidecars authorize identities, not addresses",
    "remoteIpBlocks": "the sidecars authorize identities, not addresses",
    "notRemoteIpBlocks": "the sidecars authorize identities, not addresses",
}


@dataclass
class ImportedResource:
    api_version: str
    kind: str
    name: str
    file: Path
    line: int | None
    imported: bool = True  # False: reported, nothing taken from it

    def to_json(self) -> dict:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "file": str(self.file),
                "line": self.line, "imported": self.imported}


@dataclass
class Imported:
    """What the files say, as mesh-file settings per service, and every diagnostic about them."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # service -> mesh-file fields
    mtls: dict[str, Any] = field(default_factory=dict)  # mesh-wide `mtls` keys (None: removed)
    replaced: dict[str, tuple[str, ...]] = field(default_factory=dict)  # service -> keys a merge replaces
    resources: list[ImportedResource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def transform(self, text: str, path: Path) -> str:
        """mesh.yaml's new text: each imported service's keys replaced, everything else (comments too) kept.
        A service the file does not list yet and that gets no settings (a DestinationRule with only
        subsets) is not added."""
        data = yaml_source.load(path, text).data if text.strip() else None
        listed = data.get("services") if isinstance(data, dict) else None
        if self.mtls:
            text = mesh_edit.set_mtls_fields(text, path, self.mtls)
        for service, fields in self.services.items():
            if fields or isinstance(listed, dict) and service in listed:
                text = mesh_edit.set_service_fields(text, path, service, fields, self.replaced[service])
        return text

    def nothing_to_write(self, into_existing_file: bool) -> bool:
        """Whether the files give nothing a mesh file would say."""
        if into_existing_file:
            return not self.services and not self.mtls
        return not any(self.services.values()) and not any(v is not None for v in self.mtls.values())


@dataclass
class _Resource:
    doc: YamlDocument
    body: Any  # the resource's mapping
    kind: str
    name: str
    namespace: str | None
    record: ImportedResource

    def diag(self, code: str, message: str, node: Any = None, key: Any = None) -> Diagnostic:
        return self.doc.diag(code, f"{self.kind} {self.name}: {message}", node if node is not None else self.body, key)

    @property
    def handler(self) -> Callable[[_Context, _Resource], None] | None:
        if self.record.api_version.split("/")[0] not in istio.ISTIO_GROUPS:
            return None
        return KINDS.get(self.kind)


class _Skip(Exception):
    """This route (or resource) is not imported; the diagnostic says why."""


def read(paths: list[Path], mesh: Mesh) -> Imported:
    """Read Istio resources from `paths` against the resolved `mesh`; raise InvalidFileError when
    a file is not YAML or a document is not a Kubernetes resource."""
    result = Imported()
    errors: list[Diagnostic] = []
    resources: dict[tuple[str, str | None, str], _Resource] = {}
    for path in paths:
        for doc in yaml_source.load_all(path):
            for node in _items(doc):
                resource = _resource(doc, node, errors)
                if resource is None:
                    continue
                result.resources.append(resource.record)
                key = (resource.kind, resource.namespace, resource.name)
                if key in resources:  # as `kubectl apply` of both files: the later one wins
                    earlier = resources[key]
                    earlier.record.imported = False
                    result.diagnostics.append(resource.diag(
                        "MESH0417", f"replaces the {resource.kind} of that name at "
                                    f"{earlier.record.file}:{earlier.record.line}"))
                resources[key] = resource
    if errors:
        raise InvalidFileError(errors)
    ordered = sorted(resources.values(), key=lambda r: r.kind != istio.DESTINATION_RULE)  # subsets first
    context = _Context(mesh, result)
    for resource in ordered:
        handler = resource.handler
        if handler is None:
            resource.record.imported = False
            result.diagnostics.append(resource.diag("MESH0412", _unsupported_kind(resource)))
        else:
            handler(context, resource)
    _client_tls(context)
    result.diagnostics.sort(key=lambda d: (str(d.file), d.line or 0, d.column or 0))
    return result


def _items(doc: YamlDocument) -> list[Any]:
    """The resources of one document (a `kind: List`, as `kubectl get -o yaml` prints, holds several)."""
    data = doc.data
    if isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list):
        return list(data["items"])
    return [data]


def _resource(doc: YamlDocument, node: Any, errors: list[Diagnostic]) -> _Resource | None:
    if not isinstance(node, dict) or not isinstance(node.get("kind"), str) or \
            not isinstance(node.get("apiVersion"), str):
        errors.append(doc.diag("MESH0411", "not a Kubernetes resource: expected a mapping with apiVersion and kind",
                               node if isinstance(node, dict) else doc.data))
        return None
    metadata = node.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    line, _ = doc.at(node)
    record = ImportedResource(str(node["apiVersion"]), str(node["kind"]), str(name or "<unnamed>"), doc.path, line)
    resource = _Resource(doc, node, record.kind, record.name, str(namespace) if namespace else None, record)
    if resource.handler is not None and not isinstance(node.get("spec"), dict):
        errors.append(resource.diag("MESH0411", "spec must be a mapping", node, "spec" if "spec" in node else None))
        return None
    return resource


def _unsupported_kind(resource: _Resource) -> str:
    reasons = {"Gateway": "ingress and egress gateways are not part of a Compose mesh",
               "ServiceEntry": "egress to hosts outside the compose project is not routed by the sidecars",
               "Sidecar": "every sidecar reaches every service of the project",
               "EnvoyFilter": "the sidecars are not Envoy",
               "RequestAuthentication": "the sidecars check workload identities (mTLS), not end-user JWTs"}
    if resource.record.api_version.split("/")[0] not in istio.ISTIO_GROUPS:
        return f"not an Istio resource ({resource.record.api_version}): not imported"
    reason = reasons.get(resource.kind, "meshcli reads VirtualService, DestinationRule, PeerAuthentication and "
                                        "AuthorizationPolicy")
    return f"not imported: {reason}"


@dataclass
class _Context:
    mesh: Mesh
    result: Imported
    # service -> subset name -> version (None: the subset selects no version here)
    subsets: dict[str, dict[str, str | None]] = field(default_factory=dict)
    routed_by: dict[str, _Resource] = field(default_factory=dict)  # service -> its VirtualService
    assumed_subsets: set[tuple[str, str]] = field(default_factory=set)
    client_tls: dict[str, tuple[_Resource, dict]] = field(default_factory=dict)  # service -> its DR's trafficPolicy

    def warn(self, resource: _Resource, code: str, message: str, node: Any = None, key: Any = None) -> None:
        self.result.diagnostics.append(resource.diag(code, message, node, key))

    def service(self, resource: _Resource, host: Any, node: Any, key: Any) -> Service | None:
        """The service a host names, or None (warned)."""
        name = istio.service_of_host(str(host), resource.namespace)
        if "*" in str(host) or name not in self.mesh.services:
            known = ", ".join(sorted(self.mesh.services))
            self.warn(resource, "MESH0414", f'host "{host}" is not a service of the compose project '
                                            f"(services: {known}): not imported", node, key)
            return None
        return self.mesh.services[name]

    def set(self, service: str, fields: dict[str, Any], replaced: tuple[str, ...]) -> None:
        merged = self.result.services.setdefault(service, {})
        merged.update(fields)
        self.result.replaced[service] = tuple(dict.fromkeys(self.result.replaced.get(service, ()) + replaced))
        order = mesh_edit.SERVICE_ORDER
        self.result.services[service] = dict(sorted(merged.items(), key=lambda kv: order.index(kv[0])))


# --- DestinationRule ------------------------------------------------------------------------

def _destination_rule(context: _Context, resource: _Resource) -> None:
    spec = resource.body["spec"]
    service = context.service(resource, spec.get("host"), spec, "host")
    if service is None:
        resource.record.imported = False
        return
    for name in spec:
        if name not in ("host", "trafficPolicy", "subsets", "exportTo"):
            context.warn(resource, "MESH0413", f"{name} is not supported: not imported", spec, name)
    _subsets(context, resource, service, spec.get("subsets"))
    policy = spec.get("trafficPolicy")
    fields: dict[str, Any] = {}
    if isinstance(policy, dict):
        fields = _traffic_policy(context, resource, service, policy)
    context.set(service.name, fields, POLICY_FIELDS)


def _subsets(context: _Context, resource: _Resource, service: Service, subsets: Any) -> None:
    known = context.subsets.setdefault(service.name, {})
    versions = {v.name: v for v in service.versions}
    by_workload = {v.workload: v.name for v in service.versions}
    for i, subset in enumerate(subsets if isinstance(subsets, list) else []):
        if not isinstance(subset, dict) or not subset.get("name"):
            context.warn(resource, "MESH0413", "a subset needs a name and labels: not imported", subsets, i)
            continue
        name, labels = str(subset["name"]), subset.get("labels") or {}
        if "trafficPolicy" in subset:
            context.warn(resource, "MESH0413", f'subset "{name}": a per-subset trafficPolicy is not supported '
                                               "(mesh.yaml's policy is per service): not imported", subset,
                         "trafficPolicy")
        version = None
        if set(labels) == {istio.VERSION_LABEL} and str(labels[istio.VERSION_LABEL]) in versions:
            version = str(labels[istio.VERSION_LABEL])
        elif set(labels) == {istio.KOMPOSE_LABEL} and str(labels[istio.KOMPOSE_LABEL]) in by_workload:
            version = by_workload[str(labels[istio.KOMPOSE_LABEL])]
        if version is None:
            shown = ", ".join(f"{k}: {v}" for k, v in labels.items()) or "no labels"
            context.warn(resource, "MESH0415",
                         f'subset "{name}" ({shown}) selects no version of {service.name} in the compose project '
                         f'(versions: {", ".join(versions)}; a subset selects `{istio.VERSION_LABEL}: VERSION` '
                         f"or `{istio.KOMPOSE_LABEL}: COMPOSE_SERVICE`): routes to it are not imported",
                         subsets, i)
        known[name] = version


def _traffic_policy(context: _Context, resource: _Resource, service: Service, policy: dict) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in policy:
        if name == "tls":
            context.client_tls[service.name] = (resource, policy)  # read against the modes: _client_tls()
        elif name not in ("loadBalancer", "connectionPool", "outlierDetection"):
            context.warn(resource, "MESH0413", f"trafficPolicy.{name} is not supported: not imported", policy, name)
    balancer = policy.get("loadBalancer")
    if isinstance(balancer, dict):
        simple = balancer.get("simple")
        for name in balancer:
            if name != "simple":
                context.warn(resource, "MESH0413", f"loadBalancer.{name} is not supported (the sidecars balance "
                                                   "round-robin, random or least-request): not imported",
                             balancer, name)
        if simple in istio.LOAD_BALANCER_FROM_ISTIO:
            fields["loadBalancer"] = istio.LOAD_BALANCER_FROM_ISTIO[simple]
        elif simple is not None:
            context.warn(resource, "MESH0413", f"loadBalancer.simple {simple} is not supported (expected one of: "
                                               f"{', '.join(istio.LOAD_BALANCER_FROM_ISTIO)}): not imported",
                         balancer, "simple")
    pool = policy.get("connectionPool")
    if isinstance(pool, dict):
        breaker = _connection_pool(context, resource, pool)
        if breaker:
            fields["circuitBreaker"] = breaker
    detection = policy.get("outlierDetection")
    if isinstance(detection, dict):
        fields["outlierDetection"] = _outlier_detection(context, resource, detection)
    return fields


def _connection_pool(context: _Context, resource: _Resource, pool: dict) -> dict[str, int]:
    mapped = {("tcp", "maxConnections"): "maxConnections", ("http", "http1MaxPendingRequests"): "maxPendingRequests",
              ("http", "maxRequestsPerConnection"): "maxRequestsPerConnection"}
    breaker: dict[str, int] = {}
    for section in ("tcp", "http"):
        body = pool.get(section)
        for name in (body if isinstance(body, dict) else {}):
            key = mapped.get((section, name))
            if key is not None and isinstance(body[name], int):
                breaker[key] = body[name]
            elif (section, name) != ("http", "http2MaxRequests"):
                context.warn(resource, "MESH0413", f"connectionPool.{section}.{name} is not supported: not imported",
                             body, name)
    http = pool.get("http") if isinstance(pool.get("http"), dict) else {}
    if "http2MaxRequests" in http:
        # The sidecars cap requests in flight whatever the protocol: one number for both of Envoy's.
        limit = http["http2MaxRequests"]
        if "maxConnections" not in breaker:
            breaker["maxConnections"] = limit
        elif breaker["maxConnections"] != limit:
            context.warn(resource, "MESH0417", f"connectionPool.http.http2MaxRequests {limit} differs from "
                                               f"tcp.maxConnections {breaker['maxConnections']}: the sidecars "
                                               "take one limit of requests in flight, maxConnections",
                         http, "http2MaxRequests")
    for section in pool:
        if section not in ("tcp", "http"):
            context.warn(resource, "MESH0413", f"connectionPool.{section} is not supported: not imported", pool, section)
    return breaker


def _outlier_detection(context: _Context, resource: _Resource, detection: dict) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in detection.items():
        if name in ("consecutive5xxErrors", "consecutiveGatewayErrors", "maxEjectionPercent") and isinstance(value, int):
            fields[name] = value
        elif name == "baseEjectionTime" and (ms := _duration(context, resource, detection, name)) is not None:
            fields[name] = istio.mesh_duration(ms)
        elif name == "interval":
            context.warn(resource, "MESH0417", "outlierDetection.interval is not imported: the sidecars count "
                                               "errors as answers arrive", detection, name)
        else:
            context.warn(resource, "MESH0413", f"outlierDetection.{name} is not supported: not imported",
                         detection, name)
    return fields


def _duration(context: _Context, resource: _Resource, node: dict, key: str) -> float | None:
    try:
        return istio.parse_duration(node[key])
    except ValueError as exc:
        context.warn(resource, "MESH0413", f"{key}: {exc}: not imported", node, key)
        return None


# --- VirtualService -------------------------------------------------------------------------

def _virtual_service(context: _Context, resource: _Resource) -> None:
    spec = resource.body["spec"]
    record = resource.record
    hosts = spec.get("hosts")
    gateways = [str(g) for g in spec.get("gateways") or []]
    if not hosts:
        record.imported = False
        context.warn(resource, "MESH0412", "has no hosts: a delegate VirtualService (included by another's "
                                           "`delegate`) is not supported: not imported")
        return
    if gateways and "mesh" not in gateways:
        record.imported = False
        context.warn(resource, "MESH0412", f"applies to gateway{'s' if len(gateways) > 1 else ''} "
                                           f"{', '.join(gateways)} only: ingress and egress gateways are not part of "
                                           "a Compose mesh: not imported", spec, "gateways")
        return
    if gateways:
        context.warn(resource, "MESH0413", "gateways other than `mesh` are not supported: imported for the mesh only",
                     spec, "gateways")
    for name in spec:
        if name in ("tcp", "tls"):
            context.warn(resource, "MESH0413", f"{name} routes are not supported (the sidecars pass TCP through "
                                               "to the service's versions): not imported", spec, name)
        elif name == "exportTo":
            context.warn(resource, "MESH0417", "exportTo is ignored: every service of the project sees every rule",
                         spec, name)
        elif name not in ("hosts", "gateways", "http"):
            context.warn(resource, "MESH0413", f"{name} is not supported: not imported", spec, name)
    imported_any = False
    for i, host in enumerate(hosts if isinstance(hosts, list) else [hosts]):
        service = context.service(resource, host, hosts, i)
        if service is None:
            continue
        if service.name in context.routed_by:
            other = context.routed_by[service.name]
            context.warn(resource, "MESH0413", f'host "{host}" is already routed by VirtualService {other.name} '
                                               f"({other.record.file}:{other.record.line}): Istio takes one "
                                               "VirtualService per host: not imported", hosts, i)
            continue
        context.routed_by[service.name] = resource
        fields = _routes(context, resource, service, spec.get("http"))
        if fields or not spec.get("http"):  # no route could be imported: leave the service's rules alone
            context.set(service.name, fields, ROUTING_FIELDS)
            imported_any = True
    record.imported = imported_any


def _routes(context: _Context, resource: _Resource, service: Service, http: Any) -> dict[str, Any]:
    """The service's routing fields from the `http` list (see the module's docstring)."""
    routes: list[dict[str, Any]] = []
    items = http if isinstance(http, list) else []
    catch_all = None
    for i, item in enumerate(items):
        if catch_all is not None:
            context.warn(resource, "MESH0413", f"route {i + 1} is never used: route {catch_all + 1} before it takes "
                                               "every request: not imported", items, i)
            continue
        if isinstance(item, dict) and not item.get("match"):
            catch_all = i  # in Istio, also when it is not imported: the routes after it are never used
        try:
            routes.append(_route(context, resource, service, item, items, i))
        except _Skip:
            continue
    if items and not any(isinstance(item, dict) and "retries" in item for item in items):
        context.warn(resource, "MESH0417", f"Istio's default retries ({istio.ISTIO_DEFAULT_RETRIES}) are not "
                                           "imported: the sidecars retry only what `retries:` says", items)
    if not routes:
        return {}
    if catch_all is None or "match" in routes[-1]:
        context.warn(resource, "MESH0417", "no route takes every request: Istio answers the others 404, "
                                           f"the sidecars send them to the versions of {service.name}", resource.body)
        return {"routes": _strip_no_retries(routes)}
    default = routes[-1]
    earlier = routes[:-1]
    if default.get("name") not in (None, istio.DEFAULT_ROUTE_NAME) or \
            any(key not in route for route in earlier for key in default if key in INHERITABLE):
        # A route that lacks what the catch-all sets would inherit it: keep the catch-all a route.
        return {"routes": _strip_no_retries(routes)}
    fields = {key: value for key, value in default.items() if key in INHERITABLE}
    for route in earlier:
        for key in INHERITABLE:
            if key in route and route[key] == fields.get(key):
                del route[key]
    if _no_retries(fields.get("retries")):
        del fields["retries"]
    fields = _short_split(fields)
    if earlier:
        fields["routes"] = _strip_no_retries(earlier) if "retries" not in fields else \
            [_short_split(route) for route in earlier]
    return fields


def _no_retries(retries: Any) -> bool:
    return isinstance(retries, dict) and retries.get("attempts") == 0 and len(retries) == 1


def _strip_no_retries(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for route in routes:
        if _no_retries(route.get("retries")):
            del route["retries"]
    return [_short_split(route) for route in routes]


def _short_split(route: dict[str, Any]) -> dict[str, Any]:
    """`split: {v2: 100}` is written `to: v2`, as people write it."""
    split = route.get("split")
    if isinstance(split, dict) and len(split) == 1:
        return {("to" if k == "split" else k): (next(iter(split)) if k == "split" else v) for k, v in route.items()}
    return route


def _route(context: _Context, resource: _Resource, service: Service, item: Any, items: list, i: int) -> dict[str, Any]:
    """One http route as a mesh-file route (split kept as a mapping until the end); _Skip when it cannot be."""
    if not isinstance(item, dict):
        raise _skip(context, resource, f"route {i + 1} is not a mapping", items, i)
    label = f'route "{item["name"]}"' if item.get("name") else f"route {i + 1}"
    for name in item:
        if name in UNSUPPORTED_ROUTE_FIELDS or name not in ROUTE_FIELDS:
            raise _skip(context, resource, f"{label}: {name} is not supported by the sidecars: route not imported",
                        item, name)
    route: dict[str, Any] = {}
    if item.get("name"):
        route["name"] = str(item["name"])
    if item.get("match"):
        route["match"] = [_match(context, resource, label, entry, item["match"], j)
                          for j, entry in enumerate(item["match"])]
    route["split"] = _destinations(context, resource, service, label, item)
    if route["split"] is None:
        del route["split"]
    if "timeout" in item:
        ms = _duration(context, resource, item, "timeout")
        if ms is None:
            raise _Skip
        if ms:  # 0s: no timeout, as in Istio
            route["timeout"] = istio.mesh_duration(ms)
    if "retries" in item:
        route["retries"] = _retries(context, resource, item["retries"], item)
    mirror = _mirror(context, resource, service, label, item)
    if mirror:
        route["mirror"] = mirror
    if "fault" in item:
        route["fault"] = _fault(context, resource, label, item["fault"], item)
    return route


def _skip(context: _Context, resource: _Resource, message: str, node: Any, key: Any = None) -> _Skip:
    context.warn(resource, "MESH0413", message, node, key)
    return _Skip()


def _match(context: _Context, resource: _Resource, label: str, entry: Any, entries: list, j: int) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _skip(context, resource, f"{label}: match {j + 1} is not a mapping", entries, j)
    match: dict[str, Any] = {}
    for name in entry:
        if name in UNSUPPORTED_MATCH_FIELDS or name not in ("name", "uri", "method", "headers", "queryParams",
                                                           "sourceLabels"):
            raise _skip(context, resource, f"{label}: matching on {name} is not supported: route not imported",
                        entry, name)
    if isinstance(entry.get("headers"), dict):
        match["headers"] = {str(k).lower(): _string_match(context, resource, label, entry["headers"], k, present={})
                            for k in entry["headers"]}
    if "uri" in entry:
        match["path"] = _string_match(context, resource, label, entry, "uri")
    if "method" in entry:
        match["method"] = _methods(context, resource, label, entry)
    if isinstance(entry.get("queryParams"), dict):
        match["query"] = {str(k): _string_match(context, resource, label, entry["queryParams"], k,
                                                present={"regex": istio.PRESENT_QUERY_REGEX})
                          for k in entry["queryParams"]}
    if "sourceLabels" in entry:
        labels = entry["sourceLabels"]
        source = labels.get(istio.APP_LABEL) if isinstance(labels, dict) and len(labels) == 1 else None
        if source not in context.mesh.services:
            raise _skip(context, resource, f"{label}: sourceLabels select services by `{istio.APP_LABEL}: SERVICE` "
                                           "(a service of the project) only: route not imported", entry, "sourceLabels")
        match["source"] = str(source)
    return match


def _string_match(context: _Context, resource: _Resource, label: str, node: dict, key: Any,
                  present: dict | None = None) -> dict[str, Any]:
    value = node[key]
    if present is not None and value in (present, {}, None):
        return {"present": True}
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in istio.STRING_MATCH_KINDS:
        raise _skip(context, resource, f"{label}: {key} must be one of "
                                       f"{', '.join(istio.STRING_MATCH_KINDS)}: route not imported", node, key)
    [(kind, text)] = value.items()
    return {str(kind): str(text)}


def _methods(context: _Context, resource: _Resource, label: str, entry: dict) -> str | list[str]:
    value = entry["method"]
    kind, text = next(iter(value.items())) if isinstance(value, dict) and len(value) == 1 else (None, None)
    methods = [str(text)] if kind == "exact" else str(text).split("|") if kind == "regex" else []
    if not methods or any(m not in HTTP_METHODS for m in methods):
        raise _skip(context, resource, f"{label}: method must be exact, or a regex listing methods (GET|POST): "
                                       "route not imported", entry, "method")
    return methods[0] if len(methods) == 1 else methods


def _version(context: _Context, resource: _Resource, service: Service, label: str, destination: Any,
             node: Any, key: Any) -> str | None:
    """The version a destination names (None: every version); _Skip when it is not this service's."""
    if not isinstance(destination, dict) or "host" not in destination:
        raise _skip(context, resource, f"{label}: a destination needs a host: route not imported", node, key)
    host = istio.service_of_host(str(destination["host"]), resource.namespace)
    by_workload = {v.workload: v.name for v in service.versions}
    subset = destination.get("subset")
    if host in by_workload and host != service.name and subset is None:
        return by_workload[host]  # the compose service of one version (kompose's Service)
    if host != service.name:
        raise _skip(context, resource, f'{label}: sends the requests for {service.name} to another host, "{host}": '
                                       "not supported (a route chooses between a service's versions): route not "
                                       "imported", destination, "host")
    if subset is None:
        return None
    subsets = context.subsets.get(service.name, {})
    if str(subset) in subsets:
        version = subsets[str(subset)]
        if version is None:
            raise _skip(context, resource, f'{label}: subset "{subset}" selects no version (see its '
                                           "DestinationRule): route not imported", destination, "subset")
        return version
    if str(subset) in {v.name for v in service.versions}:
        if (service.name, str(subset)) not in context.assumed_subsets:
            context.assumed_subsets.add((service.name, str(subset)))
            context.warn(resource, "MESH0417", f'subset "{subset}" is defined by no DestinationRule among the '
                                               f"imported files: taken as the version of {service.name} of that name",
                         destination, "subset")
        return str(subset)
    raise _skip(context, resource, f'{label}: subset "{subset}" is no version of {service.name} '
                                   f'(versions: {", ".join(v.name for v in service.versions)}): route not imported',
                destination, "subset")


def _destinations(context: _Context, resource: _Resource, service: Service, label: str,
                  item: dict) -> dict[str, int] | None:
    destinations = item.get("route")
    if not isinstance(destinations, list) or not destinations:
        raise _skip(context, resource, f"{label}: no route destinations: route not imported", item, "route")
    split: dict[str, int] = {}
    for k, entry in enumerate(destinations):
        if not isinstance(entry, dict):
            raise _skip(context, resource, f"{label}: destination {k + 1} is not a mapping", destinations, k)
        for name in entry:
            if name not in ("destination", "weight"):
                raise _skip(context, resource, f"{label}: {name} on a destination is not supported: route not "
                                               "imported", entry, name)
        if isinstance(entry.get("destination"), dict) and "port" in entry["destination"]:
            context.warn(resource, "MESH0417", f"{label}: destination port is ignored: the sidecars keep the port "
                                               "the caller used", entry["destination"], "port")
        version = _version(context, resource, service, label, entry.get("destination"), entry, "destination")
        weight = entry.get("weight", 100 if len(destinations) == 1 else 0)
        if version is None:
            if len(destinations) > 1:
                raise _skip(context, resource, f"{label}: a weighted destination needs a subset: route not imported",
                            entry, "destination")
            return None
        split[version] = split.get(version, 0) + int(weight)
    if sum(split.values()) != 100:
        raise _skip(context, resource, f"{label}: weights sum to {sum(split.values())}, not 100: route not imported",
                    item, "route")
    return dict(sorted(split.items()))


def _retries(context: _Context, resource: _Resource, raw: Any, item: dict) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _skip(context, resource, "retries must be a mapping: route not imported", item, "retries")
    retries: dict[str, Any] = {"attempts": int(raw.get("attempts") or 0)}
    for name in raw:
        if name in IGNORED_RETRY_FIELDS:
            context.warn(resource, "MESH0417", f"retries.{name} is ignored: a Compose mesh has one locality and "
                                               "one host per version", raw, name)
        elif name not in RETRY_FIELDS:
            context.warn(resource, "MESH0413", f"retries.{name} is not supported: not imported", raw, name)
    if not retries["attempts"]:
        return retries
    for key in ("perTryTimeout", "backoff"):
        if key in raw and (ms := _duration(context, resource, raw, key)) is not None:
            retries[key] = istio.mesh_duration(ms)
    if "retryOn" in raw:
        conditions, codes = [], []
        for condition in (c.strip() for c in str(raw["retryOn"]).split(",") if c.strip()):
            if condition.isdigit():
                codes.append(int(condition))
            elif condition in istio.RETRY_ON:
                conditions.append(condition)
            else:
                context.warn(resource, "MESH0413", f'retryOn "{condition}" is not supported (the sidecars retry on: '
                                                   f"{', '.join(istio.RETRY_ON)} and status codes): not retried on",
                             raw, "retryOn")
    else:
        conditions, codes = list(ISTIO_DEFAULT_RETRY_ON), list(ISTIO_DEFAULT_RETRY_CODES)
        context.warn(resource, "MESH0417", f"retries without retryOn: Istio's default conditions, as far as the "
                                           f"sidecars have them: {', '.join(conditions)} on 503", raw)
    if codes and istio.RETRIABLE_STATUS_CODES not in conditions:
        conditions.append(istio.RETRIABLE_STATUS_CODES)
    retries["retryOn"] = conditions
    if codes:
        retries["retriableStatusCodes"] = codes
    retries["retryNonIdempotent"] = True  # Envoy retries every method
    return {key: retries[key] for key in mesh_edit.RETRIES_ORDER if key in retries}


def _percent(node: dict) -> int | float:
    """A fault's or mirror's `percentage: {value}` (100 when left out, as in Istio)."""
    percentage = node.get("percentage")
    value = percentage.get("value") if isinstance(percentage, dict) else None
    if value is None and isinstance(node.get("percent"), int):
        value = node["percent"]  # Istio's deprecated whole percent
    return _number(value if value is not None else 100)


def _number(value: Any) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _fault(context: _Context, resource: _Resource, label: str, raw: Any, item: dict) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _skip(context, resource, f"{label}: fault must be a mapping: route not imported", item, "fault")
    fault: dict[str, Any] = {}
    delay, abort = raw.get("delay"), raw.get("abort")
    if isinstance(delay, dict):
        if "fixedDelay" not in delay:
            raise _skip(context, resource, f"{label}: only a fixedDelay is supported: route not imported", delay)
        ms = _duration(context, resource, delay, "fixedDelay")
        if ms is None:
            raise _Skip
        fault["delay"] = {"fixed": istio.mesh_duration(ms), "percent": _percent(delay)}
    if isinstance(abort, dict):
        if not isinstance(abort.get("httpStatus"), int):
            raise _skip(context, resource, f"{label}: only an httpStatus abort is supported (no gRPC status or "
                                           "HTTP/2 error): route not imported", abort)
        fault["abort"] = {"httpStatus": abort["httpStatus"], "percent": _percent(abort)}
    if not fault:
        raise _skip(context, resource, f"{label}: fault needs a delay or an abort: route not imported", item, "fault")
    return fault


def _mirror(context: _Context, resource: _Resource, service: Service, label: str, item: dict) -> dict | None:
    mirrors = item.get("mirrors")
    if mirrors is not None:
        if not isinstance(mirrors, list) or len(mirrors) != 1 or not isinstance(mirrors[0], dict):
            raise _skip(context, resource, f"{label}: one mirror at most is supported: route not imported",
                        item, "mirrors")
        target, percent_node = mirrors[0].get("destination"), mirrors[0]
    elif "mirror" in item:
        target, percent_node = item["mirror"], {"percentage": item.get("mirrorPercentage")}
    else:
        return None
    version = _version(context, resource, service, label, target, item, "mirror" if mirrors is None else "mirrors")
    if version is None:
        if len(service.versions) != 1:
            raise _skip(context, resource, f"{label}: a mirror needs a subset: route not imported", item, "mirror")
        version = service.versions[0].name
    return {"version": version, "percent": _percent(percent_node)}


# --- PeerAuthentication, AuthorizationPolicy ------------------------------------------------

NAMESPACE_WIDE = "namespace"  # _workloads(): the resource applies to every workload of its namespace


def _workloads(context: _Context, resource: _Resource, spec: dict) -> Service | str | None:
    """The service a security resource selects (`app: SERVICE`), NAMESPACE_WIDE, or None (warned)."""
    for name in ("targetRef", "targetRefs"):
        if name in spec:
            context.warn(resource, "MESH0416", f"{name} (a waypoint or gateway) is not supported: not imported",
                         spec, name)
            return None
    selector = spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    if not labels:
        return NAMESPACE_WIDE
    service = str(labels.get(istio.APP_LABEL)) if isinstance(labels, dict) and len(labels) == 1 else None
    if service not in context.mesh.services:
        known = ", ".join(sorted(context.mesh.services))
        context.warn(resource, "MESH0416", f"the selector must be `{istio.APP_LABEL}: SERVICE` with a service of "
                                           f"the compose project (services: {known}): mesh.yaml's mTLS modes and "
                                           "policies are per service: not imported", spec, "selector")
        return None
    return context.mesh.services[service]


def _peer_authentication(context: _Context, resource: _Resource) -> None:
    spec = resource.body["spec"]
    for name in spec:
        if name == "portLevelMtls":
            context.warn(resource, "MESH0416", "portLevelMtls is not imported: a service's mode applies to every "
                                               "port", spec, name)
        elif name not in ("selector", "mtls", "targetRef", "targetRefs"):
            context.warn(resource, "MESH0413", f"{name} is not supported: not imported", spec, name)
    workloads = _workloads(context, resource, spec)
    mtls = spec.get("mtls")
    mode = mtls.get("mode", UNSET_MODE) if isinstance(mtls, dict) else UNSET_MODE
    if mode not in (*MTLS_MODES, UNSET_MODE):
        context.warn(resource, "MESH0413", f"mtls.mode {mode} is not one of {', '.join(MTLS_MODES)}, {UNSET_MODE}: "
                                           "not imported", mtls, "mode")
        workloads = None
    if workloads is None:
        resource.record.imported = False
        return
    value = None if mode == UNSET_MODE else str(mode)  # UNSET: inherit, as a mode left out of mesh.yaml
    if workloads == NAMESPACE_WIDE:
        context.result.mtls["mode"] = value
    else:
        context.set(workloads.name, {"mtls": value} if value else {}, ("mtls",))


def _mode_of(context: _Context, service: str) -> str:
    """A service's mTLS mode once the import is written."""
    imported = context.result
    if "mtls" in imported.replaced.get(service, ()):
        mode = imported.services[service].get("mtls")
    else:
        mode = context.mesh.services[service].policy.mtls
    if mode is None:
        mode = imported.mtls["mode"] if "mode" in imported.mtls else context.mesh.security.mode
    return mode or MtlsMode.PERMISSIVE.value


def _client_tls(context: _Context) -> None:
    """DestinationRule `tls`, against the modes the import gives (the sidecars follow the destination's mode)."""
    for service, (resource, policy) in context.client_tls.items():
        tls = policy["tls"]
        mode = tls.get("mode") if isinstance(tls, dict) else None
        disabled = _mode_of(context, service) == MtlsMode.DISABLE
        if mode == istio.CLIENT_TLS_MUTUAL and not disabled:
            context.warn(resource, "MESH0417", f"trafficPolicy.tls {mode} is what the sidecars do anyway (auto "
                                               f"mTLS to every sidecar): nothing to import", policy, "tls")
        elif mode == istio.CLIENT_TLS_DISABLE and disabled:
            context.warn(resource, "MESH0417", f"trafficPolicy.tls DISABLE: the callers of {service} send plain "
                                               "text, as its mode DISABLE says: nothing else to import", policy, "tls")
        elif mode in (istio.CLIENT_TLS_MUTUAL, istio.CLIENT_TLS_DISABLE):
            context.warn(resource, "MESH0416", f"trafficPolicy.tls {mode} is not imported: callers' sidecars send "
                                               f"mTLS to {service} unless its mode is DISABLE, and plain text "
                                               "then (set its `mtls:` or a PeerAuthentication)", policy, "tls")
        else:
            context.warn(resource, "MESH0413", f"trafficPolicy.tls mode {mode} is not supported (TLS with your own "
                                               "certificates; the sidecars use the mesh's): not imported",
                         policy, "tls")


def _authorization_policy(context: _Context, resource: _Resource) -> None:
    spec = resource.body["spec"]
    record = resource.record
    record.imported = False
    action = spec.get("action", "ALLOW")
    if action not in AUTHZ_ACTIONS:
        context.warn(resource, "MESH0416", f"action {action} is not supported (the sidecars ALLOW or DENY; CUSTOM "
                                           "asks an external authorizer, AUDIT only logs): not imported",
                     spec, "action")
        return
    for name in spec:
        if name not in ("selector", "action", "rules", "targetRef", "targetRefs"):
            context.warn(resource, "MESH0416", f"{name} is not supported: policy not imported", spec, name)
            return
    workloads = _workloads(context, resource, spec)
    if workloads is None:
        return
    if workloads == NAMESPACE_WIDE:
        context.warn(resource, "MESH0416", "applies to every workload of the namespace (no selector): mesh.yaml's "
                                           "policies are per service (write it under each service): not imported")
        return
    rules = spec.get("rules")
    if not rules:
        if action == "ALLOW":
            context.warn(resource, "MESH0416", "an ALLOW policy without rules allows nothing (every call another "
                                               "ALLOW policy does not allow is denied): mesh.yaml has no such "
                                               "policy: not imported", spec)
        else:
            context.warn(resource, "MESH0417", "a DENY policy without rules denies nothing: nothing to import", spec)
        return
    try:
        parsed = [_authz_rule(context, resource, action, rule, rules, i)
                  for i, rule in enumerate(rules if isinstance(rules, list) else [rules])]
    except _Skip:
        return
    prefix = f"{workloads.name}-"
    name = resource.name[len(prefix):] if resource.name.startswith(prefix) else resource.name
    policy: dict[str, Any] = {"name": name, "action": str(action)}
    if parsed != [{}]:  # one empty rule: every call, what a policy without rules means in mesh.yaml
        policy["rules"] = parsed
    earlier = context.result.services.get(workloads.name, {}).get("authorization", [])
    if "authorization" not in context.result.replaced.get(workloads.name, ()):
        earlier = []
    # The mesh file's policies keep their places (the order does not matter: DENY goes first); new ones follow.
    places = {p.name: i for i, p in enumerate(workloads.policy.authorization)}
    ordered = sorted([*earlier, policy], key=lambda p: places.get(p["name"], len(places)))
    context.set(workloads.name, {"authorization": ordered}, ("authorization",))
    record.imported = True


def _skip_policy(context: _Context, resource: _Resource, action: str, message: str, node: Any,
                 key: Any = None) -> _Skip:
    consequence = "what it denies is allowed locally" if action == "DENY" else \
        "what it allows is denied locally when another ALLOW policy is imported, and allowed when none is"
    context.warn(resource, "MESH0416", f"{message}: policy not imported ({consequence})", node, key)
    return _Skip()


def _authz_rule(context: _Context, resource: _Resource, action: str, rule: Any, rules: list, i: int) -> dict:
    """One Istio rule in mesh.yaml's spelling; _Skip when the sidecars cannot check part of it."""
    label = f"rule {i + 1}"
    if not isinstance(rule, dict):
        raise _skip_policy(context, resource, action, f"{label} is not a mapping", rules, i)
    for name in rule:
        if name not in ("from", "to", "when"):
            raise _skip_policy(context, resource, action, f"{label}: {name} is not supported", rule, name)
    body: dict[str, Any] = {}
    sources = _authz_sources(context, resource, action, label, rule.get("from"), rule)
    if sources:
        body["source"] = sources[0] if len(sources) == 1 else sources
    to = rule.get("to")
    if to:
        if not isinstance(to, list) or len(to) != 1 or not isinstance(to[0], dict) or set(to[0]) != {"operation"} \
                or not isinstance(to[0]["operation"], dict):
            raise _skip_policy(context, resource, action, f"{label}: `to` must be one operation (several are an OR "
                                                          "of operations: write them as rules)", rule, "to")
        body.update(_authz_operation(context, resource, action, label, to[0]["operation"]))
    if rule.get("when"):
        body["headers"] = _authz_headers(context, resource, action, label, rule["when"], rule)
    return {key: body[key] for key in mesh_config.AUTHZ_RULE_FIELDS if key in body}  # the reference's order


def _authz_sources(context: _Context, resource: _Resource, action: str, label: str, entries: Any,
                   rule: dict) -> list[str]:
    sources: list[str] = []
    namespaces = {resource.namespace or istio.DEFAULT_NAMESPACE, context.mesh.project}
    for entry in entries or []:
        source = entry.get("source") if isinstance(entry, dict) and set(entry) == {"source"} else None
        if not isinstance(source, dict):
            raise _skip_policy(context, resource, action, f"{label}: every `from` entry must be a source", rule,
                               "from")
        for name in source:
            if name in SOURCE_FIELD_REASONS:
                raise _skip_policy(context, resource, action, f"{label}: from.source.{name} is not supported "
                                                              f"({SOURCE_FIELD_REASONS[name]})", source, name)
        if set(source) == {"notPrincipals"} and source["notPrincipals"] == [istio.ANY_PRINCIPAL]:
            sources.append(NO_IDENTITY)  # no authenticated principal: a caller without a mesh certificate
        elif set(source) == {"principals"} and isinstance(source["principals"], list) and all(
                isinstance(p, str) and p and istio.WILDCARD not in p for p in source["principals"]):
            sources += [istio.source_of_principal(p, context.mesh.security.trust_domain, namespaces,
                                                  set(context.mesh.services)) for p in source["principals"]]
        else:
            raise _skip_policy(context, resource, action, f"{label}: a source is principals without wildcards or "
                                                          'notPrincipals: ["*"] (no identity), one per `from` entry',
                               entry, "source")
    return sources


def _authz_operation(context: _Context, resource: _Resource, action: str, label: str,
                     operation: dict) -> dict[str, Any]:
    for name in operation:
        if name not in OPERATION_FIELDS:
            raise _skip_policy(context, resource, action, f"{label}: to.operation.{name} is not supported",
                               operation, name)
    body: dict[str, Any] = {}
    methods = operation.get("methods") or []
    if any(m not in HTTP_METHODS for m in methods):
        raise _skip_policy(context, resource, action, f"{label}: methods must be HTTP methods "
                                                      f"({', '.join(HTTP_METHODS)})", operation, "methods")
    if methods:
        body["method"] = [str(m) for m in methods]
    paths = []
    for text in operation.get("paths") or []:
        if not isinstance(text, str) or "{*" in text:
            raise _skip_policy(context, resource, action, f"{label}: path {text!r}: path templates are not "
                                                          "supported", operation, "paths")
        kind, value = istio.match_of_istio_value(text)
        paths.append({kind: True if kind == "present" else value})
    if paths:
        body["path"] = paths[0] if len(paths) == 1 else paths
    ports = operation.get("ports") or []
    if not all(str(p).isdigit() and 0 < int(p) < 65536 for p in ports):
        raise _skip_policy(context, resource, action, f"{label}: ports must be port numbers", operation, "ports")
    if ports:
        body["port"] = [int(p) for p in ports]
    return body


def _authz_headers(context: _Context, resource: _Resource, action: str, label: str, conditions: Any,
                   rule: dict) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for j, condition in enumerate(conditions if isinstance(conditions, list) else []):
        key = condition.get("key") if isinstance(condition, dict) else None
        found = istio.HEADER_ATTRIBUTE.fullmatch(str(key))
        if found is None:
            raise _skip_policy(context, resource, action, f"{label}: when {key}: only request.headers[NAME] "
                                                          "conditions are supported", conditions, j)
        values = condition.get("values")
        name = found.group(1).lower()
        if set(condition) != {"key", "values"} or not isinstance(values, list) or len(values) != 1 \
                or name in headers:
            raise _skip_policy(context, resource, action, f"{label}: when {key}: one value per header is "
                                                          "supported (no notValues, no OR of values)",
                               conditions, j)
        kind, value = istio.match_of_istio_value(str(values[0]))
        headers[name] = {kind: True if kind == "present" else value}
    return dict(sorted(headers.items()))


KINDS: dict[str, Callable[[_Context, _Resource], None]] = {
    istio.VIRTUAL_SERVICE: _virtual_service,
    istio.DESTINATION_RULE: _destination_rule,
    istio.PEER_AUTHENTICATION: _peer_authentication,
    istio.AUTHORIZATION_POLICY: _authorization_policy,
}
