"""Routing: on the client side, send each request to one version of its service.

The app called a logical name (`http://payment:8080`); its sidecar looks the Host up in
the mesh config, takes the first route of that service that matches the request, and
picks a version: by the route's split (exact shares), else with the service's load
balancer. Versions ejected by outlier detection are skipped unless every candidate is
ejected (Envoy's panic mode). Calls to a workload's own name (`payment-v1`) or to anything
outside the mesh go where the app sent them.
"""

from __future__ import annotations

import time
from typing import Callable, Collection, Mapping
from urllib.parse import parse_qsl

from meshproxy import balancer
from meshproxy.config import SOURCE_HEADER, MeshState, SidecarConfig, Version, service_of_spiffe_id
from meshproxy.exchange import Exchange
from meshproxy.outlier import Outliers, ServiceOutliers


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


class LazyQuery(Mapping[str, str]):
    """The query string as a mapping, parsed only if a route matches on it."""

    __slots__ = ("_target", "_parsed")

    def __init__(self, target: str) -> None:
        self._target = target
        self._parsed: dict[str, str] | None = None

    def _items(self) -> dict[str, str]:
        if self._parsed is None:
            _, _, query = self._target.partition("?")
            self._parsed = {}
            for name, value in parse_qsl(query, keep_blank_values=True):
                self._parsed.setdefault(name, value)
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._items()[name]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


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


class Router:
    def __init__(self, state: MeshState, outliers: Outliers | None = None) -> None:
        self.state = state
        self.outliers = outliers or Outliers(state)
        self._table: tuple[SidecarConfig, dict[int, RoutePicker]] = (state.config, {})
        self._service_of: dict[str, str] = {}  # workload (a version's host) -> its service
        state.subscribe(self._rebuild)

    def _rebuild(self, config: SidecarConfig) -> None:
        # Built once per config version, never per request; swapped in one assignment.
        self._table = (config, build_pickers(config, self.outliers))
        self._service_of = {v.host: s.name for s in config.services.values() for v in s.versions}

    def inbound(self, exchange: Exchange, source: str | None, principal: str = "") -> None:
        """A request to the app behind this sidecar, from `source` (the caller's source header).
        When mTLS proved who calls (`principal`, a SPIFFE ID), the header must name one of that
        service's workloads; else the certificate's service is the caller (a header is easy to forge)."""
        me = self.state.identity
        if principal:
            config = self._table[0]
            proven = service_of_spiffe_id(principal, config.trust_domain, config.project)
            if proven is not None and self._service_of.get(source or "") != proven:
                source = proven
        exchange.source = source or "unknown"
        exchange.service_name = me.service
        exchange.version = me.version

    def outbound(self, exchange: Exchange, headers: Mapping[str, str], set_header: Callable[[str, str], None],
                 query: Mapping[str, str] | None = None) -> Version | None:
        """Choose the route and version of a request the app sends (at its headers, so a
        streamed body can follow). Returns the version to send it to, or None when it
        leaves the mesh (it then goes where the app sent it, without mesh headers).
        `headers` has lower-case names; `set_header` adds the source header."""
        me = self.state.identity
        exchange.source = me.workload
        config, pickers = self._table
        name = host_name(exchange.authority)
        service = config.by_host.get(name)
        if service is None:
            exchange.service_name = name
            return None
        set_header(SOURCE_HEADER, me.workload)
        path = exchange.path.split("?", 1)[0]
        route = service.route_for(exchange.method, path, headers, query if query is not None
                                  else LazyQuery(exchange.path), me.service)
        picker = pickers[id(route)]
        exchange.service_name = service.name
        exchange.service = service
        exchange.route = route
        exchange.picker = picker  # released on this one even if a reload replaces it meanwhile
        exchange.deadline = now() + route.timeout if route.timeout is not None else None
        return exchange.send_to(picker.pick())
