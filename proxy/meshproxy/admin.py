"""The sidecar's own HTTP endpoints, on Istio's ports.

15020 `/healthz/ready` (ready once the proxy listens and a config is loaded),
15000 `/config_dump` and `/stats` (JSON, read by meshcli), 15090 `/stats/prometheus`.
They run on threads with the standard library's HTTP server: they are low-traffic
and must answer even when the proxy's event loop is busy.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshproxy.config import ADMIN_PORT, HEALTH_PATH, HEALTH_PORT, METRICS_PORT

Route = Callable[[], tuple[int, str, bytes]]


def json_route(produce: Callable[[], tuple[int, object]]) -> Route:
    def route() -> tuple[int, str, bytes]:
        status, body = produce()
        return status, "application/json", json.dumps(body, indent=1).encode()
    return route


def serve(port: int, routes: dict[str, Route], host: str = "0.0.0.0") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = route()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            pass  # health probes every second would drown the access log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"admin-{port}", daemon=True).start()
    return server


def start(sidecar) -> list[ThreadingHTTPServer]:
    """Serve the admin ports of a meshproxy.sidecar.Sidecar."""
    state, telemetry = sidecar.state, sidecar.telemetry

    def ready() -> tuple[int, object]:
        ok = sidecar.ready()
        return (200 if ok else 503), {"ready": ok, "listening": sidecar.listener.listening(),
                                      "config_loaded": state.loaded}

    def config_dump() -> tuple[int, object]:
        config = state.config
        return 200, {
            "identity": vars(state.identity),
            "ready": sidecar.ready(),
            "config_version": config.version,
            "generation": config.generation,
            "last_error": state.last_error,
            # the last rejected config and why, when MeshState keeps it
            "rejection": getattr(state, "rejection", None),
            "tls": sidecar.tls.status(),
            "config": config.raw,
        }

    def stats() -> tuple[int, object]:
        return 200, {"workload": state.identity.workload, "config_version": state.config.version,
                     "handed_over": sidecar.mitmproxy.handed_over, **telemetry.stats()}

    def prometheus() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(telemetry.registry)

    return [
        serve(HEALTH_PORT, {HEALTH_PATH: json_route(ready)}),
        serve(ADMIN_PORT, {"/config_dump": json_route(config_dump), "/stats": json_route(stats),
                           HEALTH_PATH: json_route(ready)}),
        serve(METRICS_PORT, {"/stats/prometheus": prometheus, "/metrics": prometheus}),
    ]
