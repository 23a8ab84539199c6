"""Outlier detection (Envoy's, per service and version host, in this sidecar).

Resilience records the outcome of every upstream attempt; Routing skips the hosts
that are ejected. A version is ejected after `consecutive_5xx` 5xx outcomes or
`consecutive_gateway_errors` gateway errors (502/503/504, connect failures, resets,
timeouts) in a row, for base_ejection_time times the number of its ejections so far,
and comes back when that time is over. At most max(1, n * max_ejection_percent / 100)
of a service's n versions are ejected at once (Envoy always allows one). The state
outlives config reloads: a reload changes the thresholds, not the counts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from meshproxy.config import MeshState, OutlierDetection, Service, SidecarConfig

logger = logging.getLogger("meshproxy.outlier")

GATEWAY_ERRORS = frozenset({502, 503, 504})
# What a failure without an answer counts as (Envoy maps local-origin errors the same way).
CONNECT_FAILURE = 503
RESET = 503
TIMEOUT = 504
MAX_EJECTION_TIME = 300.0  # Envoy's default cap on base_ejection_time * ejections


@dataclass
class HostHealth:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0  # how many times this host was ejected
    ejected_until: float | None = None  # time.monotonic()


class ServiceOutliers:
    """One service's hosts as this sidecar sees them."""

    def __init__(self, service: Service) -> None:
        self.name = service.name
        self.hosts: dict[str, HostHealth] = {}
        self._ejected: frozenset[str] = frozenset()
        self._next_return = math.inf
        self.configure(service)

    def configure(self, service: Service) -> None:
        self.detection: OutlierDetection | None = service.outlier_detection
        self.versions = {v.host: v.name for v in service.versions}
        for host in list(self.hosts):
            if host not in self.versions:
                del self.hosts[host]
        self._refresh(time.monotonic(), force=True)

    def ejected_hosts(self) -> frozenset[str]:
        """Hosts ejected now; cheap when nothing changed since the last call."""
        now = time.monotonic()
        if now >= self._next_return:
            self._refresh(now)
        return self._ejected

    def record(self, host: str, status: int) -> None:
        """The outcome of one attempt: an HTTP status, or what a failure counts as."""
        detection = self.detection
        if detection is None or host not in self.versions:
            return
        health = self.hosts.get(host)
        if health is None:
            health = self.hosts[host] = HostHealth()
        if status < 500:
            health.consecutive_5xx = health.consecutive_gateway = 0
            return
        health.consecutive_5xx += 1
        health.consecutive_gateway = health.consecutive_gateway + 1 if status in GATEWAY_ERRORS else 0
        if health.ejected_until is not None:
            return
        gateway_limit = detection.consecutive_gateway_errors
        if detection.consecutive_5xx and health.consecutive_5xx >= detection.consecutive_5xx:
            self._eject(host, health, f"{health.consecutive_5xx} consecutive 5xx")
        elif gateway_limit and health.consecutive_gateway >= gateway_limit:
            self._eject(host, health, f"{health.consecutive_gateway} consecutive gateway errors")

    def _eject(self, host: str, health: HostHealth, reason: str) -> None:
        detection = self.detection
        now = time.monotonic()
        self._refresh(now)
        allowed = max(1, math.floor(len(self.versions) * detection.max_ejection_percent / 100))
        if len(self._ejected) >= allowed:
            return
        health.ejections += 1
        duration = min(detection.base_ejection_time * health.ejections,
                       max(detection.base_ejection_time, MAX_EJECTION_TIME))
        health.ejected_until = now + duration
        health.consecutive_5xx = health.consecutive_gateway = 0
        logger.warning("outlier: ejected %s %s (%s) for %.1fs after %s", self.name, self.versions[host], host,
                       duration, reason)
        self._refresh(now, force=True)

    def _refresh(self, now: float, force: bool = False) -> None:
        changed = force
        for host, health in self.hosts.items():
            if health.ejected_until is not None and health.ejected_until <= now:
                health.ejected_until = None
                changed = True
                logger.warning("outlier: %s %s (%s) is back after its ejection", self.name,
                               self.versions.get(host, "?"), host)
        if changed:
            ejected = {h: x.ejected_until for h, x in self.hosts.items() if x.ejected_until is not None}
            self._ejected = frozenset(ejected)
            self._next_return = min(ejected.values(), default=math.inf)

    def stats(self) -> dict:
        now = time.monotonic()
        self._refresh(now)
        return {"ejected": [{"version": self.versions[host], "host": host, "ejections": health.ejections,
                             "remaining_s": round(health.ejected_until - now, 3)}
                            for host, health in sorted(self.hosts.items()) if health.ejected_until is not None]}


class Outliers:
    """Every service's outlier state; shared by Routing, Resilience and Telemetry."""

    def __init__(self, state: MeshState) -> None:
        self.services: dict[str, ServiceOutliers] = {}
        state.subscribe(self.configure)  # before the addons that read it subscribe

    def configure(self, config: SidecarConfig) -> None:
        current = {}
        for name, service in config.services.items():
            existing = self.services.get(name)
            if existing is None:
                current[name] = ServiceOutliers(service)
            else:
                existing.configure(service)
                current[name] = existing
        self.services = current

    def of(self, service: Service) -> ServiceOutliers:
        outliers = self.services.get(service.name)
        if outliers is None:  # a reload removed the service while a request to it was in flight
            outliers = self.services[service.name] = ServiceOutliers(service)
        return outliers

    def stats(self) -> dict:
        return {name: outliers.stats() for name, outliers in sorted(self.services.items())
                if outliers.detection is not None}

    def ejections(self) -> dict[str, dict[str, int]]:
        """service -> version -> how many times it was ejected (meshcli_outlier_ejections_total)."""
        return {name: {outliers.versions.get(host, host): health.ejections
                       for host, health in sorted(outliers.hosts.items()) if health.ejections}
                for name, outliers in sorted(self.services.items())}
