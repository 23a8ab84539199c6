"""The optional Prometheus of `meshcli up --with prometheus`: its image, its config, its service.

It scrapes every sidecar's Istio-named metrics (`<workload>-pod:15090/stats/prometheus`,
a port the pods never intercept) so Istio's Grafana dashboards work unchanged against it.
The targets are a file_sd file written under `.mesh/<project>/prometheus/` from the loaded
project on every `up`, which Prometheus re-reads by itself: workloads added by a later
`up` are scraped without restarting it. It joins every network a pod is on and publishes
its port 9090 on the host.

The image: the official `prom/prometheus` for online users; without a registry (the
offline base image in use, see meshcli/images.py) one built from Debian's `prometheus`
package on that base, tagged by a hash of its Dockerfile and of the base's id.
MESHCLI_PROMETHEUS_IMAGE overrides both.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproxy.config import METRICS_PORT

from meshcli import images
from meshcli.mesh_config import Mesh
from meshcli.yaml_source import atomic_write

ADDON = "prometheus"  # the name `--with` takes
SERVICE = "meshcli-prometheus"
OFFICIAL_IMAGE = "prom/prometheus:v2.53.0"
IMAGE_REPO = "meshcli-prometheus"
IMAGE_VARIABLE = "MESHCLI_PROMETHEUS_IMAGE"
PORT = 9090  # inside the container; published on the host at `host_port`
DEFAULT_HOST_PORT = 9090
SCRAPE_INTERVAL = "5s"
CONFIG_MOUNT = "/etc/meshcli-prometheus"
CONFIG_FILE = "prometheus.yml"
TARGETS_FILE = "targets.json"
METRICS_PATH = "/stats/prometheus"
JOB = "meshcli-sidecars"
DOCKERFILE = """\
# Prometheus from Debian's package, for machines without a registry (see meshcli/prometheus.py).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
"""


@dataclass(frozen=True)
class Prometheus:
    """What the rendered compose file needs to run it."""

    image: str
    config_dir: Path  # on the host: prometheus.yml and targets.json, mounted read-only
    host_port: int = DEFAULT_HOST_PORT  # 0: any free port (`meshcli up` reports which)


def config_dir(state_dir: Path) -> Path:
    return state_dir / "prometheus"


def image(progress) -> str:
    """The image to run: the override, the official one online, else the Debian one (built if missing)."""
    configured = os.environ.get(IMAGE_VARIABLE)
    if configured:
        return configured
    client = images.docker_client()
    base = images.base_image(client)
    if base == images.PUBLIC_BASE:
        return OFFICIAL_IMAGE
    base_id = client.images.get(base).id
    tag = f"{IMAGE_REPO}:{hashlib.sha256((DOCKERFILE + base_id).encode()).hexdigest()[:10]}"
    if images.has_image(client, tag):
        return tag
    progress(f"building {tag} from Debian's prometheus package on {base}")
    with tempfile.TemporaryDirectory(prefix="meshcli-prometheus-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
        images.stream_build(client, Path(tmp), tag, {"BASE_IMAGE": base}, progress, label="prometheus")
    return tag


def targets(mesh: Mesh) -> list[dict]:
    """file_sd targets: every workload's pod, labelled with what it runs."""
    from meshcli.compose_rewrite import pod_name

    return [{"targets": [f"{pod_name(w.name)}:{METRICS_PORT}"],
             "labels": {"mesh_workload": w.name, "mesh_service": w.service, "mesh_version": w.version}}
            for w in sorted(mesh.workloads.values(), key=lambda w: w.name)]


def config_text() -> str:
    """prometheus.yml (JSON is YAML): one job, the sidecars, found in targets.json."""
    return json.dumps({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": METRICS_PATH,
            "file_sd_configs": [{"files": [f"{CONFIG_MOUNT}/{TARGETS_FILE}"], "refresh_interval": SCRAPE_INTERVAL}],
        }],
    }, indent=2) + "\n"


def write_config(directory: Path, mesh: Mesh) -> None:
    """Write prometheus.yml and targets.json (atomically: Prometheus may be reading them)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / CONFIG_FILE, config_text())
    atomic_write(directory / TARGETS_FILE, json.dumps(targets(mesh), indent=2) + "\n")


def service(options: Prometheus, rendered_services: dict[str, Any], mesh: Mesh, labels: dict[str, str]) -> dict:
    """The compose service, on every network the pods are on."""
    from meshcli.compose_rewrite import pod_name

    networks: list[str] = []
    for workload in mesh.workloads:
        pod = rendered_services.get(pod_name(workload), {})
        if "network_mode" in pod:
            continue
        names = pod.get("networks") or ["default"]
        networks += [name for name in names if name not in networks]
    result: dict[str, Any] = {
        "image": options.image,
        "command": [f"--config.file={CONFIG_MOUNT}/{CONFIG_FILE}", "--storage.tsdb.path=/prometheus",
                    f"--web.listen-address=:{PORT}"],
        "volumes": [f"{options.config_dir}:{CONFIG_MOUNT}:ro"],
        # On this machine only, as `docker compose` publishes nothing else of the mesh's own.
        "ports": [f"127.0.0.1:{options.host_port}:{PORT}" if options.host_port else f"127.0.0.1::{PORT}"],
        "restart": "unless-stopped",
        "stop_grace_period": "2s",
        "labels": labels,
    }
    if networks and networks != ["default"]:
        result["networks"] = networks
    return result


def url(project: str) -> str | None:
    """Where the project's Prometheus answers on this host; None when it does not run (or no
    engine answers: then nothing runs)."""
    from meshcli import docker_engine
    from meshcli.compose_rewrite import LABEL_PREFIX

    try:
        found = docker_engine.client().containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                                          f"{LABEL_PREFIX}role={ADDON}"]})
    except Exception:  # DockerError, or the engine went away mid-call (SDK and requests errors)
        return None
    for container in found:
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{PORT}/tcp") or []
        if bindings:
            return f"http://127.0.0.1:{bindings[0]['HostPort']}"
    return None
