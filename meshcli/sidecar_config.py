"""Compiles the resolved mesh into the file every sidecar reads (`sidecar.json`).

The file carries a content hash as its version: each sidecar reports the version it
runs, so `meshcli status` can tell SYNCED from STALE. Written atomically, so a sidecar
never reads half a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from meshcli.mesh_config import Mesh
from meshcli.yaml_source import atomic_write

FILE_NAME = "sidecar.json"
SCHEMA = 1


def compile_mesh(mesh: Mesh) -> dict:
    body = {
        "schema": SCHEMA,
        "project": mesh.project,
        "services": {
            name: {
                "versions": [{"name": v.name, "host": v.workload} for v in service.versions],
                "ports": list(service.ports),
                "loadBalancer": service.load_balancer,
            }
            for name, service in mesh.services.items()
        },
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return {**body, "version": hashlib.sha256(canonical.encode()).hexdigest()[:12]}


def write(mesh: Mesh, config_dir: Path) -> str:
    """Write sidecar.json into config_dir; return the config version."""
    compiled = compile_mesh(mesh)
    atomic_write(config_dir / FILE_NAME, json.dumps(compiled, indent=2) + "\n")
    return compiled["version"]


def current_version(config_dir: Path) -> str | None:
    try:
        return json.loads((config_dir / FILE_NAME).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
