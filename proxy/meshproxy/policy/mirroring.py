"""Mirroring: send a copy of some requests to a mirror version (Istio's mirror).

When the route has a mirror and the request is in its percent (sampling.py), a copy of
the buffered request goes to the mirror version in its own asyncio task, with a short
timeout; its answer is discarded and nothing about it reaches the caller or delays it.
As in Istio the copy's Host gets the suffix `-shadow`, so the mirror can tell. Only
buffered requests are mirrored (a streamed body cannot be sent twice).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from meshproxy.config import Version
from meshproxy.exchange import Exchange
from meshproxy.sampling import Shares

logger = logging.getLogger("meshproxy.mirroring")

MIRROR_TIMEOUT = 2.0  # seconds; a slow mirror must not pile up copies
SHADOW_SUFFIX = "-shadow"

SendCopy = Callable[[Version, str], Awaitable[object]]  # (mirror version, shadow authority)


def shadow_authority(authority: str) -> str:
    """'payment:8080' -> 'payment-shadow:8080'."""
    name, colon, port = authority.partition(":")  # mesh services have DNS names, never IPv6 literals
    return name + SHADOW_SUFFIX + colon + port


class Mirroring:
    def __init__(self) -> None:
        self._copies: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self.shares = Shares()  # which requests a mirror's percent picks

    def wants_copy(self, exchange: Exchange) -> Version | None:
        """The version to mirror this request to, or None (sampled here, once per request)."""
        route = exchange.route
        if route is None or route.mirror is None or not self.shares.pick(route.mirror, route.mirror.percent):
            return None
        return exchange.service.version(route.mirror.version)

    def copy(self, exchange: Exchange, version: Version, send: SendCopy) -> None:
        """Send the copy with `send` (the path's client) in the background."""
        task = asyncio.create_task(self._send(send, version, shadow_authority(exchange.authority)))
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)
        exchange.mirrored = version.name

    @staticmethod
    async def _send(send: SendCopy, version: Version, authority: str) -> None:
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                await send(version, authority)
        except Exception as exc:  # an unreachable or slow mirror is the mirror's problem, never the caller's
            logger.debug("mirror copy to %s failed: %s", version.host, exc or "timeout")

    def stop(self) -> None:
        for task in self._copies:
            task.cancel()
