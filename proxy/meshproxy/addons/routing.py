"""Routing: on the client side, send each request to one version of its service.

The app called a logical name (`http://payment:8080`); its sidecar looks the Host
header up in the mesh config, takes the first route of that service that matches
the request, and picks a version: by the route's split (exact shares), else with the
service's load balancer. Versions ejected by outlier detection are skipped unless
every candidate is ejected (Envoy's panic mode). Calls to a workload's own name
(`payment-v1`) or to anything outside the mesh go where the app sent them.

What was decided goes into flow.metadata (the META_* keys below) for the addons that
follow: Faults, Mirroring, Resilience (which may pick again for a retry through the
RoutePicker in META_PICKER) and Telemetry.
"""

from __future__ import annotations

import time
from typing import Collection

from mitmproxy import http

from meshproxy import balancer
from meshproxy.config import MeshState, SidecarConfig, Version
from meshproxy.outlier import Outliers, ServiceOutliers

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
SOURCE_HEADER = "x-meshcli-source"  # who called, for the server side's telemetry
META_DIRECTION = "meshcli.direction"
META_SERVICE = "meshcli.service"
META_SERVICE_CONFIG = "meshcli.service_config"
META_ROUTE = "meshcli.route"
META_VERSION = "meshcli.version"
META_UPSTREAM = "meshcli.upstream"
META_DEADLINE = "meshcli.deadline"
META_FLAGS = "meshcli.flags"
META_SOURCE = "meshcli.source"
META_PICKER = "meshcli.picker"


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


def now() -> float:
    """The clock of deadlines: asyncio's loop.time() is time.monotonic()."""
    return time.monotonic()


class RoutePicker:
    """One route's choice of version, with Envoy's host filters on top of a policy:
    ejected versions are skipped unless all are (panic), and `exclude` (versions a
    retry already tried, Envoy's previous_hosts) is skipped unless nothing is left."""

    def __init__(self, policy, outliers: ServiceOutliers) -> None:
        self.policy = policy
        self.outliers = outliers

    def pick(self, exclude: Collection[Version] = balancer.NOTHING) -> Version:
        ejected = self.outliers.ejected_hosts()
        if not ejected and not exclude:
            return self.policy.pick()
        candidates = self.policy.versions
        healthy = [v for v in candidates if v.host not in ejected] or candidates
        fresh = [v for v in healthy if v not in exclude] or healthy
        return self.policy.pick([v for v in candidates if v not in fresh])

    def done(self, version: Version) -> None:
        self.policy.done(version)


def build_pickers(config: SidecarConfig, outliers: Outliers) -> dict[int, RoutePicker]:
    """A picker per route, keyed by id(route): the table lives exactly as long as the
    config holding those routes. Routes without a split share their service's balancer,
    so least-request sees every request to the service."""
    pickers = {}
    for service in config.services.values():
        health = outliers.of(service)
        shared = RoutePicker(balancer.make(service.load_balancer, service.versions), health)
        for route in service.routes:
            if route.split:
                weighted = [(service.version(w.version), w.weight) for w in route.split]
                pickers[id(route)] = RoutePicker(balancer.make_split(service.load_balancer, weighted), health)
            else:
                pickers[id(route)] = shared
    return pickers


class Routing:
    def __init__(self, state: MeshState, outliers: Outliers | None = None) -> None:
        self.state = state
        self.outliers = outliers or Outliers(state)
        self._table: tuple[SidecarConfig, dict[int, RoutePicker]] = (state.config, {})
        state.subscribe(self._rebuild)

    def _rebuild(self, config: SidecarConfig) -> None:
        # Built once per config version, never per request; swapped in one assignment.
        self._table = (config, build_pickers(config, self.outliers))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # At the headers, not the whole request: a streamed body (over stream_large_bodies)
        # goes upstream as it arrives, so its destination must be chosen before. This is
        # also when the route's timeout starts.
        meta = flow.metadata
        meta[META_FLAGS] = []
        if direction_of(flow) == "inbound":
            meta[META_DIRECTION] = "inbound"
            meta[META_SOURCE] = flow.request.headers.pop(SOURCE_HEADER, "unknown")
            meta[META_SERVICE] = self.state.identity.service
            meta[META_VERSION] = self.state.identity.version
            return
        meta[META_DIRECTION] = "outbound"
        authority = flow.request.host_header
        name = host_name(authority)
        config, pickers = self._table
        service = config.by_host.get(name)
        if service is None:
            meta[META_SERVICE] = name or flow.request.host
            return  # leaving the mesh: no mesh headers for outside hosts
        request = flow.request
        request.headers[SOURCE_HEADER] = self.state.identity.workload
        route = service.route_for(request.method, request.path.split("?", 1)[0], request.headers, request.query,
                                  self.state.identity.service)
        picker = pickers[id(route)]
        chosen = picker.pick()
        meta[META_SERVICE] = service.name
        meta[META_SERVICE_CONFIG] = service
        meta[META_ROUTE] = route
        meta[META_PICKER] = picker  # released on this one even if a reload replaces it meanwhile
        meta[META_DEADLINE] = now() + route.timeout if route.timeout is not None else None
        send_to(flow, chosen)

    def response(self, flow: http.HTTPFlow) -> None:
        release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        release(flow)


def send_to(flow: http.HTTPFlow, version: Version) -> None:
    """Make `version` the flow's upstream (holding it in the balancer until release())."""
    flow.metadata[META_VERSION] = version.name
    flow.metadata[META_UPSTREAM] = version
    # Setting .host rewrites the Host header too; the app's own Host must reach the server.
    authority = flow.request.host_header
    flow.request.host = version.host
    flow.request.host_header = authority


def pick_again(flow: http.HTTPFlow, tried: Collection[Version]) -> Version:
    """For a retry: release the current upstream and pick another, preferring untried versions."""
    picker: RoutePicker = flow.metadata[META_PICKER]
    picker.done(flow.metadata[META_UPSTREAM])
    version = picker.pick(tried)
    send_to(flow, version)
    return version


def release(flow: http.HTTPFlow) -> None:
    picker = flow.metadata.pop(META_PICKER, None)
    if picker is not None:
        picker.done(flow.metadata[META_UPSTREAM])
