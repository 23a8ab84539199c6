"""The compose rewrite: the canonical compose model in, the meshed compose file out.

`render()` is a pure function. For every meshed service it adds a pod container that
owns the network namespace (and takes over the app's network settings), an init that
installs the interception rules and ends once the sidecar is ready, and the sidecar;
the app joins the pod's namespace and starts after the init. With `up --with prometheus`
a Prometheus scraping the sidecars is one more service (meshcli/prometheus.py). Everything else of the
model is kept as `docker compose config` resolved it (paths are absolute there, so the
rendered file works from any directory). See ../shared/design/architecture.md, "Pod pattern".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproxy.config import (CONFIG_DIR, ENV_CONFIG_DIR, ENV_IDENTITY_DIR, ENV_PROJECT, ENV_SERVICE, ENV_VERSION,
                              ENV_WORKLOAD, IDENTITY_DIR, SIDECAR_UID)

from meshcli import prometheus
from meshcli.compose_model import ComposeProject
from meshcli.mesh_config import Mesh
from meshcli.prometheus import Prometheus

CONTROLLER = "meshcli-controller"
POD_SUFFIX = "-pod"
INIT_SUFFIX = "-init"
SIDECAR_SUFFIX = "-sidecar"
LABEL_PREFIX = "io.meshcli."

# Settings that belong to the network namespace, so they move from the app to its pod.
NAMESPACE_KEYS = (
    "networks", "ports", "expose", "hostname", "domainname", "dns", "dns_search", "dns_opt",
    "extra_hosts", "mac_address", "links", "external_links", "network_mode",
)


@dataclass(frozen=True)
class RenderOptions:
    sidecar_image: str
    config_dir: Path  # compiled sidecar config, mounted read-only into every sidecar
    docker_socket: str = "/var/run/docker.sock"  # for the controller only
    # One directory per workload (meshcli/ca.py), each mounted read-only into that workload's sidecar alone.
    identities_dir: Path | None = None
    prometheus: Prometheus | None = None  # `up --with prometheus`


def sidecar_group() -> int:
    """The group sidecars run with: their own when meshcli runs as root (it gives them their
    key files, mode 0600); else the user's, so a key of mode 0640 in a directory of mode
    0750 reaches the sidecar and no other local user (see meshcli/ca.py)."""
    import os

    return SIDECAR_UID if os.geteuid() == 0 else os.getgid()


def pod_name(workload: str) -> str:
    return workload + POD_SUFFIX


def init_name(workload: str) -> str:
    return workload + INIT_SUFFIX


def sidecar_name(workload: str) -> str:
    return workload + SIDECAR_SUFFIX


def render(project: ComposeProject, mesh: Mesh, options: RenderOptions) -> dict[str, Any]:
    """Return the rendered compose file as plain data (ready for yaml.safe_dump)."""
    data = copy.deepcopy(project.data)
    data["name"] = project.name
    services: dict[str, Any] = {}
    for name, service in data["services"].items():
        _retarget_references(service, mesh)
        services[name] = service
        workload = mesh.workloads.get(name)
        if workload is None:
            continue
        pod, app = _split_namespace(service)
        # Callers reach the app by its own name (and a version by its logical name),
        # so the pod that now owns the network carries those names as aliases.
        _add_aliases(pod, [name] + ([workload.service] if workload.service != name else []))
        app["network_mode"] = f"service:{pod_name(name)}"
        app["depends_on"] = {
            **_depends_on_mapping(service.get("depends_on")),
            pod_name(name): {"condition": "service_started"},
            # The init ends once the rules are in and the sidecar is ready, so the app's first calls are meshed.
            init_name(name): {"condition": "service_completed_successfully"},
        }
        services[name] = app
        services[pod_name(name)] = _pod_service(name, workload, pod, service, mesh, options.sidecar_image)
        services[init_name(name)] = _init_service(name, workload, service, mesh, options.sidecar_image)
        services[sidecar_name(name)] = _sidecar_service(name, workload, service, options, mesh)
    if mesh.workloads:
        services[CONTROLLER] = _controller_service(mesh, options, data["services"])
    if mesh.workloads and options.prometheus is not None:
        services[prometheus.SERVICE] = prometheus.service(
            options.prometheus, services, mesh,
            {LABEL_PREFIX + "role": prometheus.ADDON, LABEL_PREFIX + "project": mesh.project})
    data["services"] = services
    return data


def _controller_service(mesh: Mesh, options: RenderOptions, user_services: dict[str, Any]) -> dict:
    """Restarts sidecars that die without being stopped (see proxy/meshproxy/controller.py)."""
    # Depending on the sidecars makes `down` stop the controller before them.
    always_on = [name for name in mesh.workloads if not user_services[name].get("profiles")]
    return {
        "image": options.sidecar_image,
        "command": ["controller"],
        "network_mode": "none",
        "environment": {ENV_PROJECT: mesh.project},
        "volumes": [f"{options.docker_socket}:/var/run/docker.sock"],
        "depends_on": {sidecar_name(name): {"condition": "service_started"} for name in always_on},
        "restart": "unless-stopped",
        "stop_grace_period": "1s",
        "labels": {LABEL_PREFIX + "role": "controller", LABEL_PREFIX + "project": mesh.project},
    }


def _labels(role: str, workload, project: str) -> dict[str, str]:
    return {
        LABEL_PREFIX + "role": role,
        LABEL_PREFIX + "workload": workload.name,
        LABEL_PREFIX + "service": workload.service,
        LABEL_PREFIX + "version": workload.version,
        LABEL_PREFIX + "project": project,
    }


def _split_namespace(service: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod settings, app) - the app keeps everything but its network namespace."""
    pod = {key: service[key] for key in NAMESPACE_KEYS if key in service}
    app = {key: value for key, value in service.items() if key not in NAMESPACE_KEYS}
    sysctls = service.get("sysctls")
    if sysctls:
        # net.* sysctls are per network namespace: they must be set on its owner.
        items = dict(sysctls.items() if isinstance(sysctls, dict) else (s.split("=", 1) for s in sysctls))
        net = {k: v for k, v in items.items() if str(k).startswith("net.")}
        if net:
            pod["sysctls"] = net
            rest = {k: v for k, v in items.items() if k not in net}
            if rest:
                app["sysctls"] = rest
            else:
                app.pop("sysctls")
    return pod, app


def _add_aliases(pod: dict[str, Any], new_aliases: list[str]) -> None:
    if "network_mode" in pod:
        return  # the default bridge network has no aliases (nor name resolution)
    networks = pod.get("networks")
    if networks is None:
        networks = {"default": None}
    elif isinstance(networks, list):
        networks = {name: None for name in networks}
    for name, settings in list(networks.items()):
        settings = dict(settings or {})
        aliases = list(settings.get("aliases") or [])
        aliases += [alias for alias in new_aliases if alias not in aliases]
        settings["aliases"] = aliases
        networks[name] = settings
    pod["networks"] = networks


def _pod_service(name: str, workload, pod: dict[str, Any], app: dict[str, Any], mesh: Mesh,
                 image: str) -> dict:
    """Holds the namespace (proxy/pod.sh hold). No health check: nothing polls a pod, so an
    idle mesh costs Docker nothing (the init below says when the pod is ready)."""
    service: dict[str, Any] = {
        "image": image,
        "command": ["pod"],
        "environment": {ENV_WORKLOAD: name},
        "restart": "unless-stopped",
        "labels": _labels("pod", workload, mesh.project),
        **pod,
    }
    return _inherit_from_app(service, app, POD_SUFFIX)


def _init_service(name: str, workload, app: dict[str, Any], mesh: Mesh, image: str) -> dict:
    """Installs the interception rules, waits until the sidecar is ready, exits 0 (pod.sh init)."""
    service: dict[str, Any] = {
        "image": image,
        "command": ["init"],
        "cap_add": ["NET_ADMIN"],
        "network_mode": f"service:{pod_name(name)}",
        "environment": {ENV_WORKLOAD: name},
        "depends_on": {pod_name(name): {"condition": "service_started"},
                       sidecar_name(name): {"condition": "service_started"}},
        "labels": _labels("init", workload, mesh.project),
    }
    return _inherit_from_app(service, app, INIT_SUFFIX)


def _sidecar_service(name: str, workload, app: dict[str, Any], options: RenderOptions, mesh: Mesh) -> dict:
    service: dict[str, Any] = {
        "image": options.sidecar_image,
        "command": ["sidecar"],
        "user": f"{SIDECAR_UID}:{sidecar_group()}",
        "network_mode": f"service:{pod_name(name)}",
        "depends_on": {pod_name(name): {"condition": "service_started"}},
        "environment": {
            ENV_PROJECT: mesh.project,
            ENV_WORKLOAD: name,
            ENV_SERVICE: workload.service,
            ENV_VERSION: workload.version,
            ENV_CONFIG_DIR: CONFIG_DIR,
        },
        "volumes": [f"{options.config_dir.absolute()}:{CONFIG_DIR}:ro"],
        "restart": "unless-stopped",
        "stop_grace_period": "3s",
        "labels": _labels("sidecar", workload, mesh.project),
    }
    if options.identities_dir is not None:
        service["environment"][ENV_IDENTITY_DIR] = IDENTITY_DIR
        service["volumes"].append(f"{(options.identities_dir / name).absolute()}:{IDENTITY_DIR}:ro")
    return _inherit_from_app(service, app, SIDECAR_SUFFIX)


def _inherit_from_app(service: dict[str, Any], app: dict[str, Any], suffix: str) -> dict[str, Any]:
    """Pod, init and sidecar follow their app: same profiles, a recognisable container name."""
    if "container_name" in app:
        service["container_name"] = f"{app['container_name']}{suffix}"
    if "profiles" in app:
        service["profiles"] = app["profiles"]
    return service


def _depends_on_mapping(depends_on: Any) -> dict[str, Any]:
    if not depends_on:
        return {}
    if isinstance(depends_on, dict):
        return dict(depends_on)
    return {name: {"condition": "service_started"} for name in depends_on}


def _retarget_references(service: dict[str, Any], mesh: Mesh) -> None:
    """Point namespace references at a meshed service to its pod, which now owns the namespace."""
    mode = service.get("network_mode")
    if isinstance(mode, str) and mode.startswith("service:") and mode[8:] in mesh.workloads:
        service["network_mode"] = f"service:{pod_name(mode[8:])}"
    if service.get("links"):
        links = []
        for link in service["links"]:
            target, _, alias = str(link).partition(":")
            if target in mesh.workloads:
                link = f"{pod_name(target)}:{alias or target}"
            links.append(link)
        service["links"] = links
