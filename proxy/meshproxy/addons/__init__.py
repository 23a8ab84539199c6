"""mitmproxy's pipeline for handed-over connections, in order. Reading addons() tells the
whole story: mitmproxy's core, then one thin adapter per policy of meshproxy/policy/,
each holding the very policy instance the fast path uses (see meshproxy/sidecar.py)."""

from __future__ import annotations

from mitmproxy.addons import core, proxyserver

from meshproxy.addons.faults import Faults
from meshproxy.addons.mirroring import Mirroring
from meshproxy.addons.protocol import ProtocolDetection
from meshproxy.addons.resilience import Resilience
from meshproxy.addons.routing import Routing
from meshproxy.addons.telemetry import Telemetry


def addons(sidecar) -> list:
    """The addons for a meshproxy.sidecar.Sidecar."""
    return [
        core.Core(),  # mitmproxy's option and command plumbing
        proxyserver.Proxyserver(),  # mitmproxy's listeners and connection handling
        ProtocolDetection(),  # inside the handover tunnel: HTTP/1, HTTP/2 (prior knowledge) or raw TCP
        Routing(sidecar.router),  # client side: pick a route and a version of the destination service
        Faults(sidecar.http_faults),  # client side: injected delays and aborts
        Mirroring(sidecar.mirroring, sidecar.pool, sidecar.h2_pool),  # client side: fire-and-forget copies
        Resilience(sidecar.resilience, sidecar.pool, sidecar.h2_pool),  # client side: timeouts, retries, circuit breaking
        Telemetry(sidecar.telemetry, sidecar.access_log, sidecar.tap),  # metrics, access log, tap
    ]
