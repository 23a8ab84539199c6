"""Telemetry: Istio-named metrics, JSON stats and the JSON access log.

policy/telemetry.py directly (record() on Exchanges, the TCP counters, stats()), then on
the wire through the fast path (one hop through two sidecars, pooled connections, a raw
TCP relay), then through the mitmproxy adapter (flows and TCP flows).
"""

import asyncio
import io
import json
import time

import pytest
from mitmproxy import eventsequence, tcp
from mitmproxy.test import taddons, tflow, tutils

from http_backends import Backend
from meshproxy.config import MeshState
from meshproxy.exchange import INBOUND, OUTBOUND
from meshproxy.outlier import Outliers
from meshproxy.policy.access_log import LINE_ENCODER, MAX_PENDING_LINES, AccessLog
from meshproxy.policy.routing import Router
from meshproxy.policy.telemetry import TCP_LABELS, Telemetry
from sidecar_kit import (PAYMENT, V1_HOST, V2_HOST, WEB, Adapters, EchoServer, RunningSidecar, exchange_of, flow_to,
                         handover_mode, inbound, mesh_state, on_loop, outbound, payment, payment_state, tcp_exchange,
                         until)

SERVICES = {"payment": payment(None, (("v1", "payment-v1"), ("v2", "payment-v2")))}
LOG_FIELDS = {"kind", "direction", "workload", "source", "destination_workload", "destination_service",
              "destination_version", "method", "authority", "path", "protocol", "status", "error",
              "duration_ms", "time", "response_flags", "route", "attempts", "start_time", "source_principal",
              "connection_security_policy", "request_bytes", "response_bytes", "trace_id", "retries"}
OUTBOUND_LABELS = dict(reporter="source", source_workload="web-v1", destination_workload="payment-v1",
                       destination_service="payment", destination_version="v1", response_code="200",
                       request_protocol="http", response_flags="-")
INBOUND_LABELS = dict(reporter="destination", source_workload="web-v1", destination_workload="payment-v1",
                      destination_service="payment", destination_version="v1", response_code="200",
                      request_protocol="http", response_flags="-")


def sample_value(registry, name: str, labels: dict) -> float | None:
    """The sum of the samples `name` whose labels include `labels`; None when there is none."""
    values = [s.value for metric in registry.collect() for s in metric.samples
              if s.name == name and labels.items() <= s.labels.items()]
    return sum(values) if values else None


def rows(stats_rows: list[dict], labels: dict, value: str = "count") -> list[dict]:
    """Stats rows cut to the keys of `labels` and the value."""
    return [{key: row[key] for key in (*labels, value)} for row in stats_rows]


class Recorder:
    """A Router and Telemetry on one sidecar's state; record() finishes an Exchange."""

    def __init__(self, identity=WEB, services=None) -> None:
        self.state = mesh_state(SERVICES if services is None else services, identity=identity)
        self.router = Router(self.state)
        self.log = io.StringIO()
        self.telemetry = Telemetry(self.state)
        self.access_log = AccessLog(self.state, self.log)

    def record(self, exchange, status=200, duration=0.003, attempts=1, error=None, flags=()):
        exchange.status, exchange.error = status, error
        exchange.attempts = attempts if exchange.route is not None else exchange.attempts
        exchange.flags += flags
        exchange.ended = exchange.started + duration
        self.telemetry.record(exchange)
        self.access_log.record(exchange)
        return exchange

    def out(self, **kwargs):
        request = {k: kwargs.pop(k) for k in ("authority", "path", "method", "headers") if k in kwargs}
        return self.record(outbound(self.router, **request)[0], **kwargs)

    def count(self, **labels) -> float | None:
        return self.sample("istio_requests_total", **labels)

    def sample(self, name: str, **labels) -> float | None:
        return sample_value(self.telemetry.registry, name, labels)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


# -- the policy ------------------------------------------------------------------------------

def test_outbound_request_is_counted_by_the_source():
    web = Recorder()

    web.out()
    web.out()  # round robin: the second goes to v2

    assert web.count(**OUTBOUND_LABELS) == 1
    assert web.count(**{**OUTBOUND_LABELS, "destination_workload": "payment-v2", "destination_version": "v2"}) == 1


def test_inbound_request_is_counted_by_the_destination():
    payment_side = Recorder(PAYMENT)

    payment_side.record(inbound(payment_side.router, "web-v1"))

    assert payment_side.count(**INBOUND_LABELS) == 1
    assert payment_side.count(**OUTBOUND_LABELS) is None


def test_call_outside_the_mesh():
    web = Recorder()

    web.out(authority="example.com:443")

    assert web.count(reporter="source", source_workload="web-v1", destination_workload="example.com",
                     destination_service="example.com", destination_version="unknown",
                     response_code="200", request_protocol="http", response_flags="-") == 1
    assert web.log_lines()[0]["route"] is None and web.log_lines()[0]["attempts"] is None


def test_grpc_status_and_flags_are_labels():
    web = Recorder()
    grpc = outbound(web.router)[0]
    grpc.grpc = True

    web.record(grpc)
    web.out(status=503, flags=["UF"])

    assert web.count(**{**OUTBOUND_LABELS, "request_protocol": "grpc"}) == 1
    assert web.count(**{**OUTBOUND_LABELS, "destination_workload": "payment-v2", "destination_version": "v2",
                        "response_code": "503", "response_flags": "UF"}) == 1


def test_a_failed_request_counts_code_0():
    web = Recorder()

    web.out(status=0, error="connection reset")

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "0"}) == 1
    [entry] = web.log_lines()
    assert (entry["status"], entry["error"]) == (0, "connection reset")


def test_duration_histogram():
    web = Recorder()

    web.out(duration=3.0)

    assert web.sample("istio_request_duration_milliseconds_sum", **OUTBOUND_LABELS) == pytest.approx(3000)
    assert web.sample("istio_request_duration_milliseconds_bucket", **OUTBOUND_LABELS, le="2500.0") == 0
    assert web.sample("istio_request_duration_milliseconds_bucket", **OUTBOUND_LABELS, le="5000.0") == 1


def test_access_log_lines_are_json():
    web = Recorder()

    web.out(duration=3.0)
    web.out(status=0, error="error")

    first, second = web.log_lines()
    assert set(first) == LOG_FIELDS
    assert {k: v for k, v in first.items() if k != "time"} == {
        "kind": "http", "direction": "outbound", "workload": "web-v1", "source": "web-v1",
        "destination_workload": "payment-v1", "destination_service": "payment", "destination_version": "v1",
        "method": "GET", "authority": "payment:8080", "path": "/pay", "protocol": "HTTP/1.1",
        "status": 200, "error": None, "duration_ms": 3000.0,
        "response_flags": "-", "route": "default", "attempts": 1, "retries": 0,
        "start_time": first["start_time"], "source_principal": None, "connection_security_policy": "none",
        "request_bytes": 0, "response_bytes": 0, "trace_id": None,
    }
    assert first["start_time"].endswith("Z")
    assert isinstance(first["time"], float)
    assert (second["destination_workload"], second["status"]) == ("payment-v2", 0)


def test_access_log_line_escapes_what_the_request_carries():
    web = Recorder()

    web.out(path='/a"b\\c\x01\u00e9?q=\u4e2d', authority="payment:8080", error='refused: "x"\n')

    [line] = web.log.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["path"] == '/a"b\\c\x01\u00e9?q=\u4e2d'
    assert entry["error"] == 'refused: "x"\n'
    assert line.isascii()  # as json.dumps writes it: non-ASCII and controls escaped
    assert line == LINE_ENCODER.encode(entry)  # the same JSON the encoder writes, field for field


def test_inbound_access_log():
    payment_side = Recorder(PAYMENT)

    payment_side.record(inbound(payment_side.router, "web-v1"))

    [entry] = payment_side.log_lines()
    assert (entry["direction"], entry["workload"], entry["source"], entry["destination_workload"]) == (
        "inbound", "payment-v1", "web-v1", "payment-v1")


@on_loop
async def test_access_log_lines_are_batched_and_written_within_the_flush_interval():
    web = Recorder()
    web.access_log.flush_interval = 0.05

    web.out()
    web.out()
    assert web.log_lines() == []  # held: one write for the batch, not one per request
    assert await until(lambda: len(web.log_lines()) == 2, timeout=1.0)

    web.out()
    web.access_log.flush()  # what the sidecar does when it stops: nothing is lost
    assert len(web.log_lines()) == 3


@on_loop
async def test_a_full_batch_is_written_at_once():
    web = Recorder()
    web.access_log.flush_interval = 60.0

    for _ in range(MAX_PENDING_LINES):
        web.out()
    assert len(web.log_lines()) == MAX_PENDING_LINES


def test_access_log_can_be_off():
    state = MeshState(WEB)
    telemetry = Telemetry(state)
    exchange = outbound(Router(state))[0]
    exchange.status = 200

    telemetry.record(exchange)

    assert sample_value(telemetry.registry, "istio_requests_total", {
        **OUTBOUND_LABELS, "destination_workload": "payment", "destination_version": "unknown"}) == 1


def test_retries_are_attempts_not_requests():
    web = Recorder()

    web.out(status=503, attempts=3, flags=["URX"])
    web.out()  # v2, one try

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "503", "response_flags": "URX"}) == 1
    assert web.telemetry.stats()["routes"] == [
        {"destination_service": "payment", "route": "default", "requests": 2, "attempts": 4, "retries": 2}]
    first = web.log_lines()[0]
    assert (first["route"], first["response_flags"], first["attempts"]) == ("default", "URX", 3)


def test_a_fault_answered_locally_made_no_attempt():
    web = Recorder()

    web.out(status=503, attempts=0, flags=["FI"])

    assert web.log_lines()[0]["attempts"] == 0
    assert web.telemetry.stats()["routes"][0]["attempts"] == 0


def test_mirrored_copies_are_counted():
    web = Recorder()
    exchange = outbound(web.router)[0]
    exchange.mirrored = "v2"

    web.record(exchange)

    assert web.telemetry.stats()["mirrored"] == [
        {"destination_service": "payment", "destination_version": "v2", "count": 1}]


def test_stats_json():
    web = Recorder()
    for _ in range(3):
        web.out()
    labels = web.telemetry.tcp_labels(OUTBOUND, "10.0.0.9:5432")
    web.telemetry.tcp_opened(labels)
    web.telemetry.connection_opened("payment-v1", 8080)
    web.telemetry.connection_opened("payment-v1", 8080)

    stats = json.loads(json.dumps(web.telemetry.stats()))

    assert sorted(stats) == ["authz_denied", "durations", "faults", "mirrored", "outliers", "overflows", "paths",
                             "requests", "routes", "tcp", "upstream_connections"]
    assert sorted((r["destination_workload"], r["count"]) for r in stats["requests"]) == [
        ("payment-v1", 2), ("payment-v2", 1)]
    assert stats["requests"][0]["reporter"] == "source"
    assert rows(stats["tcp"], TCP_OUT, "value") == [{**TCP_OUT, "value": 1}]
    assert stats["tcp"][0]["metric"] == "istio_tcp_connections_opened_total"
    assert stats["upstream_connections"] == [{"destination": "payment-v1:8080", "opened": 2}]


def test_stats_when_nothing_happened():
    assert Telemetry(MeshState(WEB)).stats() == {
        "requests": [], "durations": [], "tcp": [], "routes": [], "mirrored": [], "upstream_connections": [],
        "faults": [], "overflows": [], "paths": [], "authz_denied": [], "outliers": {}}


def test_stats_json_has_a_latency_histogram_per_label_set():
    web = Recorder()
    for duration in (0.002, 0.2, 0.02):
        web.out(duration=duration)

    rows = json.loads(json.dumps(web.telemetry.stats()))["durations"]

    assert sorted((r["destination_workload"], r["count"]) for r in rows) == [("payment-v1", 2), ("payment-v2", 1)]
    for row in rows:
        bounds = [bound for bound, _ in row["buckets"]]
        counts = [n for _, n in row["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        assert counts == sorted(counts) and counts[-1] == row["count"]  # cumulative, like Prometheus
    v1 = next(r for r in rows if r["destination_workload"] == "payment-v1")
    assert v1["sum_ms"] == pytest.approx(22, abs=0.01)


def test_outliers_are_in_the_stats():
    state = payment_state(None, (("v1", "payment-v1"),), outlierDetection={"consecutive5xxErrors": 1})
    outliers = Outliers(state)
    outliers.services["payment"].record("payment-v1", 503)

    stats = Telemetry(state, outliers=outliers).stats()

    assert [e["version"] for e in stats["outliers"]["payment"]["ejected"]] == ["v1"]


TCP_OUT = dict(reporter="source", source_workload="web-v1", destination_workload="10.0.0.9:5432",
               destination_service="10.0.0.9:5432")
TCP_IN = dict(reporter="destination", source_workload="unknown", destination_workload="payment-v1",
              destination_service="payment")


@pytest.mark.parametrize(("identity", "direction", "labels"), [(WEB, OUTBOUND, TCP_OUT), (PAYMENT, INBOUND, TCP_IN)])
def test_tcp_bytes_and_connections_are_counted(identity, direction, labels):
    side = Recorder(identity)
    telemetry = side.telemetry
    connection = telemetry.tcp_labels(direction, "10.0.0.9:5432")

    telemetry.tcp_opened(connection)
    telemetry.tcp_bytes(connection, True, 5)
    telemetry.tcp_bytes(connection, False, 7)
    telemetry.tcp_bytes(connection, True, 3)
    telemetry.tcp_closed(connection)
    side.access_log.tcp(direction, "10.0.0.9:5432", time.time() - 0.5, 8, 7, "connection refused", "FI")

    assert side.sample("istio_tcp_connections_opened_total", **labels) == 1
    assert side.sample("istio_tcp_received_bytes_total", **labels) == 8
    assert side.sample("istio_tcp_sent_bytes_total", **labels) == 7
    assert side.sample("istio_tcp_connections_closed_total", **labels) == 1
    [entry] = side.log_lines()
    assert {k: v for k, v in entry.items() if k not in ("time", "start_time", "duration_ms")} == {
        "kind": "tcp", "direction": direction, "workload": identity.workload,
        "source": "unknown" if direction == INBOUND else identity.workload,
        "destination_workload": labels["destination_workload"], "destination": "10.0.0.9:5432",
        "received_bytes": 8, "sent_bytes": 7, "response_flags": "FI", "error": "connection refused",
        "source_principal": None, "connection_security_policy": "none"}
    assert 450 <= entry["duration_ms"] < 5000


def test_metric_names_follow_istio():
    names = {metric.name for metric in Recorder().telemetry.registry.collect()}

    assert names == {"istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes",
                     "istio_response_bytes", "istio_tcp_connections_opened",
                     "istio_tcp_connections_closed", "istio_tcp_received_bytes", "istio_tcp_sent_bytes",
                     # meshcli's own, beside Istio's
                     "meshcli_route_requests", "meshcli_upstream_attempts", "meshcli_retries",
                     "meshcli_faults_injected", "meshcli_circuit_breaker_overflows", "meshcli_outlier_ejections",
                     "meshcli_mirrored_requests", "meshcli_upstream_connections_opened", "meshcli_authz_denied"}


def test_the_full_istio_label_set_on_both_sides():
    # The caller's app and version come from the compiled config: every workload of the project is in it.
    services = {**SERVICES, "web": payment(None, (("v1", "web-v1"),))}
    web, payment_side = Recorder(services=services), Recorder(PAYMENT, services=services)
    web.out()
    payment_side.record(inbound(payment_side.router, "web-v1"))

    [outbound_row] = web.telemetry.stats()["requests"]
    [inbound_row] = payment_side.telemetry.stats()["requests"]

    hop = {"source_workload": "web-v1", "source_workload_namespace": "shop", "source_principal": "unknown",
           "source_app": "web", "source_version": "v1", "source_canonical_service": "web",
           "destination_workload": "payment-v1", "destination_workload_namespace": "shop",
           "destination_principal": "unknown", "destination_app": "payment", "destination_version": "v1",
           "destination_service": "payment", "destination_service_name": "payment",
           "destination_service_namespace": "shop", "destination_canonical_service": "payment",
           "request_protocol": "http", "response_code": "200", "grpc_response_status": "",
           "response_flags": "-", "connection_security_policy": "none", "count": 1}
    assert outbound_row == {"reporter": "source", **hop}
    assert inbound_row == {"reporter": "destination", **hop}


def test_mutual_tls_names_both_principals():
    web = Recorder()
    exchange = outbound(web.router)[0]
    exchange.security_policy = "mutual_tls"

    web.record(exchange)

    assert web.count(connection_security_policy="mutual_tls", source_principal="spiffe://cluster.local/ns/shop/sa/web",
                     destination_principal="spiffe://cluster.local/ns/shop/sa/payment") == 1


def test_an_unknown_caller_has_unknown_source_labels():
    payment_side = Recorder(PAYMENT)

    payment_side.record(inbound(payment_side.router, None))

    assert payment_side.count(reporter="destination", source_workload="unknown", source_app="unknown",
                              source_workload_namespace="unknown", destination_app="payment") == 1


def test_request_and_response_sizes_are_histograms():
    web = Recorder()
    exchange = outbound(web.router)[0]
    exchange.request_bytes, exchange.response_bytes = 100, 5000

    web.record(exchange)

    assert web.sample("istio_request_bytes_sum", reporter="source") == 100
    assert web.sample("istio_request_bytes_bucket", reporter="source", le="10.0") == 0
    assert web.sample("istio_request_bytes_bucket", reporter="source", le="100.0") == 1  # le: at most the bound
    assert web.sample("istio_request_bytes_bucket", reporter="source", le="+Inf") == 1
    assert web.sample("istio_request_bytes_count", reporter="source") == 1
    assert web.sample("istio_response_bytes_sum", reporter="source") == 5000
    assert web.sample("istio_response_bytes_bucket", reporter="source", le="1000.0") == 0


def test_mesh_counters_for_retries_faults_and_overflows():
    web = Recorder()

    web.out(status=503, attempts=3, flags=["URX"])
    web.out(status=503, attempts=0, flags=["DI", "FI"])
    web.out(status=503, attempts=0, flags=["UO"])

    assert web.sample("meshcli_retries_total", destination_service="payment", route="default") == 2
    assert web.sample("meshcli_faults_injected_total", destination_service="payment", kind="delay") == 1
    assert web.sample("meshcli_faults_injected_total", destination_service="payment", kind="abort") == 1
    assert web.sample("meshcli_circuit_breaker_overflows_total", destination_service="payment") == 1
    stats = web.telemetry.stats()
    assert sorted((f["kind"], f["count"]) for f in stats["faults"]) == [("abort", 1), ("delay", 1)]
    assert stats["overflows"] == [{"destination_service": "payment", "count": 1}]


def test_outlier_ejections_are_counted_at_scrape_time():
    state = payment_state(None, (("v1", "payment-v1"), ("v2", "payment-v2")),
                          outlierDetection={"consecutive5xxErrors": 1, "maxEjectionPercent": 100})
    outliers = Outliers(state)
    telemetry = Telemetry(state, outliers=outliers)
    outliers.services["payment"].record("payment-v2", 503)

    assert sample_value(telemetry.registry, "meshcli_outlier_ejections_total",
                        {"destination_service": "payment", "destination_version": "v2"}) == 1


def test_inbound_requests_are_counted_per_path_and_bounded(monkeypatch):
    import meshproxy.policy.telemetry as module

    monkeypatch.setattr(module, "MAX_PATHS", 3)
    payment_side = Recorder(PAYMENT)
    for path in ("/pay?id=1", "/pay?id=2", "/refund", "/a", "/b"):
        exchange = inbound(payment_side.router, "web-v1")
        exchange.path = path
        payment_side.record(exchange, status=503 if path == "/refund" else 200, duration=0.01)

    paths = {(p["source"], p["path"]): (p["count"], p["errors"]) for p in payment_side.telemetry.stats()["paths"]}
    assert paths == {("web-v1", "/pay"): (2, 0), ("web-v1", "/refund"): (1, 1), ("web-v1", "/a"): (1, 0),
                     ("(other)", "(other)"): (1, 0)}


class Addresses:
    """Stands in for resolver.ServiceAddresses: fixed IP -> workload."""

    def __init__(self, by_ip: dict[str, str]) -> None:
        self.by_ip = by_ip

    def service_at(self, ip: str) -> str | None:
        return self.by_ip.get(ip)


def test_tcp_peers_are_named_by_their_address():
    services = {**SERVICES, "web": payment(None, (("v1", "web-v1"),))}
    addresses = Addresses({"10.0.0.5": "web-v1", "10.0.0.7": "payment-v2"})
    web = Telemetry(mesh_state(services), addresses=addresses)
    payment_side = Telemetry(mesh_state(services, identity=PAYMENT), addresses=addresses)

    outbound_labels = dict(zip(TCP_LABELS, web.tcp_labels(OUTBOUND, "10.0.0.7:5432")))
    inbound_labels = dict(zip(TCP_LABELS, payment_side.tcp_labels(INBOUND, "10.0.0.6:5432", peer_ip="10.0.0.5")))
    stranger = dict(zip(TCP_LABELS, payment_side.tcp_labels(INBOUND, "10.0.0.6:5432", peer_ip="192.0.2.1")))

    assert (outbound_labels["destination_workload"], outbound_labels["destination_app"],
            outbound_labels["destination_version"]) == ("payment-v2", "payment", "v2")
    assert (inbound_labels["source_workload"], inbound_labels["source_app"], inbound_labels["source_version"],
            inbound_labels["source_workload_namespace"]) == ("web-v1", "web", "v1", "shop")
    assert stranger["source_workload"] == stranger["source_app"] == "unknown"


# -- on the wire, through the fast path ------------------------------------------------------

@on_loop
async def test_one_hop_is_seen_by_both_sidecars():
    async with Backend() as app:
        # web calls payment:P; its sidecar sends it to payment-v1 (127.0.0.2:P), whose
        # sidecar's inbound listener passes it to the app behind it (127.0.0.1:P)
        async with RunningSidecar(payment_state(identity=PAYMENT), V2_HOST, inbound_port=app.port) as payment_side, \
                RunningSidecar(payment_state(versions=(("v1", V2_HOST),))) as web:
            payment_side.to(app.port, V1_HOST)
            reply = await web.call(app.port)

    assert reply.status == 200
    port_labels = {"destination_workload": V2_HOST}
    assert rows(web.stats()["requests"], OUTBOUND_LABELS) == [{**OUTBOUND_LABELS, **port_labels, "count": 1}]
    assert rows(payment_side.stats()["requests"], INBOUND_LABELS) == [{**INBOUND_LABELS, "count": 1}]
    assert "x-meshcli-source" not in app.requests[0].headers


@on_loop
async def test_pooled_connections_are_counted_once():
    async with Backend() as v1, RunningSidecar(payment_state()) as web:
        for _ in range(3):
            await web.call(v1.port)

    assert v1.connections == 1
    assert web.stats()["upstream_connections"] == [{"destination": f"{V1_HOST}:{v1.port}", "opened": 1}]
    assert [r["count"] for r in web.stats()["requests"]] == [3]


@on_loop
async def test_a_raw_tcp_relay_is_counted():
    # The destination's IP is a mesh workload's (payment-v1's host resolves to it): named by it.
    async with EchoServer() as echo, RunningSidecar(payment_state()) as web:
        await until(lambda: web.sidecar.telemetry.addresses.service_at(V1_HOST) == V1_HOST)
        web.to(echo.port, V1_HOST)
        received, _, _, _ = await tcp_exchange(V1_HOST, web.outbound_port, b"\x00hello", 6)
        await until(lambda: web.log_lines())

    labels = {"reporter": "source", "source_workload": "web-v1", "source_app": "web", "destination_workload": V1_HOST,
              "destination_service": "payment", "destination_app": "payment", "destination_version": "v1",
              "destination_workload_namespace": "shop", "connection_security_policy": "none"}
    tcp_rows = {row["metric"]: row["value"] for row in web.stats()["tcp"] if row["destination_workload"] == V1_HOST}
    assert received == b"\x00hello"
    assert tcp_rows == {"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
                        "istio_tcp_received_bytes_total": 6, "istio_tcp_sent_bytes_total": 6}
    assert sample_value(web.telemetry.registry, "istio_tcp_sent_bytes_total", labels) == 6


# -- through the mitmproxy adapter -------------------------------------------------------------

class Flows:
    """The Routing and Telemetry adapters of one sidecar, fed flows through mitmproxy's test context."""

    def __init__(self, identity=WEB) -> None:
        self.adapters = Adapters(mesh_state(SERVICES, identity=identity))
        self.routing, self.telemetry = self.adapters.routing, self.adapters.telemetry
        self.registry = self.adapters.sidecar.telemetry.registry

    def run(self, flow) -> None:
        async def cycle():
            with taddons.context(self.routing, self.telemetry) as tctx:
                for hook in eventsequence.iterate(flow):
                    for addon in (self.routing, self.telemetry):
                        await tctx.master.addons.invoke_addon(addon, hook)
        asyncio.run(cycle())

    def count(self, **labels) -> float | None:
        return sample_value(self.registry, "istio_requests_total", labels)

    def sample(self, name: str, **labels) -> float | None:
        return sample_value(self.registry, name, labels)


def http_flow(direction=OUTBOUND, headers=(), resp=True, err=False):
    flow = flow_to(direction=direction, headers=headers)
    if resp is not True:
        flow.response = resp or None
    else:
        flow.response = tutils.tresp()
    if err:
        flow.error = tflow.terr()
    return flow


def test_adapter_counts_a_flow_mitmproxy_forwarded_as_one_attempt():
    web = Flows()

    web.run(http_flow())  # treq starts at 946681200, tresp ends at 946681203

    assert web.count(**OUTBOUND_LABELS) == 1
    assert web.sample("istio_request_duration_milliseconds_sum", **OUTBOUND_LABELS) == pytest.approx(3000)
    entry = web.adapters.log_lines()[0]
    assert (entry["attempts"], entry["route"], entry["duration_ms"]) == (1, "default", 3000.0)


def test_adapter_inbound_flow_is_counted_by_the_destination():
    payment_side = Flows(PAYMENT)

    payment_side.run(http_flow(INBOUND, headers=((b"x-meshcli-source", b"web-v1"),)))

    assert payment_side.count(**INBOUND_LABELS) == 1


def test_adapter_error_without_response_counts_code_0():
    web = Flows()

    web.run(http_flow(resp=False, err=True))

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "0"}) == 1
    assert web.adapters.log_lines()[0]["error"] == "error"


def test_adapter_error_after_response_headers_is_counted_once():
    # mitmproxy sets flow.response when headers arrive; if the body then fails it fires
    # error instead of response. That request failed and must still be counted.
    web = Flows()
    flow = http_flow(resp=False)
    web.run(flow)  # request hooks
    assert web.count(**OUTBOUND_LABELS) is None
    flow.response = tutils.tresp()
    flow.error = tflow.terr("peer closed connection")

    web.telemetry.error(flow)

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "0"}) == 1
    assert web.count(**OUTBOUND_LABELS) is None


def test_adapter_a_fault_answered_locally_made_no_attempt():
    web = Flows()
    flow = http_flow(resp=tutils.tresp(status_code=503))
    web.routing.requestheaders(flow)
    exchange_of(flow).flags.append("FI")

    web.telemetry.response(flow)

    assert web.adapters.log_lines()[0]["attempts"] == 0


def tcp_flow_on(direction: str) -> tcp.TCPFlow:
    flow = tflow.ttcpflow(messages=[])
    flow.client_conn.proxy_mode = handover_mode(direction)
    return flow


ADAPTER_TCP_OUT = dict(reporter="source", source_workload="web-v1", destination_workload="address:22",
                       destination_service="address:22")


def relay(telemetry, flow: tcp.TCPFlow, from_client: bool, data: bytes) -> None:
    """What mitmproxy's TCP layer does per chunk: append the message, then call the hook."""
    flow.messages.append(tcp.TCPMessage(from_client, data))
    telemetry.tcp_message(flow)


def test_adapter_tcp_bytes_and_connections_are_counted_and_messages_not_kept():
    web = Flows()
    flow = tcp_flow_on(OUTBOUND)

    web.telemetry.tcp_start(flow)
    relay(web.telemetry, flow, True, b"hello")
    relay(web.telemetry, flow, False, b"it's me")
    relay(web.telemetry, flow, True, b"bye")
    web.telemetry.tcp_end(flow)

    assert flow.messages == []
    assert web.sample("istio_tcp_connections_opened_total", **ADAPTER_TCP_OUT) == 1
    assert web.sample("istio_tcp_received_bytes_total", **ADAPTER_TCP_OUT) == 8
    assert web.sample("istio_tcp_sent_bytes_total", **ADAPTER_TCP_OUT) == 7
    assert web.sample("istio_tcp_connections_closed_total", **ADAPTER_TCP_OUT) == 1


def test_adapter_inbound_tcp_is_reported_by_the_destination():
    payment_side = Flows(PAYMENT)
    flow = tcp_flow_on(INBOUND)

    payment_side.run(flow)

    assert payment_side.sample("istio_tcp_connections_opened_total", **TCP_IN) == 1
    assert payment_side.sample("istio_tcp_connections_closed_total", **TCP_IN) == 1


def test_adapter_tcp_through_the_test_context():
    web = Flows()
    flow = tflow.ttcpflow()  # two messages: 5 bytes from the client, 7 from the server
    flow.client_conn.proxy_mode = handover_mode(OUTBOUND)

    web.run(flow)

    assert web.sample("istio_tcp_connections_opened_total", **ADAPTER_TCP_OUT) == 1
    assert web.sample("istio_tcp_received_bytes_total", **ADAPTER_TCP_OUT) == 5
    assert web.sample("istio_tcp_sent_bytes_total", **ADAPTER_TCP_OUT) == 7
    assert web.sample("istio_tcp_connections_closed_total", **ADAPTER_TCP_OUT) == 1


def test_adapter_tcp_end_and_error_close_the_connection_once_each():
    web = Flows()
    ended, failed = tcp_flow_on(OUTBOUND), tcp_flow_on(OUTBOUND)
    failed.error = tflow.terr("connection refused")

    web.telemetry.tcp_end(ended)
    web.telemetry.tcp_error(failed)

    assert web.sample("istio_tcp_connections_closed_total", **ADAPTER_TCP_OUT) == 2
    assert [(e["kind"], e["direction"], e["destination"], e["error"]) for e in web.adapters.log_lines()] == [
        ("tcp", "outbound", "address:22", None), ("tcp", "outbound", "address:22", "connection refused")]


def test_adapter_tcp_without_server_address():
    web = Flows()
    flow = tcp_flow_on(OUTBOUND)
    flow.server_conn.address = None

    web.telemetry.tcp_start(flow)

    assert web.sample("istio_tcp_connections_opened_total", **{
        **ADAPTER_TCP_OUT, "destination_workload": "unknown:0", "destination_service": "unknown:0"}) == 1
