"""Zero trust, as the CLI sees it: each workload's identity and what its sidecar serves
(`meshcli certs`), authorization decisions without traffic (`meshcli authz check`), and
CA rotation against the running sidecars (`meshcli ca rotate`).

`authz check` compiles the mesh exactly as the sidecars get it and decides with the
sidecars' own evaluator (meshproxy.policy.authz), so its answer is the data plane's.
Rotation waits, between its steps, until every running sidecar reports (in its
/config_dump) the roots and certificate of the step before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from meshproxy import config as wire
from meshproxy.policy import authz

from meshcli import ca, rule_layer, sidecar_config, status, workspace as ws
from meshcli.diagnostics import did_you_mean
from meshcli.errors import InputError, MeshError
from meshcli.workspace import Loaded

POLL_INTERVAL = 0.2

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WorkloadCert:
    workload: str
    service: str
    mode: str  # the mTLS mode of calls to its service
    leaf: ca.Leaf | None  # on disk
    serving: bool | None  # whether its sidecar serves that certificate now; None: sidecar not answering

    def to_json(self) -> dict:
        leaf = self.leaf.to_json() if self.leaf else {}
        return {"workload": self.workload, "service": self.service, "mtls": self.mode,
                "spiffeId": leaf.get("spiffeId"), "serial": leaf.get("serial"), "notBefore": leaf.get("notBefore"),
                "notAfter": leaf.get("notAfter"), "serving": self.serving}


def certs(loaded: Loaded, statuses: list[status.WorkloadStatus] | None = None) -> list[WorkloadCert]:
    authority = ca.load(loaded.workspace)
    statuses = statuses if statuses is not None else status.collect(loaded)
    reports = {s.workload: s.tls for s in statuses}
    rows = []
    for workload in sorted(loaded.mesh.workloads.values(), key=lambda w: (w.service, w.version, w.name)):
        leaf = ca.read_leaf(loaded.workspace, workload.name, authority)
        report = reports.get(workload.name)
        serving = None if report is None else leaf is not None and report.get("fingerprint") == leaf.fingerprint
        rows.append(WorkloadCert(workload.name, workload.service,
                                 loaded.mesh.mtls_mode(loaded.mesh.services[workload.service]), leaf, serving))
    return rows


# --- authorization -------------------------------------------------------------------------

def principal_of(source: str, compiled: wire.SidecarConfig) -> str:
    """A caller as the sidecar sees it: a service's SPIFFE ID, a SPIFFE ID as given, or "" (no identity)."""
    if source == wire.NO_IDENTITY:
        return ""
    if source.startswith("spiffe://"):
        return source
    if source not in compiled.services:
        raise InputError(f'unknown source "{source}"{did_you_mean(source, compiled.services)}; a source is a '
                         f'service of the mesh, a SPIFFE ID or "{wire.NO_IDENTITY}"')
    return wire.spiffe_id(compiled.trust_domain, compiled.project, source)


def authz_check(loaded: Loaded, source: str, destination: str, method: str | None, path: str | None,
                headers: Mapping[str, str] | None = None, port: int | None = None) -> tuple[authz.Decision, dict]:
    """What `destination`'s sidecars decide for a call from `source` (method None: a raw TCP
    connection). Returns the decision and the call as it was evaluated."""
    compiled = sidecar_config.compile_mesh(rule_layer.layered(loaded))
    service = compiled.services.get(destination)
    if service is None:
        raise InputError(f'unknown service "{destination}"{did_you_mean(destination, compiled.services)}; '
                         f"services: {', '.join(compiled.services)}")
    if port is None:
        port = service.ports[0] if service.ports else 0
    call = authz.Call(principal_of(source, compiled), port, method.upper() if method else None,
                      path.split("?", 1)[0] if path is not None else None,
                      {k.lower(): v for k, v in (headers or {}).items()})
    return authz.decide(service.authorization, call), {
        "source": source, "principal": call.principal or wire.NO_IDENTITY, "destination": destination,
        "method": call.method, "path": call.path, "port": port, "headers": dict(call.headers or {})}


# --- rotation ------------------------------------------------------------------------------

def wait_for_sidecars(loaded: Loaded, check: Callable[[dict], bool], what: str, timeout: float,
                      progress: Progress) -> None:
    """Until every running sidecar's TLS report passes `check`; MeshError naming the others after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        running = [s for s in status.collect(loaded) if s.sidecar == "running"]
        pending = [s.workload for s in running if s.tls is None or not check(s.tls)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise MeshError(f"{len(pending)} of {len(running)} sidecars did not come {what} within {timeout:g}s: "
                            + ", ".join(pending), hint="see their logs; run `meshcli ca rotate` again to finish")
        progress(f"waiting for {len(pending)} of {len(running)} sidecars {what}")
        time.sleep(POLL_INTERVAL)


def rotate(loaded: Loaded, progress: Progress, timeout: float = 60.0) -> ca.Authority:
    """`meshcli ca rotate`: a new root, leaves reissued under it, the old root dropped, each
    step once the running sidecars took the one before (none running: at once)."""
    def wait_for(check: Callable[[dict], bool], what: str) -> None:
        wait_for_sidecars(loaded, check, what, timeout, progress)

    # Under the project lock: the watcher must not renew a leaf under the new root before
    # every sidecar trusts it.
    with ws.state_lock(loaded.workspace):
        return ca.rotate(loaded.workspace, loaded.mesh, wait_for, progress)
