"""The sidecar's own HTTP endpoints, on Istio's ports.

15020 `/healthz/ready` (ready once the proxy listens and a config is loaded),
15000 `/config_dump` and `/stats` (JSON, read by meshcli) and `/tap` (a stream of JSON
lines, one per finished request, for `meshcli tap`), 15090 `/stats/prometheus`.
They run on threads with the standard library's HTTP server: they are low-traffic
and must answer even when the proxy's event loop is busy; a tap reader's thread is
the only one that writes its stream, so a slow reader slows nothing else.

`/stats?window=S` adds `earlier`: the counters as they were about S seconds ago, so
`meshcli stat`, `graph` and `top` can tell rates over a window from this one answer
(the sidecar keeps a snapshot every SNAPSHOT_SECONDS, for HISTORY_SECONDS).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Mapping
from urllib.parse import parse_qs, parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshproxy.config import ADMIN_PORT, HEALTH_PATH, HEALTH_PORT, METRICS_PORT, TAP_PATH
from meshproxy.policy.tap import DEFAULT_MAX_RPS

SNAPSHOT_SECONDS = 5.0
HISTORY_SECONDS = 600.0

Route = Callable[[dict[str, list[str]]], tuple[int, str, bytes]]  # the query -> (status, content type, body)
# A stream: the request's query -> (status, content type, pieces written until they end or the reader leaves).
Stream = Callable[[Mapping[str, str]], tuple[int, str, Iterator[bytes] | bytes]]  # bytes: a plain answer
LINE = json.JSONEncoder(separators=(",", ":"))
TAP_HEARTBEAT_SECONDS = 1.0  # an idle tap still writes (a newline): a reader that left is noticed


def json_route(produce: Callable[..., tuple[int, object]], takes_query: bool = False) -> Route:
    def route(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        status, body = produce(query) if takes_query else produce()
        return status, "application/json", json.dumps(body, indent=1).encode()
    return route


class History:
    """Snapshots of a counters function, one every `every` seconds, the last `keep` seconds of them."""

    def __init__(self, snapshot: Callable[[], dict], every: float = SNAPSHOT_SECONDS,
                 keep: float = HISTORY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.snapshot, self.every, self.clock = snapshot, every, clock
        self.snapshots: collections.deque[tuple[float, dict]] = collections.deque(maxlen=int(keep / every) + 2)
        self._stop = threading.Event()

    def take(self) -> None:
        self.snapshots.append((self.clock(), self.snapshot()))

    def start(self) -> None:
        def run() -> None:
            while True:
                self.take()
                if self._stop.wait(self.every):
                    return
        threading.Thread(target=run, name="stats-history", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def at(self, seconds: float) -> tuple[float, dict] | None:
        """(age in seconds, counters) of the newest snapshot at least `seconds` old, else the oldest."""
        now = self.clock()
        kept = list(self.snapshots)
        older = [(now - taken, counters) for taken, counters in kept if now - taken >= seconds]
        if older:
            return older[-1]
        return (now - kept[0][0], kept[0][1]) if kept else None


def serve(port: int, routes: dict[str, Route], host: str = "0.0.0.0",
          streams: dict[str, Stream] | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            route, stream = routes.get(path), (streams or {}).get(path)
            if stream is not None:
                status, ctype, body = stream(dict(parse_qsl(query)))
            elif route is not None:
                status, ctype, body = route(parse_qs(query))
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

    history = History(telemetry.snapshot)
    history.start()

    def stats(query: dict[str, list[str]]) -> tuple[int, object]:
        exporter = sidecar.tracing.exporter
        body = {"workload": state.identity.workload, "config_version": state.config.version,
                "handed_over": sidecar.mitmproxy.handed_over, **telemetry.stats(),
                "spans": exporter.stats() if exporter is not None else None}
        if "window" in query:
            try:
                seconds = float(query["window"][0])
            except ValueError:
                return 400, {"error": f"window: expected seconds, got {query['window'][0]!r}"}
            earlier = history.at(seconds)
            if earlier is not None:
                body["earlier"] = {"age_s": round(earlier[0], 3), **telemetry.rows(earlier[1])}
        return 200, body

    def prometheus(_query) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(telemetry.registry)

    def tap(query: Mapping[str, str]) -> tuple[int, str, Iterator[bytes]]:
        try:
            max_rps = int(query.get("maxRps", DEFAULT_MAX_RPS))
        except ValueError:
            max_rps = 0
        if max_rps <= 0:
            return 400, "text/plain", b"maxRps: expected a whole number above 0\n"
        return 200, "application/x-ndjson", tap_lines(sidecar.tap, max_rps)

    return [
        serve(HEALTH_PORT, {HEALTH_PATH: json_route(ready)}),
        # Inside the pod only (meshcli reads it through `docker exec`, as istioctl does): /tap
        # and /config_dump show every request and rule, which no other container may read.
        serve(ADMIN_PORT, {"/config_dump": json_route(config_dump), "/stats": json_route(stats, takes_query=True),
                           HEALTH_PATH: json_route(ready)}, host="127.0.0.1", streams={TAP_PATH: tap}),
        serve(METRICS_PORT, {"/stats/prometheus": prometheus, "/metrics": prometheus}),
    ]
