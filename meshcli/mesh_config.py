"""The mesh file (`mesh.yaml`): one typed model and one validator.

`parse()` turns a YAML document into a `MeshConfig`, collecting every problem with its
file:line:column before raising. `resolve()` checks the model against the compose
project and yields the `Mesh` every other module consumes: each logical service with
its versions, the workload (compose service) behind each version, ports and policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcli import yaml_source
from meshcli.compose_model import ComposeProject, Workload
from meshcli.diagnostics import Diagnostic, did_you_mean
from meshcli.errors import InvalidFileError

API_VERSION = "meshcli/v1"
LOAD_BALANCERS = ("round-robin", "random", "least-request")
DEFAULT_LOAD_BALANCER = "round-robin"


@dataclass(frozen=True)
class ServiceConfig:
    """What mesh.yaml says about one logical service."""

    name: str
    versions: dict[str, str] = field(default_factory=dict)  # version -> compose service
    load_balancer: str = DEFAULT_LOAD_BALANCER


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


@dataclass(frozen=True)
class Mesh:
    """The resolved mesh: what sidecars and views consume."""

    project: str
    services: dict[str, Service]
    workloads: dict[str, Workload]  # compose service -> identity (service, version)


class _Collector:
    """Gathers diagnostics while walking one document."""

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
SERVICE_FIELDS = ("versions", "ports", "loadBalancer")


def parse(doc: yaml_source.YamlDocument) -> MeshConfig:
    """Validate the document's shape and build the model; raise with every error."""
    check = _Collector(doc)
    data = doc.data
    if data is None:
        return MeshConfig(doc)
    if not check.mapping(data, "the mesh file", TOP_LEVEL_FIELDS):
        raise InvalidFileError(check.diagnostics)
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
    if any(d.is_error for d in check.diagnostics):
        raise InvalidFileError(check.diagnostics)
    return MeshConfig(doc, services)


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
    if ports is not None and (not isinstance(ports, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports)):
        check.add("MESH0102", f"{where}: ports must be a list of port numbers (1-65535)", body, "ports")
    load_balancer = body.get("loadBalancer", DEFAULT_LOAD_BALANCER)
    if load_balancer not in LOAD_BALANCERS:
        check.add("MESH0102", f'{where}: loadBalancer "{load_balancer}" is not one of: '
                              f"{', '.join(LOAD_BALANCERS)}{did_you_mean(str(load_balancer), LOAD_BALANCERS)}",
                  body, "loadBalancer")
        load_balancer = DEFAULT_LOAD_BALANCER
    return ServiceConfig(name, versions, load_balancer)


def load(path: Path) -> MeshConfig:
    return parse(yaml_source.load(path))


def resolve(config: MeshConfig | None, project: ComposeProject) -> Mesh:
    """Check the mesh file against the compose project and build the resolved `Mesh`.

    Every meshed compose service is part of the mesh; mesh.yaml may regroup workloads
    into versions and set policy, but may only name what the compose file has.
    """
    workloads = dict(project.workloads)
    problems: list[Diagnostic] = []
    discovered = project.logical_services()
    doc = config.doc if config else None

    def problem(code: str, message: str, *path: str) -> None:
        node, key = _node_at(doc, path) if doc else (None, None)
        line, column = yaml_source.position(node, key)
        problems.append(Diagnostic(code, message, config.source if config else None, line, column))

    for service in (config.services.values() if config else ()):
        if service.versions:
            for version, workload_name in service.versions.items():
                if workload_name in project.skipped:
                    problem("MESH0204", f'service "{service.name}" version "{version}": compose service '
                                        f'"{workload_name}" is not meshed ({project.skipped[workload_name]})',
                            "services", service.name, "versions", version)
                elif workload_name not in project.workloads:
                    problem("MESH0202", f'service "{service.name}" version "{version}": no compose service '
                                        f'"{workload_name}" in {project.path.name}'
                                        f"{did_you_mean(workload_name, project.workloads)}",
                            "services", service.name, "versions", version)
        elif service.name not in discovered:
            problem("MESH0201", f'unknown service "{service.name}": {project.path.name} has no such service'
                                f"{did_you_mean(service.name, discovered)}; known services: "
                                f"{', '.join(sorted(discovered)) or 'none'}",
                    "services", service.name)
    claimed: dict[str, tuple[str, str]] = {}
    for service in (config.services.values() if config else ()):
        for version, workload_name in service.versions.items():
            if workload_name in claimed:
                other = claimed[workload_name]
                problem("MESH0203", f'compose service "{workload_name}" is already version "{other[1]}" of '
                                    f'service "{other[0]}"', "services", service.name, "versions", version)
            claimed[workload_name] = (service.name, version)
    if problems:
        raise InvalidFileError(problems)

    for workload_name, (service_name, version) in claimed.items():
        old = workloads[workload_name]
        workloads[workload_name] = Workload(old.name, service_name, version, old.ports, old.profiles)
    policies = config.services if config else {}
    grouped: dict[str, list[Workload]] = {}
    for workload in workloads.values():
        grouped.setdefault(workload.service, []).append(workload)
    services = {}
    for name, members in sorted(grouped.items()):
        members.sort(key=lambda w: w.version)
        ports = tuple(sorted({p for w in members for p in w.ports}))
        policy = policies.get(name, ServiceConfig(name))
        services[name] = Service(name, tuple(Version(w.version, w.name) for w in members), ports,
                                 policy.load_balancer)
    return Mesh(project.name, services, workloads)


def _node_at(doc: yaml_source.YamlDocument, path: tuple[str, ...]) -> tuple[Any, Any]:
    """The deepest (mapping, key) pair along `path` in the document."""
    node, key = doc.data, None
    for step in path:
        current = node if key is None else node[key]
        if not isinstance(current, dict) or step not in current:
            break
        node, key = current, step
    return node, key
