"""Routing: on the client side, send each request to one version of its service.

The app called a logical name (`http://payment:8080`); its sidecar looks the Host
header up in the mesh config and picks a version with the service's load balancer.
Calls to a workload's own name (`payment-v1`) or to anything outside the mesh go
where the app sent them. The chosen version is recorded in flow.metadata for
telemetry (and, later, retries and faults).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from meshproxy import balancer
from meshproxy.config import MeshState, SidecarConfig

logger = logging.getLogger("meshproxy.routing")

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
SOURCE_HEADER = "x-meshcli-source"  # who called, for the server side's telemetry
META_DIRECTION = "meshcli.direction"
META_SERVICE = "meshcli.service"
META_VERSION = "meshcli.version"
META_UPSTREAM = "meshcli.upstream"
META_SOURCE = "meshcli.source"
META_BALANCER = "meshcli.balancer"


def direction_of(flow: http.HTTPFlow) -> str:
    mode = flow.client_conn.proxy_mode
    return "inbound" if mode.listen_port() == INBOUND_PORT else "outbound"


def host_name(authority: str | None) -> str:
    """'payment:8080' -> 'payment'; '[::1]:80' -> '::1'."""
    if not authority:
        return ""
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class Routing:
    def __init__(self, state: MeshState) -> None:
        self.state = state
        self._balancers: dict[str, object] = {}
        state.subscribe(self._rebuild)

    def _rebuild(self, config: SidecarConfig) -> None:
        # Load balancers are built once per config version, never per request.
        self._balancers = {
            name: balancer.make(service.load_balancer, service.versions)
            for name, service in config.services.items()
            if service.versions
        }

    def request(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata
        if direction_of(flow) == "inbound":
            meta[META_DIRECTION] = "inbound"
            meta[META_SOURCE] = flow.request.headers.pop(SOURCE_HEADER, "unknown")
            meta[META_SERVICE] = self.state.identity.service
            meta[META_VERSION] = self.state.identity.version
            return
        meta[META_DIRECTION] = "outbound"
        authority = flow.request.host_header
        name = host_name(authority)
        service = self.state.config.by_host.get(name)
        if service is None:
            meta[META_SERVICE] = name or flow.request.host
            return  # leaving the mesh: no mesh headers for outside hosts
        flow.request.headers[SOURCE_HEADER] = self.state.identity.workload
        lb = self._balancers[service.name]
        chosen = lb.pick()
        meta[META_BALANCER] = lb  # released on this one even if a reload replaces it meanwhile
        meta[META_SERVICE] = service.name
        meta[META_VERSION] = chosen.name
        meta[META_UPSTREAM] = chosen
        # Setting .host rewrites the Host header too; the app's own Host must reach the server.
        flow.request.host = chosen.host
        flow.request.host_header = authority

    def response(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def _release(self, flow: http.HTTPFlow) -> None:
        chosen = flow.metadata.get(META_UPSTREAM)
        lb = flow.metadata.get(META_BALANCER)
        if chosen is not None and lb is not None:
            lb.done(chosen)
