"""`meshcli init`: a starter mesh.yaml for a compose project, with comments on every field
and commented-out examples of the traffic rules (docs/mesh-file.md has them all)."""

from __future__ import annotations

import json

import yaml

from meshcli.compose_model import ComposeProject
from meshcli.mesh_config import API_VERSION, DEFAULT_LOAD_BALANCER, LOAD_BALANCERS

HEADER = f"""\
# meshcli mesh file: how the services of {{compose}} are grouped into versions and balanced.
# Edit it while the mesh runs: sidecars pick up every valid change without a restart;
# `meshcli validate` checks it (every error with file:line:column).
apiVersion: {API_VERSION}

# One entry per logical service. A service's versions are compose services that
# implement it: found from the labels mesh.service / mesh.version, or a -vN suffix.
services:
"""


def _scalar(name: str) -> str:
    """A service name as YAML: plain when it reads back as the same string, else quoted."""
    return name if yaml.safe_load(name) == name else json.dumps(name)


def _rule_examples(versions: list[str]) -> str:
    """Commented-out traffic rules, with this service's own version names in the split."""
    lines = []
    if len(versions) > 1:
        first, last = _scalar(versions[0]), _scalar(versions[-1])
        lines.append(f"    # split: {{{first}: 90, {last}: 10}}   # percent per version, sum 100; or `to: {last}`\n")
    lines.append("    # timeout: 2s   # the whole request, retries included; more rules: docs/mesh-file.md\n")
    lines.append("    # retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, connect-failure]}\n")
    return "".join(lines)


def starter(project: ComposeProject) -> str:
    lines = [HEADER.format(compose=project.path.name)]
    grouped = project.logical_services()
    if not grouped:
        lines.append("  {}  # no meshable services found\n")
    for name, workloads in sorted(grouped.items()):
        ports = sorted({p for w in workloads for p in w.ports})
        lines.append(f"  {_scalar(name)}:\n")
        lines.append("    # version name: the compose service that runs it\n")
        lines.append("    versions:\n")
        for workload in sorted(workloads, key=lambda w: w.version):
            lines.append(f"      {_scalar(workload.version)}: {_scalar(workload.name)}\n")
        lines.append(f"    # TCP ports the service listens on (informational){'' if ports else ': none found'}\n")
        lines.append(f"    ports: [{', '.join(str(p) for p in ports)}]\n")
        lines.append(f"    # how a caller's sidecar picks a version: {' | '.join(LOAD_BALANCERS)}\n")
        lines.append(f"    loadBalancer: {DEFAULT_LOAD_BALANCER}\n")
        lines.append(_rule_examples([w.version for w in sorted(workloads, key=lambda w: w.version)]))
    for name, reason in sorted(project.skipped.items()):
        lines.append(f"  # {name}: not meshed - {reason}\n")
    return "".join(lines)
