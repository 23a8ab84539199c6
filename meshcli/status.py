"""What is running: per workload, the app's and the sidecar's state, the config version the
sidecar runs (SYNCED/STALE, like `istioctl proxy-status`) and the published URLs.

Sidecars are asked through `docker exec` (their admin port stays inside the pod).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from meshproxy.config import ADMIN_PORT

from meshcli import docker_engine, sidecar_config, workspace as ws
from meshcli.compose_rewrite import pod_name, sidecar_name
from meshcli.errors import InvalidFileError
from meshcli.workspace import Loaded, Workspace

ADMIN_URL = f"http://127.0.0.1:{ADMIN_PORT}"


@dataclass
class WorkloadStatus:
    workload: str
    service: str
    version: str
    app: str  # container state: running, exited, missing...
    sidecar: str  # running / restarting / missing
    sidecar_health: str  # healthy / unhealthy / starting / unknown
    sidecar_restarts: int = 0
    config_version: str | None = None  # what the sidecar runs
    config_generation: int | None = None
    sync: str = "UNKNOWN"  # SYNCED / STALE / UNKNOWN
    urls: list[str] = field(default_factory=list)
    mtls: str = ""  # the mTLS mode of calls to its service
    tls: dict | None = None  # the sidecar's TLS report (mode, certificate fingerprint, roots), None: not answering
    certificate_expires: str | None = None  # the workload certificate's notAfter, ISO 8601

    @property
    def healthy(self) -> bool:
        """The app runs and its sidecar passes its health check."""
        return self.app == "running" and self.sidecar_health == "healthy"

    def to_json(self) -> dict:
        """As `--json` shows it (camelCase, as in mesh.yaml)."""
        return {"workload": self.workload, "service": self.service, "version": self.version, "app": self.app,
                "sidecar": self.sidecar, "sidecarHealth": self.sidecar_health,
                "sidecarRestarts": self.sidecar_restarts, "configVersion": self.config_version,
                "configGeneration": self.config_generation, "sync": self.sync, "urls": self.urls,
                "mtls": self.mtls, "certificateExpires": self.certificate_expires}


def _containers(project: str) -> dict[str, object]:
    engine = docker_engine.client()
    found = engine.containers.list(all=True, filters={"label": [f"com.docker.compose.project={project}",
                                                                      "com.docker.compose.oneoff=False"]})
    return {c.labels.get("com.docker.compose.service"): c for c in found}


def load(workspace: Workspace) -> tuple[Loaded, InvalidFileError | None]:
    """The project to show. When the mesh file is invalid (the sidecars then keep the last
    good config), its workloads come from the compose file alone, with the error."""
    try:
        return ws.load(workspace), None
    except InvalidFileError as exc:
        if workspace.mesh_file is None:
            raise  # the compose file itself is invalid: nothing to show
        return ws.load(replace(workspace, mesh_file=None)), exc


def project_running(project: str) -> bool:
    """Whether any container of the project runs. False, not an error, without a Docker engine:
    then there is nothing to wait for."""
    try:
        engine = docker_engine.client()
        return bool(engine.containers.list(limit=1, filters={"status": "running",
                                                             "label": f"com.docker.compose.project={project}"}))
    except Exception:  # no engine (DockerError), or it went away mid-call (SDK and requests errors)
        return False


def admin_get(container, path: str) -> dict | None:
    """GET a sidecar admin endpoint from inside its pod; None when it does not answer."""
    try:
        result = container.exec_run(["curl", "-fsS", "--max-time", "3", ADMIN_URL + path])
    except Exception:  # the container may be restarting; status must still print
        return None
    if result.exit_code != 0:
        return None
    try:
        return json.loads(result.output)
    except ValueError:
        return None


def _urls(pod) -> list[str]:
    urls = []
    for port, bindings in sorted((pod.attrs.get("NetworkSettings", {}).get("Ports") or {}).items()):
        if not port.endswith("/tcp") or not bindings:
            continue
        host_ports = sorted({b["HostPort"] for b in bindings})
        urls += [f"http://localhost:{p}/" for p in host_ports]
    return urls


def _certificate_expiry(workspace: Workspace, workload: str) -> str | None:
    from meshcli import ca  # imports cryptography: only when there is something to show

    leaf = ca.read_leaf(workspace, workload)
    return leaf.not_after.isoformat() if leaf is not None else None


def collect(loaded: Loaded) -> list[WorkloadStatus]:
    containers = _containers(loaded.project.name)
    expected = sidecar_config.current_version(loaded.workspace.config_dir)

    def one(workload) -> WorkloadStatus:
        app = containers.get(workload.name)
        sidecar = containers.get(sidecar_name(workload.name))
        pod = containers.get(pod_name(workload.name))
        status = WorkloadStatus(
            workload.name, workload.service, workload.version,
            app=app.status if app else "missing",
            sidecar=sidecar.status if sidecar else "missing",
            sidecar_health="unknown",
            sidecar_restarts=sidecar.attrs.get("RestartCount", 0) if sidecar else 0,
            urls=_urls(pod) if pod else [],
            mtls=loaded.mesh.mtls_mode(loaded.mesh.services[workload.service]),
            certificate_expires=_certificate_expiry(loaded.workspace, workload.name),
        )
        if sidecar is not None and sidecar.status == "running":
            dump = admin_get(sidecar, "/config_dump")
            # The sidecar's own word (listening, config loaded): no Docker health check polls it.
            status.sidecar_health = "unhealthy" if dump is None else "healthy" if dump.get("ready") else "starting"
            if dump is not None:
                status.tls = dump.get("tls")
                status.config_version = dump.get("config_version")
                status.config_generation = dump.get("generation")
                status.sync = "SYNCED" if status.config_version == expected else "STALE"
        return status

    workloads = sorted(loaded.mesh.workloads.values(), key=lambda w: (w.service, w.version, w.name))
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, workloads))


def sidecar_containers(loaded: Loaded) -> dict[str, object]:
    """The running sidecar container of each workload that has one."""
    containers = _containers(loaded.project.name)
    return {workload: sidecar for workload in loaded.mesh.workloads
            if (sidecar := containers.get(sidecar_name(workload))) is not None and sidecar.status == "running"}


def sidecar_stats(loaded: Loaded, workload: str) -> dict | None:
    """The JSON counters of one workload's sidecar (see proxy/meshproxy/admin.py)."""
    sidecar = _containers(loaded.project.name).get(sidecar_name(workload))
    return admin_get(sidecar, "/stats") if sidecar is not None else None

