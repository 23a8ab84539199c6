"""The sidecar's view of the mesh: its own identity and the compiled mesh config.

meshcli writes `sidecar.json` (see meshcli/sidecar_config.py); `parse()` turns it into
typed values once per config version so request hooks only read precomputed state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CONFIG_FILE = "sidecar.json"
SCHEMA = 1
LOAD_BALANCERS = ("round-robin", "random", "least-request")  # the policies balancer.py implements


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
class Service:
    name: str
    versions: tuple[Version, ...]
    ports: tuple[int, ...] = ()
    load_balancer: str = "round-robin"


@dataclass(frozen=True)
class SidecarConfig:
    version: str  # content hash; reported so meshcli status can say SYNCED/STALE
    services: dict[str, Service] = field(default_factory=dict)
    # host name (logical service or workload) -> service; built once per version
    by_host: dict[str, Service] = field(default_factory=dict)


EMPTY = SidecarConfig(version="")


def parse(text: str) -> SidecarConfig:
    """Parse sidecar.json; raise ValueError with what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"expected a mapping with schema {SCHEMA}")
    services = {}
    try:
        for name, body in data["services"].items():
            versions = tuple(Version(v["name"], v["host"]) for v in body["versions"])
            load_balancer = body.get("loadBalancer", "round-robin")
            # Checked here, not when the balancers are built: a config is applied whole or not at all.
            if not versions:
                raise ValueError(f"service {name!r} has no versions")
            if load_balancer not in LOAD_BALANCERS:
                raise ValueError(f"service {name!r}: unknown loadBalancer {load_balancer!r}; "
                                 f"expected one of {', '.join(LOAD_BALANCERS)}")
            services[name] = Service(name, versions, tuple(body.get("ports", ())), load_balancer)
        version = str(data["version"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed sidecar config: missing or bad {exc}") from exc
    by_host: dict[str, Service] = {}
    for service in services.values():
        by_host[service.name] = service
    return SidecarConfig(version, services, by_host)


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
