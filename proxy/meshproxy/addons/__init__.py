"""Every addon of the sidecar, in pipeline order. Reading addons() tells the whole story."""

from __future__ import annotations

from mitmproxy.addons import core, proxyserver

from meshproxy import upstream, upstream_h2
from meshproxy.addons.config_watcher import ConfigWatcher
from meshproxy.addons.faults import Faults
from meshproxy.addons.mirroring import Mirroring
from meshproxy.addons.protocol import ProtocolDetection
from meshproxy.addons.resilience import Resilience
from meshproxy.addons.routing import Routing
from meshproxy.addons.telemetry import Telemetry
from meshproxy.config import MeshState
from meshproxy.outlier import Outliers


def addons(state: MeshState) -> list:
    faults = Faults(state)
    outliers = Outliers(state)  # shared: Resilience records outcomes, Routing skips ejected versions
    pool, h2_pool = upstream.Pool(), upstream_h2.Pool()  # upstream connections of Resilience and Mirroring
    return [
        core.Core(),  # mitmproxy's option and command plumbing
        proxyserver.Proxyserver(),  # mitmproxy's listeners and connection handling
        ConfigWatcher(state),  # loads sidecar.json and hot-reloads it
        ProtocolDetection(faults.tcp_fault_for),  # HTTP/1, HTTP/2 (prior knowledge) or raw TCP passthrough
        Routing(state, outliers),  # client side: pick a route and a version of the destination service
        faults,  # client side: injected delays, aborts and TCP faults
        Mirroring(pool, h2_pool),  # client side: fire-and-forget copies to a mirror version
        Resilience(state, outliers, pool, h2_pool),  # client side: forwards with timeouts, retries, circuit breaking
        Telemetry(state, outliers=outliers),  # counters, Prometheus metrics, access log
    ]
