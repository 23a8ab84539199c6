"""Every addon of the sidecar, in pipeline order. Reading addons() tells the whole story."""

from __future__ import annotations

from mitmproxy.addons import core, proxyserver

from meshproxy.addons.config_watcher import ConfigWatcher
from meshproxy.addons.protocol import ProtocolDetection
from meshproxy.addons.routing import Routing
from meshproxy.addons.telemetry import Telemetry
from meshproxy.config import MeshState


def addons(state: MeshState) -> list:
    return [
        core.Core(),  # mitmproxy's option and command plumbing
        proxyserver.Proxyserver(),  # mitmproxy's listeners and connection handling
        ConfigWatcher(state),  # loads sidecar.json and hot-reloads it
        ProtocolDetection(),  # HTTP/1, HTTP/2 (prior knowledge) or raw TCP passthrough
        Routing(state),  # client side: pick a version of the destination service
        Telemetry(state),  # counters, Prometheus metrics, access log
    ]
