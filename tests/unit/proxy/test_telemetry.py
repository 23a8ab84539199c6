"""Telemetry: Istio-named metrics, JSON stats and the JSON access log."""

import asyncio
import io
import json

import pytest
from mitmproxy import eventsequence, http, tcp
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from meshproxy import config
from meshproxy.addons import routing
from meshproxy.addons.resilience import META_ATTEMPTS
from meshproxy.addons.routing import Routing
from meshproxy.addons.telemetry import Telemetry
from meshproxy.config import Identity, MeshState
from meshproxy.outlier import Outliers

CONFIG = config.parse(json.dumps({
    "schema": 2,
    "version": "abc123",
    "services": {"payment": {"versions": [{"name": "v1", "host": "payment-v1"},
                                          {"name": "v2", "host": "payment-v2"}]}},
}))
WEB = Identity("shop", "web-v1", "web", "v1")
PAYMENT = Identity("shop", "payment-v1", "payment", "v1")
LOG_FIELDS = {"kind", "direction", "workload", "source", "destination_workload", "destination_service",
              "destination_version", "method", "authority", "path", "protocol", "status", "error",
              "duration_ms", "time", "response_flags", "route", "attempts"}


class Sidecar:
    """Routing and Telemetry of one sidecar, fed flows through mitmproxy's test context."""

    def __init__(self, identity: Identity, access_log=None) -> None:
        self.state = MeshState(identity)
        self.state.apply(CONFIG)
        self.log = io.StringIO() if access_log is None else access_log
        self.routing = Routing(self.state)
        self.telemetry = Telemetry(self.state, access_log=self.log)

    def run(self, flow) -> None:
        async def cycle():
            with taddons.context(self.routing, self.telemetry) as tctx:
                for hook in eventsequence.iterate(flow):
                    for addon in (self.routing, self.telemetry):
                        await tctx.master.addons.invoke_addon(addon, hook)
        asyncio.run(cycle())

    def count(self, **labels) -> float | None:
        return self.telemetry.registry.get_sample_value("istio_requests_total", labels)

    def sample(self, name: str, **labels) -> float | None:
        return self.telemetry.registry.get_sample_value(name, labels)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def http_flow(port=routing.OUTBOUND_PORT, headers=(), resp=True, err=False) -> http.HTTPFlow:
    req = tutils.treq(host="10.0.0.9", port=8080, content=b"",
                      headers=http.Headers(((b"Host", b"payment:8080"),) + headers))
    flow = tflow.tflow(req=req, resp=resp, err=err)
    flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{port}")
    return flow


OUTBOUND_LABELS = dict(reporter="source", source_workload="web-v1", destination_workload="payment-v1",
                       destination_service="payment", destination_version="v1", response_code="200",
                       request_protocol="http", response_flags="-")
INBOUND_LABELS = dict(reporter="destination", source_workload="web-v1", destination_workload="payment-v1",
                      destination_service="payment", destination_version="v1", response_code="200",
                      request_protocol="http", response_flags="-")


def test_outbound_request_is_counted_by_the_source():
    web = Sidecar(WEB)

    web.run(http_flow())
    web.run(http_flow())  # round robin: the second goes to v2

    assert web.count(**OUTBOUND_LABELS) == 1
    assert web.count(**{**OUTBOUND_LABELS, "destination_workload": "payment-v2", "destination_version": "v2"}) == 1


def test_inbound_request_is_counted_by_the_destination():
    payment = Sidecar(PAYMENT)

    payment.run(http_flow(port=routing.INBOUND_PORT, headers=((b"x-meshcli-source", b"web-v1"),)))

    assert payment.count(**INBOUND_LABELS) == 1
    assert payment.count(**OUTBOUND_LABELS) is None


def test_one_hop_is_seen_by_both_sidecars():
    web, payment = Sidecar(WEB), Sidecar(PAYMENT)
    outbound = http_flow()
    web.run(outbound)

    # what the client sidecar sent is what the server sidecar receives
    inbound = http_flow(port=routing.INBOUND_PORT,
                        headers=((b"x-meshcli-source", outbound.request.headers["x-meshcli-source"].encode()),))
    payment.run(inbound)

    assert web.count(**OUTBOUND_LABELS) == 1
    assert payment.count(**INBOUND_LABELS) == 1


def test_call_outside_the_mesh():
    web = Sidecar(WEB)
    flow = http_flow()
    flow.request.headers["Host"] = "example.com"

    web.run(flow)

    assert web.count(reporter="source", source_workload="web-v1", destination_workload="10.0.0.9",
                     destination_service="example.com", destination_version="unknown",
                     response_code="200", request_protocol="http", response_flags="-") == 1


def test_grpc_is_labelled():
    web = Sidecar(WEB)

    web.run(http_flow(headers=((b"content-type", b"application/grpc+proto"),)))

    assert web.count(**{**OUTBOUND_LABELS, "request_protocol": "grpc"}) == 1


def test_status_code_is_a_label():
    web = Sidecar(WEB)

    web.run(http_flow(resp=tutils.tresp(status_code=503)))

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "503"}) == 1
    assert web.count(**OUTBOUND_LABELS) is None


def test_error_without_response_counts_code_0():
    web = Sidecar(WEB)

    web.run(http_flow(resp=False, err=True))

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "0"}) == 1
    [entry] = web.log_lines()
    assert entry["status"] == 0
    assert entry["error"] == "error"


def test_error_after_response_headers_is_counted_once():
    # mitmproxy sets flow.response when headers arrive; if the body then fails it fires
    # error instead of response. That request failed and must still be counted.
    web = Sidecar(WEB)
    flow = http_flow(resp=False)
    web.run(flow)  # request hooks
    assert web.count(**OUTBOUND_LABELS) is None
    flow.response = tutils.tresp()
    flow.error = tflow.terr("peer closed connection")

    web.telemetry.error(flow)

    assert web.count(**{**OUTBOUND_LABELS, "response_code": "0"}) == 1
    assert web.count(**OUTBOUND_LABELS) is None


def test_duration_histogram():
    web = Sidecar(WEB)

    web.run(http_flow())  # treq starts at 946681200, tresp ends at 946681203

    labels = {**OUTBOUND_LABELS}
    assert web.sample("istio_request_duration_milliseconds_sum", **labels) == pytest.approx(3000)
    assert web.sample("istio_request_duration_milliseconds_bucket", **labels, le="2500.0") == 0
    assert web.sample("istio_request_duration_milliseconds_bucket", **labels, le="5000.0") == 1


def test_access_log_lines_are_json():
    web = Sidecar(WEB)

    web.run(http_flow())
    web.run(http_flow(resp=False, err=True))

    first, second = web.log_lines()
    assert set(first) == LOG_FIELDS
    assert {k: v for k, v in first.items() if k != "time"} == {
        "kind": "http", "direction": "outbound", "workload": "web-v1", "source": "web-v1",
        "destination_workload": "payment-v1", "destination_service": "payment", "destination_version": "v1",
        "method": "GET", "authority": "payment:8080", "path": "/path", "protocol": "HTTP/1.1",
        "status": 200, "error": None, "duration_ms": 3000.0,
        "response_flags": "-", "route": "default", "attempts": 1,
    }
    assert isinstance(first["time"], float)
    assert second["destination_workload"] == "payment-v2"
    assert second["status"] == 0


def test_inbound_access_log():
    payment = Sidecar(PAYMENT)

    payment.run(http_flow(port=routing.INBOUND_PORT, headers=((b"x-meshcli-source", b"web-v1"),)))

    [entry] = payment.log_lines()
    assert (entry["direction"], entry["workload"], entry["source"], entry["destination_workload"]) == (
        "inbound", "payment-v1", "web-v1", "payment-v1")


def test_access_log_can_be_off():
    state = MeshState(WEB)
    telemetry = Telemetry(state, access_log=None)
    flow = http_flow()

    telemetry.response(flow)

    assert telemetry.registry.get_sample_value("istio_requests_total", {
        **OUTBOUND_LABELS, "destination_workload": "10.0.0.9", "destination_service": "unknown",
        "destination_version": "unknown"}) == 1


def test_stats_json():
    web = Sidecar(WEB)
    web.run(http_flow())
    web.run(http_flow())
    web.run(http_flow())
    tcp_flow = tcp_flow_on(routing.OUTBOUND_PORT)
    web.telemetry.tcp_start(tcp_flow)

    stats = json.loads(json.dumps(web.telemetry.stats()))

    assert sorted(stats) == ["durations", "mirrored", "outliers", "requests", "routes", "tcp"]
    assert sorted((r["destination_workload"], r["count"]) for r in stats["requests"]) == [
        ("payment-v1", 2), ("payment-v2", 1)]
    assert stats["requests"][0]["reporter"] == "source"
    assert stats["tcp"] == [{"reporter": "source", "source_workload": "web-v1",
                             "destination_workload": "address:22", "destination_service": "address:22",
                             "metric": "istio_tcp_connections_opened_total", "value": 1}]


def test_stats_when_nothing_happened():
    assert Telemetry(MeshState(WEB), access_log=None).stats() == {
        "requests": [], "durations": [], "tcp": [], "routes": [], "mirrored": [], "outliers": {}}


def test_stats_json_has_a_latency_histogram_per_label_set():
    web = Sidecar(WEB)
    web.run(http_flow())
    web.run(http_flow())
    web.run(http_flow())

    rows = json.loads(json.dumps(web.telemetry.stats()))["durations"]

    assert sorted((r["destination_workload"], r["count"]) for r in rows) == [("payment-v1", 2), ("payment-v2", 1)]
    for row in rows:
        bounds = [bound for bound, _ in row["buckets"]]
        counts = [n for _, n in row["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        assert counts == sorted(counts) and counts[-1] == row["count"]  # cumulative, like Prometheus
        assert row["sum_ms"] >= 0


# -- TCP ---------------------------------------------------------------------------------

def tcp_flow_on(port: int) -> tcp.TCPFlow:
    flow = tflow.ttcpflow(messages=[])
    flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{port}")
    return flow


TCP_OUT = dict(reporter="source", source_workload="web-v1", destination_workload="address:22",
               destination_service="address:22")
TCP_IN = dict(reporter="destination", source_workload="unknown", destination_workload="payment-v1",
              destination_service="payment")


def relay(telemetry: Telemetry, flow: tcp.TCPFlow, from_client: bool, data: bytes) -> None:
    """What mitmproxy's TCP layer does per chunk: append the message, then call the hook."""
    flow.messages.append(tcp.TCPMessage(from_client, data))
    telemetry.tcp_message(flow)


def test_tcp_bytes_and_connections_are_counted():
    web = Sidecar(WEB)
    flow = tcp_flow_on(routing.OUTBOUND_PORT)

    web.telemetry.tcp_start(flow)
    relay(web.telemetry, flow, True, b"hello")
    relay(web.telemetry, flow, False, b"it's me")
    relay(web.telemetry, flow, True, b"bye")
    web.telemetry.tcp_end(flow)

    assert web.sample("istio_tcp_connections_opened_total", **TCP_OUT) == 1
    assert web.sample("istio_tcp_received_bytes_total", **TCP_OUT) == 8
    assert web.sample("istio_tcp_sent_bytes_total", **TCP_OUT) == 7
    assert web.sample("istio_tcp_connections_closed_total", **TCP_OUT) == 1


def test_tcp_messages_are_not_kept():
    web = Sidecar(WEB)
    flow = tcp_flow_on(routing.OUTBOUND_PORT)

    relay(web.telemetry, flow, True, b"x" * 1000)

    assert flow.messages == []


def test_inbound_tcp_is_reported_by_the_destination():
    payment = Sidecar(PAYMENT)
    flow = tcp_flow_on(routing.INBOUND_PORT)

    payment.telemetry.tcp_start(flow)
    relay(payment.telemetry, flow, True, b"ping")
    payment.telemetry.tcp_end(flow)

    assert payment.sample("istio_tcp_connections_opened_total", **TCP_IN) == 1
    assert payment.sample("istio_tcp_received_bytes_total", **TCP_IN) == 4
    assert payment.sample("istio_tcp_connections_closed_total", **TCP_IN) == 1


def test_tcp_through_the_test_context():
    web = Sidecar(WEB)
    flow = tflow.ttcpflow()  # two messages: 5 bytes from the client, 7 from the server
    flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")

    web.run(flow)

    assert web.sample("istio_tcp_connections_opened_total", **TCP_OUT) == 1
    assert web.sample("istio_tcp_received_bytes_total", **TCP_OUT) == 5
    assert web.sample("istio_tcp_sent_bytes_total", **TCP_OUT) == 7
    assert web.sample("istio_tcp_connections_closed_total", **TCP_OUT) == 1


def test_tcp_end_and_error_close_the_connection_once_each():
    web = Sidecar(WEB)
    ended, failed = tcp_flow_on(routing.OUTBOUND_PORT), tcp_flow_on(routing.OUTBOUND_PORT)
    failed.error = tflow.terr("connection refused")

    web.telemetry.tcp_end(ended)
    web.telemetry.tcp_error(failed)

    assert web.sample("istio_tcp_connections_closed_total", **TCP_OUT) == 2
    assert [(e["kind"], e["direction"], e["destination"], e["error"]) for e in web.log_lines()] == [
        ("tcp", "outbound", "address:22", None), ("tcp", "outbound", "address:22", "connection refused")]


def test_tcp_without_server_address():
    web = Sidecar(WEB)
    flow = tcp_flow_on(routing.OUTBOUND_PORT)
    flow.server_conn.address = None

    web.telemetry.tcp_start(flow)

    assert web.sample("istio_tcp_connections_opened_total", **{
        **TCP_OUT, "destination_workload": "unknown:0", "destination_service": "unknown:0"}) == 1


def test_metric_names_follow_istio():
    names = {metric.name for metric in Sidecar(WEB).telemetry.registry.collect()}

    assert names == {"istio_requests", "istio_request_duration_milliseconds", "istio_tcp_connections_opened",
                     "istio_tcp_connections_closed", "istio_tcp_received_bytes", "istio_tcp_sent_bytes",
                     # meshcli's own, beside Istio's
                     "meshcli_route_requests", "meshcli_upstream_attempts", "meshcli_mirrored_requests"}


def test_retries_are_attempts_not_requests():
    web = Sidecar(WEB)
    flow = http_flow(resp=tutils.tresp(status_code=503))
    web.routing.requestheaders(flow)
    flow.metadata[META_ATTEMPTS] = 3
    flow.metadata[routing.META_FLAGS].append("URX")
    web.telemetry.response(flow)
    web.run(http_flow())  # v2, one try

    labels = {**OUTBOUND_LABELS, "response_code": "503", "response_flags": "URX"}
    assert web.count(**labels) == 1
    assert web.telemetry.stats()["routes"] == [
        {"destination_service": "payment", "route": "default", "requests": 2, "attempts": 4, "retries": 2}]
    first = web.log_lines()[0]
    assert (first["route"], first["response_flags"], first["attempts"]) == ("default", "URX", 3)


def test_a_fault_answered_locally_made_no_attempt():
    web = Sidecar(WEB)
    flow = http_flow(resp=tutils.tresp(status_code=503))
    web.routing.requestheaders(flow)
    flow.metadata[routing.META_FLAGS].append("FI")
    web.telemetry.response(flow)

    assert web.log_lines()[0]["attempts"] == 0
    assert web.telemetry.stats()["routes"][0]["attempts"] == 0


def test_outliers_are_in_the_stats():
    state = MeshState(WEB)
    state.apply(config.parse(json.dumps({"schema": 2, "version": "x", "services": {"payment": {
        "versions": [{"name": "v1", "host": "payment-v1"}], "outlierDetection": {"consecutive5xxErrors": 1}}}})))
    outliers = Outliers(state)
    outliers.services["payment"].record("payment-v1", 503)

    stats = Telemetry(state, access_log=None, outliers=outliers).stats()

    assert [e["version"] for e in stats["outliers"]["payment"]["ejected"]] == ["v1"]
