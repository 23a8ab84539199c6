"""The sidecar's admin endpoints, served on free loopback ports."""

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshproxy import admin, config
from meshproxy.config import MeshState
from meshproxy.policy.telemetry import ISTIO_LABELS
from meshproxy.sidecar import Sidecar
from sidecar_kit import WEB, outbound

# Bypass any *_proxy settings: every call here targets loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CONFIG = config.parse(json.dumps({
    "schema": 2, "version": "abc123",
    "services": {"payment": {"versions": [{"name": "v1", "host": "payment-v1"}], "ports": [8080],
                             "loadBalancer": "random"}},
}))


def get(server, path: str) -> tuple[int, str, bytes]:
    port = server.server_address[1]
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


@pytest.fixture
def servers():
    """Shut down every server a test starts, whatever happens."""
    started = []
    yield started
    # shutdown() waits for serve_forever's next poll (up to 0.5 s): stop them all at once,
    # and wake each one with a connection so it sees the request at once
    stoppers = [threading.Thread(target=server.shutdown) for server in started]
    for stopper in stoppers:
        stopper.start()
    for server in started:
        socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=1).close()
    for stopper, server in zip(stoppers, started):
        stopper.join()
        server.server_close()


def test_serve_routes_and_404(servers):
    server = admin.serve(0, {"/hello": lambda _query: (201, "text/plain", b"hi\n")}, host="127.0.0.1")
    servers.append(server)

    assert get(server, "/hello") == (201, "text/plain", b"hi\n")
    assert get(server, "/hello?verbose=1") == (201, "text/plain", b"hi\n")
    assert get(server, "/nope") == (404, "text/plain", b"not found\n")
    assert get(server, "/hello/")[0] == 404


def test_json_route(servers):
    server = admin.serve(0, {"/j": admin.json_route(lambda: (503, {"ready": False}))}, host="127.0.0.1")
    servers.append(server)

    status, ctype, body = get(server, "/j")

    assert (status, ctype, json.loads(body)) == (503, "application/json", {"ready": False})


class Admin:
    """admin.start() on a real meshproxy.sidecar.Sidecar (its listener not started: the
    test says whether it listens)."""

    def __init__(self, servers, monkeypatch) -> None:
        # start() binds Istio's fixed ports; 0 lets each test get free ones.
        for name in ("HEALTH_PORT", "ADMIN_PORT", "METRICS_PORT"):
            monkeypatch.setattr(admin, name, 0)
        self.sidecar = Sidecar(MeshState(WEB))
        self.sidecar.access_log.stream = None
        self.state, self.telemetry = self.sidecar.state, self.sidecar.telemetry
        self.listening = False
        monkeypatch.setattr(self.sidecar.listener, "listening", lambda: self.listening)
        self.health, self.admin, self.metrics = admin.start(self.sidecar)
        servers.extend([self.health, self.admin, self.metrics])

    def record_request(self) -> None:
        if not self.state.loaded:
            self.state.apply(CONFIG)
        exchange, _ = outbound(self.sidecar.router, authority="payment:8080")
        exchange.status = 200
        self.telemetry.record(exchange)


@pytest.fixture
def sidecar(servers, monkeypatch):
    return Admin(servers, monkeypatch)


def ready(server) -> tuple[int, dict]:
    status, ctype, body = get(server, "/healthz/ready")
    assert ctype == "application/json"
    return status, json.loads(body)


def test_each_server_has_its_own_port(sidecar):
    ports = {s.server_address[1] for s in (sidecar.health, sidecar.admin, sidecar.metrics)}

    assert len(ports) == 3
    assert 0 not in ports


def test_the_admin_port_answers_inside_the_pod_only(sidecar):
    # /tap and /config_dump are for meshcli (through `docker exec`); health and metrics for probes and Prometheus.
    assert sidecar.admin.server_address[0] == "127.0.0.1"
    assert sidecar.health.server_address[0] == sidecar.metrics.server_address[0] == "0.0.0.0"


def test_ready_needs_a_listener_and_a_config(sidecar):
    assert ready(sidecar.health) == (503, {"ready": False, "listening": False, "config_loaded": False})

    sidecar.listening = True
    assert ready(sidecar.health) == (503, {"ready": False, "listening": True, "config_loaded": False})

    sidecar.state.apply(CONFIG)
    assert ready(sidecar.health) == (200, {"ready": True, "listening": True, "config_loaded": True})
    assert ready(sidecar.admin)[0] == 200  # the admin port answers the probe too

    sidecar.listening = False
    assert ready(sidecar.health)[0] == 503


def test_config_dump(sidecar):
    sidecar.state.apply(CONFIG)
    sidecar.state.last_error = "sidecar.json: not JSON"

    status, ctype, body = get(sidecar.admin, "/config_dump")

    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {
        "identity": {"project": "shop", "workload": "web-v1", "service": "web", "version": "v1"},
        "ready": False,  # a config, but no listener yet
        "config_version": "abc123",
        "generation": 0,
        "last_error": "sidecar.json: not JSON",
        "rejection": None,
        "tls": {"mode": "PERMISSIVE", "fingerprint": None, "roots": [], "principal":
                "spiffe://cluster.local/ns/shop/sa/web", "error": sidecar.sidecar.tls.error},  # no identity files here
        "config": json.loads(json.dumps(CONFIG.raw)),
    }


def test_config_dump_shows_a_rejection_when_the_state_keeps_one(sidecar):
    sidecar.state.apply(CONFIG)
    sidecar.state.rejection = {"version": "bad1", "error": "services.payment: unknown version 'v9'"}

    sidecar.listening = True
    dump = json.loads(get(sidecar.admin, "/config_dump")[2])

    assert dump["ready"] is True
    assert dump["rejection"] == {"version": "bad1", "error": "services.payment: unknown version 'v9'"}
    assert dump["config_version"] == "abc123"


def test_stats_json(sidecar):
    sidecar.state.apply(CONFIG)
    sidecar.record_request()

    status, ctype, body = get(sidecar.admin, "/stats")

    assert (status, ctype) == (200, "application/json")
    stats = json.loads(body)
    assert stats["workload"] == "web-v1"
    assert stats["config_version"] == "abc123"
    assert stats["handed_over"] == 0
    assert stats["tcp"] == [] and stats["upstream_connections"] == []
    [row] = stats["requests"]
    assert row.items() >= {
        "reporter": "source", "source_workload": "web-v1", "destination_workload": "payment-v1",
        "destination_service": "payment", "destination_version": "v1", "response_code": "200",
        "request_protocol": "http", "response_flags": "-", "count": 1}.items()
    assert [p["path"] for p in stats["paths"]] == []  # per path: inbound requests only


def test_prometheus(sidecar):
    status, ctype, body = get(sidecar.metrics, "/stats/prometheus")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert b"istio_requests_total{" not in body  # nothing recorded yet

    for _ in range(3):
        sidecar.record_request()
    text = get(sidecar.metrics, "/stats/prometheus")[2].decode()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    [requests] = families["istio_requests"].samples
    assert requests.value == 3 and set(requests.labels) == set(ISTIO_LABELS)
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        assert families[name].type == "histogram"
        buckets = [(float(s.labels["le"]), s.value) for s in families[name].samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == (float("inf"), 3)  # bounds and counts both rise
        [count] = [s.value for s in families[name].samples if s.name.endswith("_count")]
        assert count == 3
    assert get(sidecar.metrics, "/metrics")[2].decode() == text


def test_unknown_paths_are_404(sidecar):
    sidecar.listening = True
    sidecar.state.apply(CONFIG)  # so a 404 cannot be confused with "not ready"
    unknown = [("health", "/stats"), ("health", "/"), ("admin", "/stats/prometheus"), ("admin", "/healthz"),
               ("metrics", "/healthz/ready"), ("metrics", "/config_dump")]

    assert {(which, path): get(getattr(sidecar, which), path)[0] for which, path in unknown} == {
        key: 404 for key in unknown}


def test_stats_with_a_window_carry_the_counters_of_then(sidecar):
    sidecar.state.apply(CONFIG)
    sidecar.record_request()

    stats = json.loads(get(sidecar.admin, "/stats?window=60")[2])

    # The sidecar is younger than the window: "then" is its first snapshot, taken at start.
    assert stats["earlier"]["requests"] == [] and stats["earlier"]["age_s"] >= 0
    assert [row["count"] for row in stats["requests"]] == [1]
    assert "earlier" not in json.loads(get(sidecar.admin, "/stats")[2])
    assert get(sidecar.admin, "/stats?window=soon")[0] == 400


def test_history_answers_with_the_newest_snapshot_old_enough():
    now = [100.0]
    counter = iter(range(100))
    history = admin.History(lambda: {"n": next(counter)}, every=5, keep=20, clock=lambda: now[0])
    for _ in range(10):  # one every 5 s, from t=100 to t=145; 20 s of them kept (and two more)
        history.take()
        now[0] += 5
    # now t=150: snapshots kept from t=120 (n=4) to t=145 (n=9)
    assert history.at(12) == (15.0, {"n": 7})
    assert history.at(0) == (5.0, {"n": 9})
    assert history.at(600) == (30.0, {"n": 4})  # older than what is kept: the oldest
    assert admin.History(dict).at(5) is None
