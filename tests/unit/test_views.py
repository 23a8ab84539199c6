"""meshcli/views.py: stat, graph and top computed from sidecar counters (read() replaced by
fixed readings; the e2e tests read real sidecars)."""

import math

import pytest

from meshcli import views
from meshcli.errors import InputError
from meshcli.mesh_config import Mesh, Workload


def workload(name, service, version="v1"):
    return Workload(name, service, version, (8080,), ())


class FakeLoaded:
    def __init__(self):
        self.mesh = Mesh("shop", {}, {w.name: w for w in (workload("web", "web"), workload("pay-v1", "pay"),
                                                            workload("pay-v2", "pay", "v2"), workload("db", "db"))})
        self.mesh.services.update({"web": None, "pay": None, "db": None})

    class project:
        name = "shop"


def request(reporter, source, destination, count, code="200", security="none", protocol="http"):
    return {"reporter": reporter, "source_workload": source, "destination_workload": destination,
            "response_code": code, "connection_security_policy": security, "request_protocol": protocol,
            "count": count}


def tcp(reporter, source, destination, metric, value):
    return {"reporter": reporter, "source_workload": source, "destination_workload": destination,
            "connection_security_policy": "none", "metric": f"istio_tcp_{metric}_total", "value": value}


def durations(reporter, buckets):
    return {"reporter": reporter, "buckets": buckets, "count": buckets[-1][1], "sum_ms": 1.0}


@pytest.fixture
def readings(monkeypatch):
    by_workload = {}

    def fake_read(loaded, window_s=None, workloads=None):
        return [r for name, r in sorted(by_workload.items()) if workloads is None or name in workloads]

    monkeypatch.setattr(views, "read", fake_read)
    return by_workload


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [[10, 0], [20, 50], [40, 100], [math.inf, 100]]

    assert views.histogram_quantile(0.5, buckets) == 20
    assert views.histogram_quantile(0.25, buckets) == 15
    assert views.histogram_quantile(0.75, buckets) == 30
    assert views.histogram_quantile(0.99, [[1, 0], [math.inf, 10]]) == 1  # open-ended bucket: its lower bound
    assert views.histogram_quantile(0.5, [[1, 0], [math.inf, 0]]) is None
    assert views.histogram_quantile(0.5, []) is None


def test_window_rows_are_what_grew():
    reading = views.Reading("pay-v1", {"requests": [request("destination", "web", "pay-v1", 10),
                                                    request("destination", "web", "pay-v1", 3, "503")]},
                            {"requests": [request("destination", "web", "pay-v1", 4),
                                          request("destination", "web", "pay-v1", 3, "503")]}, 30.0)

    assert [(r["response_code"], r["count"]) for r in reading.window_rows("requests")] == [("200", 6)]


def test_stat_reports_totals_window_rates_and_latency(readings):
    now = {"requests": [request("destination", "web", "pay-v1", 100), request("destination", "web", "pay-v1", 4, "503"),
                        request("source", "pay-v1", "db", 50)],
           "durations": [durations("destination", [[5, 40], [10, 100], [math.inf, 104]]),
                         durations("source", [[5, 0], [10, 0], [math.inf, 50]])],
           "tcp": [tcp("destination", "unknown", "pay-v1", "connections_opened", 3),
                   tcp("destination", "unknown", "pay-v1", "connections_closed", 1),
                   tcp("destination", "unknown", "pay-v1", "received_bytes", 500)]}
    earlier = {"requests": [request("destination", "web", "pay-v1", 50)],
               "durations": [durations("destination", [[5, 40], [10, 50], [math.inf, 50]])], "tcp": []}
    readings["pay-v1"] = views.Reading("pay-v1", now, earlier, 10.0)

    [v1, v2] = views.stat(FakeLoaded(), 10.0, "pay")

    assert (v1.requests_total, v1.failures_total, v1.requests, v1.failures) == (104, 4, 54, 4)
    assert v1.rps == 5.4 and v1.success_rate == round(1 - 4 / 54, 4)
    assert v1.latency_ms["p50"] == pytest.approx(5 + 5 * 27 / 50)
    assert (v1.tcp_connections_total, v1.tcp_open, v1.tcp_received_bytes_total) == (3, 2, 500)
    assert v1.to_json()["tcp"]["bytesPerSecond"] == 50.0
    assert not v2.meshed and v2.to_json()["requestsTotal"] == 0


def test_stat_of_an_unknown_service_is_an_input_error(readings):
    with pytest.raises(InputError, match="no service or workload 'nope'"):
        views.stat(FakeLoaded(), 60, "nope")


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1m", 60), ("10m", 600)])
def test_window_seconds(text, seconds):
    assert views.window_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0s", "11m", "soon", "500ms"])
def test_window_seconds_refuses(text):
    with pytest.raises(InputError, match="--window"):
        views.window_seconds(text)


def test_graph_has_an_edge_per_caller_callee_and_protocol_with_traffic_in_the_window(readings):
    readings["web"] = views.Reading("web", {
        "requests": [request("source", "web", "pay-v1", 20), request("source", "web", "pay-v2", 10, "503"),
                     request("source", "web", "pay-v2", 10, security="mutual_tls"),
                     request("source", "web", "old-v0", 5),  # nothing new in the window: no edge, no node
                     request("destination", "unknown", "web", 30)],
        "tcp": [tcp("source", "web", "db", "connections_opened", 2), tcp("source", "web", "db", "sent_bytes", 10),
                tcp("source", "web", "db", "received_bytes", 30)]},
        {"requests": [request("source", "web", "old-v0", 5)], "tcp": []}, 10.0)

    g = views.graph(FakeLoaded(), 10.0)
    data = g.to_json()

    assert [(e["source"], e["destination"], e["protocol"]) for e in data["edges"]] == [
        ("web", "db", "tcp"), ("web", "pay-v1", "http"), ("web", "pay-v2", "http")]
    db, v1, v2 = data["edges"]
    assert (db["connections"], db["bytes"], db["bytesPerSecond"], db["errorRate"]) == (2, 40, 4.0, None)
    assert (v1["requests"], v1["perSecond"], v1["errorRate"], v1["mtls"]) == (20, 2.0, 0.0, "none")
    assert (v2["requests"], v2["errorRate"], v2["mtls"]) == (20, 0.5, "mixed")
    assert [n["workload"] for n in data["nodes"]] == ["db", "pay-v1", "pay-v2", "web"]
    assert "digraph mesh" in views.graph_dot(g) and '"web" -> "pay-v1"' in views.graph_dot(g)
    assert views.graph_mermaid(g).startswith("graph LR\n")


def test_top_ranks_paths_by_requests_in_the_interval():
    def counts(*rows):
        return {(w, s, m, p): views.PathCounts(w, s, m, p, n, e, ms, 9.0) for w, s, m, p, n, e, ms in rows}

    before = counts(("pay-v1", "web", "GET", "/a", 10, 0, 10.0), ("pay-v1", "web", "GET", "/b", 5, 0, 5.0))
    after = counts(("pay-v1", "web", "GET", "/a", 12, 1, 14.0), ("pay-v1", "web", "GET", "/b", 10, 0, 15.0),
                   ("pay-v2", "web", "POST", "/c", 1, 0, 3.0))

    rows = views.top(before, after, 2.0)

    assert [(r.path, r.requests, r.per_second, r.success_rate, r.mean_ms) for r in rows] == [
        ("/b", 5, 2.5, 1.0, 2.0), ("/a", 2, 1.0, 0.5, 2.0), ("/c", 1, 0.5, 1.0, 3.0)]
    assert views.top(before, after, 2.0, limit=1)[0].to_json()["path"] == "/b"
