"""The user's compose file as meshcli sees it: services, workloads, versions, ports.

Owns loading a compose file (with positions for diagnostics), the project name, and
discovery: which compose services are meshed, which logical service and version each
implements (labels `mesh.service`/`mesh.version`, or a `-vN` suffix), and why a
service is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcli import yaml_source
from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError

VERSION_SUFFIX = re.compile(r"^(?P<service>.+)-(?P<version>v\d+)$")
DEFAULT_VERSION = "v1"
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


@dataclass(frozen=True)
class Workload:
    """One compose service that implements one version of a logical service."""

    name: str  # compose service name, e.g. "payment-v1"
    service: str  # logical service, e.g. "payment"
    version: str  # e.g. "v1"
    ports: tuple[int, ...]  # container-side TCP ports (ports + expose)
    profiles: tuple[str, ...] = ()


@dataclass
class ComposeProject:
    path: Path
    doc: yaml_source.YamlDocument
    name: str
    workloads: dict[str, Workload]  # meshed compose services, by compose name
    skipped: dict[str, str] = field(default_factory=dict)  # compose name -> why not meshed
    diagnostics: list[Diagnostic] = field(default_factory=list)  # warnings and notes

    @property
    def services(self) -> Any:
        return self.doc.data.get("services") or {}

    @property
    def directory(self) -> Path:
        return self.path.parent

    def logical_services(self) -> dict[str, list[Workload]]:
        grouped: dict[str, list[Workload]] = {}
        for workload in self.workloads.values():
            grouped.setdefault(workload.service, []).append(workload)
        return grouped


def find_compose_file(directory: Path) -> Path | None:
    for name in COMPOSE_FILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def normalize_project_name(raw: str) -> str:
    """Compose's rule: lowercase, only [a-z0-9_-], starting with a letter or digit."""
    name = re.sub(r"[^a-z0-9_-]", "", raw.lower())
    return name.lstrip("_-") or "default"


def labels_of(service: Any) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, dict):
        return {str(k): str(v) for k, v in labels.items()}
    result = {}
    for item in labels:
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def _port_numbers(spec: str) -> list[int]:
    """'8080' -> [8080]; '3000-3002' -> [3000, 3001, 3002]; variables -> []."""
    spec = spec.split("/")[0]
    if "-" in spec:
        low, _, high = spec.partition("-")
        if low.isdigit() and high.isdigit() and int(high) - int(low) < 100:
            return list(range(int(low), int(high) + 1))
        return []
    return [int(spec)] if spec.isdigit() else []


def container_ports(service: Any) -> tuple[int, ...]:
    """TCP ports the app listens on, read from `ports` (target side) and `expose`."""
    found: list[int] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if str(entry.get("protocol", "tcp")) != "tcp":
                continue
            found += _port_numbers(str(entry.get("target", "")))
            continue
        text = str(entry)
        if text.endswith("/udp") or text.endswith("/sctp"):
            continue
        # [[ip:]published:]target[/proto]; an IPv6 host ip is bracketed.
        target = re.sub(r"^\[[^\]]*\]:", "", text).rsplit(":", 1)[-1]
        found += _port_numbers(target)
    for entry in service.get("expose") or []:
        text = str(entry)
        if not text.endswith("/udp"):
            found += _port_numbers(text)
    return tuple(sorted(set(found)))


def why_not_meshed(name: str, service: Any) -> tuple[str, str] | None:
    """(diagnostic code, reason) when the service must be left alone, else None."""
    network_mode = str(service.get("network_mode") or "")
    if network_mode in ("host", "none") or network_mode.startswith(("container:", "service:")):
        return "MESH0301", f'network_mode "{network_mode}" leaves no network namespace of its own to intercept'
    x_mesh = service.get("x-mesh") or {}
    if isinstance(x_mesh, dict) and str(x_mesh.get("inject", True)).lower() == "false":
        return "MESH0302", "opted out with x-mesh.inject: false"
    if labels_of(service).get("mesh.inject", "").lower() == "false":
        return "MESH0302", 'opted out with label mesh.inject: "false"'
    replicas = (service.get("deploy") or {}).get("replicas", service.get("scale", 1))
    if str(replicas).isdigit() and int(replicas) > 1:
        return "MESH0303", f"{replicas} replicas: one pod per replica is not supported yet"
    return None


def service_and_version(name: str, service: Any) -> tuple[str, str]:
    labels = labels_of(service)
    match = VERSION_SUFFIX.match(name)
    logical = labels.get("mesh.service") or (match.group("service") if match else name)
    version = labels.get("mesh.version") or (match.group("version") if match else DEFAULT_VERSION)
    return logical, version


def load(path: Path, project_name: str | None = None, text: str | None = None) -> ComposeProject:
    doc = yaml_source.load(path, text)
    data = doc.data
    if not isinstance(data, dict):
        raise InvalidFileError([doc.diag("MESH0002", "a compose file must be a mapping with a `services` key", data)])
    services = data.get("services")
    if not isinstance(services, dict):
        where = ("services",) if "services" in data else ()
        raise InvalidFileError([doc.diag(
            "MESH0002", "not a compose file: expected a top-level `services` mapping", data, *where)])
    problems = [
        doc.diag("MESH0002", f"service {name!r} must be a mapping", services, name)
        for name, body in services.items()
        if not isinstance(body, dict)
    ]
    if problems:
        raise InvalidFileError(problems)

    name = normalize_project_name(project_name or str(data.get("name") or path.resolve().parent.name))
    project = ComposeProject(path=path, doc=doc, name=name, workloads={})
    for service_name, body in services.items():
        skip = why_not_meshed(service_name, body)
        if skip:
            code, reason = skip
            project.skipped[service_name] = reason
            project.diagnostics.append(doc.diag(code, f"service {service_name!r} is not meshed: {reason}", services, service_name))
            continue
        logical, version = service_and_version(service_name, body)
        profiles = tuple(str(p) for p in body.get("profiles") or ())
        project.workloads[service_name] = Workload(
            service_name, logical, version, container_ports(body), profiles)
    return project
