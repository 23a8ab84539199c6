"""The sidecar's own HTTP endpoints, on Istio's ports.

15020 `/healthz/ready` (ready once the proxy listens and a config is loaded),
15000 `/config_dump` and `/stats` (JSON, read by meshcli) and `/tap` (a stream of JSON
lines, one per finished request, for `meshcli tap`), 15090 `/stats/prometheus`.
They run on threads with the standard library's HTTP server: they are low-traffic
and must answer even when the proxy's event loop is busy; a tap reader's thread is
the only one that writes its stream, so a slow reader slows nothing else.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Mapping
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshproxy.config import ADMIN_PORT, HEALTH_PATH, HEALTH_PORT, METRICS_PORT, TAP_PATH
from meshproxy.policy.tap import DEFAULT_MAX_RPS

Route = Callable[[], tuple[int, str, bytes]]  # (status, content type, body)
# A stream: the request's query -> (status, content type, pieces written until they end or the reader leaves).
Stream = Callable[[Mapping[str, str]], tuple[int, str, Iterator[bytes]]]
LINE = json.JSONEncoder(separators=(",", ":"))
TAP_HEARTBEAT_SECONDS = 1.0  # an idle tap still writes (a newline): a reader that left is noticed


def json_route(produce: Callable[[], tuple[int, object]]) -> Route:
    def route() -> tuple[int, str, bytes]:
        status, body = produce()
        return status, "application/json", json.dumps(body, indent=1).encode()
    return route


def serve(port: int, routes: dict[str, Route], host: str = "0.0.0.0",
          streams: dict[str, Stream] | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            route, stream = routes.get(path), (streams or {}).get(path)
            if stream is not None:
                status, ctype, body = stream(dict(parse_qsl(query)))
            elif route is not None:
                status, ctype, body = route()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()  # HTTP/1.0: the stream ends when the connection does
            try:
                for piece in body:
                    self.wfile.write(piece)
                    self.wfile.flush()
            except OSError:
                pass  # the reader left
            finally:
                body.close()

        def log_message(self, format: str, *args) -> None:
            pass  # health probes every second would drown the access log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"admin-{port}", daemon=True).start()
    return server


def tap_lines(tap, max_rps: int = DEFAULT_MAX_RPS) -> Iterator[bytes]:
    """The /tap stream of a policy.tap.Tap: a JSON line per request as it finishes, a
    `{"dropped": n, "overRate": m}` line when this reader lost requests (cumulative counts:
    it fell behind, or they were beyond max_rps), a bare newline when idle."""
    reader = tap.open(max_rps)
    lost = (0, 0)
    try:
        while True:
            lines = [LINE.encode(tap.record(exchange)) + "\n" for exchange in reader.take(TAP_HEARTBEAT_SECONDS)]
            if (reader.dropped, reader.over_rate) != lost:
                lost = reader.dropped, reader.over_rate
                lines.append(LINE.encode({"dropped": lost[0], "overRate": lost[1]}) + "\n")
            yield "".join(lines).encode() or b"\n"
    finally:
        tap.close(reader)


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
        exporter = sidecar.tracing.exporter
        return 200, {"workload": state.identity.workload, "config_version": state.config.version,
                     "handed_over": sidecar.mitmproxy.handed_over, **telemetry.stats(),
                     "spans": exporter.stats() if exporter is not None else None}

    def prometheus() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(telemetry.registry)

    def tap(query: Mapping[str, str]) -> tuple[int, str, Iterator[bytes]]:
        try:
            max_rps = int(query.get("maxRps", DEFAULT_MAX_RPS))
        except ValueError:
            max_rps = 0
        if max_rps <= 0:
            return 400, "text/plain", iter([b"maxRps: expected a whole number above 0\n"])
        return 200, "application/x-ndjson", tap_lines(sidecar.tap, max_rps)

    return [
        serve(HEALTH_PORT, {HEALTH_PATH: json_route(ready)}),
        serve(ADMIN_PORT, {"/config_dump": json_route(config_dump), "/stats": json_route(stats),
                           HEALTH_PATH: json_route(ready)}, streams={TAP_PATH: tap}),
        serve(METRICS_PORT, {"/stats/prometheus": prometheus, "/metrics": prometheus}),
    ]
