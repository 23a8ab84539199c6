"""Acceptance of what the mesh lets a user see: Istio's metrics on every sidecar, exact counts
in `meshcli stat`, Istio's own Grafana dashboards' queries answered by the Prometheus of
`meshcli up --with prometheus`, the observed service graph and the busiest paths.

One demo project for the whole e2e session (conftest.py); this file adds its Prometheus
once (a second `meshcli up` on the running project: nothing else is recreated).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

DASHBOARDS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "istio" / "dashboards"
TRAFFIC_METRICS = re.compile(r"istio_(requests_total|request_duration_|request_bytes|response_bytes|tcp_)")
# Every hop between the demo's sidecars is mutual TLS (PERMISSIVE with auto mTLS, as Istio):
# the dashboards' plaintext twins of the mTLS panels have no series to show.
PLAINTEXT_ONLY = ('connection_security_policy!="mutual_tls"', 'destination_principal!~"spiffe.*"')
PLAINTEXT_SKIP = "plaintext series only; every hop of the demo uses mTLS"
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval is 4 scrape intervals (5 s here) at least: 20 s, with room
N = 40


def get(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status
    except OSError:
        return 0


def metrics(demo, workload: str) -> str:
    result = demo.exec(f"{workload}-sidecar", "curl", "-fsS", "http://127.0.0.1:15090/stats/prometheus")
    assert result.returncode == 0, result.stderr
    return result.stdout


def served(text: str) -> int:
    """istio_requests_total{reporter="destination"} summed: what this sidecar's app served."""
    return int(sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "istio_requests_total" and s.labels["reporter"] == "destination"))


def stat(demo) -> dict[str, dict]:
    data = json.loads(demo.cli("stat", "-p", demo.project, "--json", "--window", "10m").stdout)
    return {w["workload"]: w for w in data["workloads"]}


class Traffic:
    """Steady traffic for as long as it runs: GET frontend (frontend -> orders -> payment) every
    50 ms, and one TCP conversation with the greeter from greeter-client every second."""

    def __init__(self, demo) -> None:
        self.demo = demo
        self.stop = threading.Event()
        self.http_answers: list[int] = []
        self.tcp_runs: list[int] = []
        self.threads = [threading.Thread(target=self._http, daemon=True),
                        threading.Thread(target=self._tcp, daemon=True)]
        self.started = time.monotonic()

    def _http(self) -> None:
        while not self.stop.wait(0.05):
            self.http_answers.append(get(self.demo.url))

    def _tcp(self) -> None:
        while not self.stop.wait(1.0):
            done = self.demo.exec("greeter-client", "python3", "/app/tcp_client.py", "greeter", "9000",
                                  "--send", "ping")
            self.tcp_runs.append(done.returncode)

    def __enter__(self) -> Traffic:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture(scope="module")
def prometheus(demo) -> str:
    """The demo's Prometheus (started here with a second `meshcli up`): its URL on this host."""
    up = json.loads(demo.cli("up", "-p", demo.project, "--with", "prometheus", "--prometheus-port", "0",
                             "--timeout", "240", "--json").stdout)
    assert up["healthy"], up["notReady"]
    assert up["prometheus"], up
    assert demo.status()["prometheus"] == up["prometheus"]
    return up["prometheus"]


@pytest.fixture(scope="module")
def traffic(demo, prometheus):
    with Traffic(demo) as running:
        yield running
    assert set(running.http_answers) == {200} and set(running.tcp_runs) == {0}, (
        set(running.http_answers), set(running.tcp_runs))


def query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_exactly_n_requests_are_counted_by_stat_and_the_sidecars(demo):
    hops = ("frontend", "orders", "payment-v1", "payment-v2")
    stat_before, metrics_before = stat(demo), {w: served(metrics(demo, w)) for w in hops}

    assert [get(demo.url) for _ in range(N)] == [200] * N

    stat_after, metrics_after = stat(demo), {w: served(metrics(demo, w)) for w in hops}
    by_stat = {w: stat_after[w]["requestsTotal"] - stat_before[w]["requestsTotal"] for w in hops}
    by_metrics = {w: metrics_after[w] - metrics_before[w] for w in hops}
    for seen in (by_stat, by_metrics):
        assert (seen["frontend"], seen["orders"]) == (N, N), seen
        assert seen["payment-v1"] + seen["payment-v2"] == N and min(seen["payment-v1"], seen["payment-v2"]) > 0, seen
    assert stat_after["frontend"]["failuresTotal"] == stat_before["frontend"]["failuresTotal"]
    assert stat_after["frontend"]["latencyMs"]["p50"] is not None


def test_every_sidecars_metrics_parse_and_histograms_are_cumulative(demo):
    for workload in ("frontend", "orders", "payment-v1", "greeter"):
        families = list(text_string_to_metric_families(metrics(demo, workload)))
        names = {family.name for family in families}
        http = {"istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"}
        assert http <= names if workload != "greeter" else "istio_tcp_connections_opened" in names, names
        for family in families:
            if family.type != "histogram":
                continue
            series: dict[tuple, list[tuple[float, float]]] = {}
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    series.setdefault(key, []).append((float(s.labels["le"]), s.value))
            for buckets in series.values():
                bounds, counts = [b for b, _ in buckets], [c for _, c in buckets]
                assert bounds == sorted(bounds) and bounds[-1] == float("inf"), (family.name, bounds)
                assert counts == sorted(counts), (family.name, counts)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expression) of every PromQL target in the three dashboards."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((path.stem, panel.get("title", ""), target["expr"]))
    return found


def variables_for(expr: str, project: str) -> dict[str, str]:
    """The dashboards' template variables as a user of the demo would set them.

    namespace: the compose project. service (service dashboard) and workload (workload
    dashboard): `orders` for HTTP panels (it is called by frontend and calls payment, so its
    client and server panels both have traffic); for TCP panels the greeter (`greeter` as
    the service or the server, `greeter-client` where the panel shows a workload's outgoing
    connections). qrep: both reporters selected ("source|destination"). Every "All"-able
    variable (srcns, srcwl, dstsvc, srccluster, dstcluster, dstns, dstwl): All (".*").
    """
    tcp = "istio_tcp_" in expr
    outgoing = 'source_workload=~"$workload"' in expr
    values = {"namespace": project, "qrep": "source|destination", "service": "greeter" if tcp else "orders",
              "workload": ("greeter-client" if outgoing else "greeter") if tcp else "orders",
              "__rate_interval": RATE_INTERVAL}
    for name in ("srcns", "srcwl", "dstsvc", "srccluster", "dstcluster", "dstns", "dstwl"):
        values[name] = ".*"
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), expr)


def test_istio_dashboards_queries_answer_from_the_demos_prometheus(demo, prometheus, traffic):
    # Steady traffic first: rates need two scrapes in the window of each series.
    deadline = time.monotonic() + 120
    probes = (f'sum(irate(istio_requests_total{{reporter="source"}}[{RATE_INTERVAL}]))',
              f'sum(irate(istio_tcp_sent_bytes_total{{reporter="source"}}[{RATE_INTERVAL}])) > 0',
              f'sum(irate(istio_tcp_sent_bytes_total{{reporter="destination"}}[{RATE_INTERVAL}])) > 0')
    while not all(query(prometheus, probe) for probe in probes):
        assert time.monotonic() < deadline, "Prometheus saw no traffic within 120 s"
        time.sleep(2)
    time.sleep(6)  # one more scrape of everything

    skipped, empty, checked = [], [], 0
    for dashboard, panel, expr in dashboard_queries():
        if not TRAFFIC_METRICS.search(expr):
            skipped.append((dashboard, panel, "not about HTTP or TCP traffic"))
            continue
        if any(marker in expr for marker in PLAINTEXT_ONLY):
            skipped.append((dashboard, panel, PLAINTEXT_SKIP))
            continue
        promql = expand(expr, variables_for(expr, demo.project))
        assert "$" not in promql, promql
        checked += 1
        if not query(prometheus, promql):
            empty.append((dashboard, panel, promql))
    print(f"\n{checked} dashboard queries answered; skipped {len(skipped)}:")
    for dashboard, panel, why in sorted(set(skipped)):
        print(f"  {dashboard} / {panel}: {why}")
    assert checked > 60
    assert {why for *_, why in skipped} <= {"not about HTTP or TCP traffic", PLAINTEXT_SKIP}
    assert [panel for _, panel, why in skipped if why.startswith("not about")] == ["Istio Component Versions"]
    assert empty == [], "\n".join(f"{d} / {p}: {q}" for d, p, q in empty)


def test_graph_shows_exactly_the_demos_edges(demo, traffic):
    # The window below must hold only this module's traffic: 10 s, and up to 5 s more (a sidecar
    # snapshots its counters every 5 s), since the traffic started.
    time.sleep(max(0.0, 16 - (time.monotonic() - traffic.started)))
    graph = json.loads(demo.cli("graph", "-p", demo.project, "--json", "--window", "10s").stdout)

    edges = {(e["source"], e["destination"], e["protocol"]) for e in graph["edges"]}
    assert edges == {("frontend", "orders", "http"), ("orders", "payment-v1", "http"),
                     ("orders", "payment-v2", "http"), ("greeter-client", "greeter", "tcp")}, graph["edges"]
    assert {n["workload"] for n in graph["nodes"]} == {"frontend", "orders", "payment-v1", "payment-v2",
                                                        "greeter-client", "greeter"}
    assert all(n["inMesh"] for n in graph["nodes"])
    for edge in graph["edges"]:
        assert edge["perSecond"] > 0 and edge["mtls"] == "mutual_tls", edge
        assert edge["errorRate"] in (0.0, None), edge
    dot = demo.cli("graph", "-p", demo.project, "--format", "dot", "--window", "10s").stdout
    assert '"frontend" -> "orders"' in dot and '"greeter-client" -> "greeter"' in dot
    # The greeter's own sidecar names its caller too (from the address a raw connection comes from).
    callers = {s.labels["source_workload"] for family in text_string_to_metric_families(metrics(demo, "greeter"))
               for s in family.samples if s.name == "istio_tcp_connections_opened_total"}
    assert callers == {"greeter-client"}, callers


def test_top_lists_the_busiest_paths(demo, traffic):
    top = json.loads(demo.cli("top", "-p", demo.project, "--json", "--interval", "2").stdout)

    rows = {(r["workload"], r["source"], r["method"], r["path"]): r for r in top["paths"]}
    assert ("frontend", "unknown", "GET", "/") in rows and ("orders", "frontend", "GET", "/") in rows, rows
    assert rows[("frontend", "unknown", "GET", "/")]["perSecond"] > 1
    assert top["paths"][0]["requests"] >= top["paths"][-1]["requests"]
