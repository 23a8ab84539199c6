"""ServiceAddresses: which mesh service (or workload) an IP address belongs to.

A raw TCP connection intercepted in transparent mode carries only its original
destination IP, not the name the app dialled. To apply a service's TCP fault we map
IPs back to services by resolving the service's names (its logical name and every
version's host) - only for services that have a TCP fault, so a mesh without TCP
faults makes no lookups for them (`hosts_with_tcp_faults`). Telemetry maps IPs to
workloads the same way (`workload_hosts`), to name a TCP connection's peers, and mesh
mTLS reads that map to secure raw TCP to a workload. The map is rebuilt when the config
changes and every few seconds (a restarted container may get a new IP), every second
while a name does not resolve yet (pods start at about the same time); lookups run in a
thread (loop.getaddrinfo) and never block the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from meshproxy.config import MeshState, SidecarConfig

logger = logging.getLogger("meshproxy.resolver")
REFRESH_SECONDS = 5.0
RETRY_SECONDS = 1.0  # while a name does not resolve


def hosts_with_tcp_faults(config: SidecarConfig, source: str) -> dict[str, str]:
    """host name -> service, for every service that has a TCP fault for calls from `source`."""
    faulted = {name for name, service in config.services.items() if service.tcp_fault is not None}
    faulted |= {f.service for f in config.faults if f.tcp is not None and f.source in (None, source) and f.active()}
    hosts: dict[str, str] = {}
    for name in sorted(faulted & set(config.services)):
        for host in (name, *(v.host for v in config.services[name].versions)):
            hosts.setdefault(host, name)
    return hosts


def workload_hosts(config: SidecarConfig, source: str) -> dict[str, str]:
    """host name -> workload, for every version of every service (its host is its workload)."""
    return {v.host: v.host for service in config.services.values() for v in service.versions}


class ServiceAddresses:
    def __init__(self, state: MeshState, hosts: Callable[[SidecarConfig, str], dict[str, str]] = hosts_with_tcp_faults,
                 refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.state = state
        self.hosts = hosts  # host names to resolve -> what an address of theirs is reported as
        self.refresh_seconds = refresh_seconds
        self._by_ip: dict[str, str] = {}
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        state.subscribe(self._on_config)

    def service_at(self, ip: str) -> str | None:
        return self._by_ip.get(ip)

    async def refresh(self) -> bool:
        """Rebuild the map; whether every name resolved."""
        hosts = self.hosts(self.state.config, self.state.identity.service)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.getaddrinfo(h, None, type=socket.SOCK_STREAM) for h in hosts),
                                       return_exceptions=True)
        by_ip: dict[str, str] = {}
        for host, result in zip(hosts, results):
            if isinstance(result, BaseException):
                logger.debug("cannot resolve %s: %s", host, result)
                continue
            for *_, sockaddr in result:
                by_ip.setdefault(sockaddr[0], hosts[host])
        self._by_ip = by_ip
        return not any(isinstance(result, BaseException) for result in results)

    def start(self) -> None:
        """Keep the map current until stop(); call with the event loop running."""
        self._task = asyncio.create_task(self._keep_current())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _on_config(self, _config: SidecarConfig) -> None:
        self._changed.set()

    async def _keep_current(self) -> None:
        while True:
            self._changed.clear()
            complete = False
            try:
                complete = await self.refresh()
            except Exception:  # never let one bad round end the refreshing
                logger.exception("refreshing service addresses failed")
            try:
                await asyncio.wait_for(self._changed.wait(),
                                       self.refresh_seconds if complete else min(RETRY_SECONDS, self.refresh_seconds))
            except asyncio.TimeoutError:
                pass

