"""Views of the mesh as its sidecars see it: `meshcli stat`, `meshcli graph` and `meshcli top`.

Every figure comes from the sidecars' own counters (their admin `/stats`, asked through
`docker exec` as `meshcli status` does); nothing is sent through the apps. Rates over a
window come from one answer per sidecar: `/stats?window=S` carries the counters of about
S seconds ago beside today's (see proxy/meshproxy/admin.py), so a window costs no wait.
Latency quantiles are interpolated in the difference of the duration histograms, as
Prometheus' histogram_quantile() does. This module computes; the CLI modules print.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from meshcli import durations, status
from meshcli.errors import InputError
from meshcli.workspace import Loaded

DEFAULT_WINDOW = "1m"
MAX_WINDOW_S = 600  # what a sidecar keeps (admin.HISTORY_SECONDS)
QUANTILES = (0.5, 0.95, 0.99)
VALUE_KEYS = frozenset({"count", "value", "buckets", "sum_ms"})  # per-row figures; the rest are labels
FORMATS = ("text", "dot", "mermaid", "json")


def window_seconds(text: str) -> float:
    """'1m' -> 60.0; InputError for what is not a duration of 1 s to 10 min."""
    try:
        seconds = durations.parse_ms(text) / 1000
    except ValueError as exc:
        raise InputError(f"--window: {exc}") from None
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise InputError(f"--window: {text} is outside 1s to 10m (a sidecar keeps 10 minutes of counters)")
    return seconds


# -- reading the sidecars ------------------------------------------------------------------


@dataclass
class Reading:
    """One sidecar's counters now and (with a window) about `window_s` seconds ago."""

    workload: str
    now: dict
    earlier: dict | None = None
    window_s: float = 0.0  # the real age of `earlier`

    def rows(self, kind: str) -> list[dict]:
        return self.now.get(kind, [])

    def window_rows(self, kind: str, value: str = "count") -> list[dict]:
        """The rows of `kind` with `value` as it grew in the window (rows that did not grow left out)."""
        before = {_key(row): row for row in (self.earlier or {}).get(kind, [])}
        changed = []
        for row in self.rows(kind):
            grown = row[value] - before.get(_key(row), {}).get(value, 0)
            if grown:
                changed.append({**row, value: grown})
        return changed

    def window_buckets(self, rows_filter) -> list[list[float]]:
        """The duration buckets of the rows that pass `rows_filter`, summed, as they grew in the window."""
        before = {_key(row): row for row in (self.earlier or {}).get("durations", [])}
        summed: dict[float, float] = {}
        for row in self.rows("durations"):
            if not rows_filter(row):
                continue
            then = dict((bound, n) for bound, n in before.get(_key(row), {}).get("buckets", []))
            for bound, n in row["buckets"]:
                summed[bound] = summed.get(bound, 0) + n - then.get(bound, 0)
        return sorted([bound, n] for bound, n in summed.items())


def _key(row: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in row.items() if k not in VALUE_KEYS))


def read(loaded: Loaded, window_s: float | None = None, workloads: list[str] | None = None) -> list[Reading]:
    """The counters of every running sidecar of the project (or of `workloads`)."""
    sidecars = status.sidecar_containers(loaded)
    names = [w for w in (workloads if workloads is not None else sorted(loaded.mesh.workloads)) if w in sidecars]
    path = "/stats" if window_s is None else f"/stats?window={window_s:g}"

    def one(workload: str) -> Reading | None:
        stats = status.admin_get(sidecars[workload], path)
        if stats is None:
            return None
        earlier = stats.pop("earlier", None)
        return Reading(workload, stats, earlier, earlier["age_s"] if earlier else 0.0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(one, names) if r is not None]


def histogram_quantile(q: float, buckets: list[list[float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative [upper bound, count] pairs; None without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the open-ended bucket: its lower bound, as Prometheus does
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _failed(row: dict) -> bool:
    code = row.get("response_code", "0")
    return code.startswith("5") or code == "0"


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


# -- stat ------------------------------------------------------------------------------------


@dataclass
class WorkloadStat:
    """One workload's traffic as its own sidecar served it (inbound, Istio's reporter=destination)."""

    workload: str
    service: str
    version: str
    meshed: bool  # its sidecar answered
    requests_total: int = 0  # since its sidecar started
    failures_total: int = 0  # 5xx and requests that got no answer
    window_s: float = 0.0
    requests: int = 0  # in the window
    failures: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=lambda: {f"p{int(q * 100)}": None for q in QUANTILES})
    tcp_connections_total: int = 0
    tcp_open: int = 0
    tcp_received_bytes_total: int = 0
    tcp_sent_bytes_total: int = 0
    tcp_bytes_window: int = 0

    @property
    def success_rate(self) -> float | None:
        return round(1 - self.failures / self.requests, 4) if self.requests else None

    @property
    def rps(self) -> float | None:
        return _rate(self.requests, self.window_s)

    def to_json(self) -> dict:
        return {"workload": self.workload, "service": self.service, "version": self.version, "meshed": self.meshed,
                "requestsTotal": self.requests_total, "failuresTotal": self.failures_total,
                "windowSeconds": round(self.window_s, 3), "requests": self.requests, "failures": self.failures,
                "successRate": self.success_rate, "requestsPerSecond": self.rps,
                "latencyMs": {k: round(v, 3) if v is not None else None for k, v in self.latency_ms.items()},
                "tcp": {"connectionsTotal": self.tcp_connections_total, "open": self.tcp_open,
                        "receivedBytesTotal": self.tcp_received_bytes_total,
                        "sentBytesTotal": self.tcp_sent_bytes_total,
                        "bytesPerSecond": _rate(self.tcp_bytes_window, self.window_s)}}


def stat(loaded: Loaded, window_s: float, service: str | None = None) -> list[WorkloadStat]:
    """Per workload (of `service`, or all): success rate, requests/s and latency over the window,
    totals since each sidecar started, TCP connections and bytes."""
    workloads = sorted(loaded.mesh.workloads.values(), key=lambda w: (w.service, w.version, w.name))
    if service is not None:
        if service not in loaded.mesh.services and service not in loaded.mesh.workloads:
            raise InputError(f"no service or workload {service!r} in project {loaded.project.name}; known: "
                             f"{', '.join(sorted(loaded.mesh.services))}")
        workloads = [w for w in workloads if service in (w.service, w.name)]
    readings = {r.workload: r for r in read(loaded, window_s, [w.name for w in workloads])}
    return [_workload_stat(w, readings.get(w.name)) for w in workloads]


def _workload_stat(workload, reading: Reading | None) -> WorkloadStat:
    result = WorkloadStat(workload.name, workload.service, workload.version, meshed=reading is not None)
    if reading is None:
        return result
    result.window_s = reading.window_s

    def served(row: dict) -> bool:
        return row["reporter"] == "destination"

    for row in filter(served, reading.rows("requests")):
        result.requests_total += row["count"]
        result.failures_total += row["count"] if _failed(row) else 0
    for row in filter(served, reading.window_rows("requests")):
        result.requests += row["count"]
        result.failures += row["count"] if _failed(row) else 0
    buckets = reading.window_buckets(served)
    for q in QUANTILES:
        result.latency_ms[f"p{int(q * 100)}"] = histogram_quantile(q, buckets)
    totals = {}
    for row in filter(served, reading.rows("tcp")):
        totals[row["metric"]] = totals.get(row["metric"], 0) + row["value"]
    result.tcp_connections_total = totals.get("istio_tcp_connections_opened_total", 0)
    result.tcp_open = result.tcp_connections_total - totals.get("istio_tcp_connections_closed_total", 0)
    result.tcp_received_bytes_total = totals.get("istio_tcp_received_bytes_total", 0)
    result.tcp_sent_bytes_total = totals.get("istio_tcp_sent_bytes_total", 0)
    result.tcp_bytes_window = sum(row["value"] for row in filter(served, reading.window_rows("tcp", "value"))
                                  if row["metric"].endswith("_bytes_total"))
    return result


# -- graph -----------------------------------------------------------------------------------


@dataclass
class Edge:
    """Calls from one workload to another in the window, as the caller's sidecar saw them."""

    source: str
    destination: str
    protocol: str  # http, grpc or tcp
    requests: int = 0  # HTTP: requests; TCP: connections opened
    failures: int = 0
    bytes: int = 0  # TCP: both ways
    security: set[str] = field(default_factory=set)  # connection_security_policy values seen
    window_s: float = 0.0

    @property
    def mtls(self) -> str:
        """mutual_tls, none or mixed (some of each)."""
        if not self.security:
            return "none"
        return next(iter(self.security)) if len(self.security) == 1 else "mixed"

    @property
    def error_rate(self) -> float | None:
        return round(self.failures / self.requests, 4) if self.requests and self.protocol != "tcp" else None

    def to_json(self) -> dict:
        return {"source": self.source, "destination": self.destination, "protocol": self.protocol,
                "requests" if self.protocol != "tcp" else "connections": self.requests,
                "perSecond": _rate(self.requests, self.window_s), "errorRate": self.error_rate,
                **({"bytes": self.bytes, "bytesPerSecond": _rate(self.bytes, self.window_s)}
                   if self.protocol == "tcp" else {}),
                "mtls": self.mtls}


@dataclass
class Graph:
    nodes: list[dict]
    edges: list[Edge]
    window_s: float

    def to_json(self) -> dict:
        return {"windowSeconds": round(self.window_s, 3), "nodes": self.nodes,
                "edges": [edge.to_json() for edge in self.edges]}


def graph(loaded: Loaded, window_s: float) -> Graph:
    """The service graph observed in the window: one edge per (caller, callee, protocol) with
    traffic in it, from the callers' sidecars (reporter=source); nodes are the edges' ends."""
    edges: dict[tuple[str, str, str], Edge] = {}
    readings = read(loaded, window_s)
    for reading in readings:
        for row in reading.window_rows("requests"):
            if row["reporter"] != "source":
                continue
            edge = _edge(edges, row, row["request_protocol"], reading.window_s)
            edge.requests += row["count"]
            edge.failures += row["count"] if _failed(row) else 0
            edge.security.add(row["connection_security_policy"])
        for row in reading.window_rows("tcp", "value"):
            if row["reporter"] != "source":
                continue
            edge = _edge(edges, row, "tcp", reading.window_s)
            if row["metric"] == "istio_tcp_connections_opened_total":
                edge.requests += row["value"]
                edge.security.add(row["connection_security_policy"])
            elif row["metric"].endswith("_bytes_total"):
                edge.bytes += row["value"]
    ordered = sorted(edges.values(), key=lambda e: (e.source, e.destination, e.protocol))
    names = sorted({e.source for e in ordered} | {e.destination for e in ordered})
    workloads = loaded.mesh.workloads
    nodes = [{"workload": name, "service": workloads[name].service if name in workloads else None,
              "version": workloads[name].version if name in workloads else None,
              "inMesh": name in workloads} for name in names]
    return Graph(nodes, ordered, max((r.window_s for r in readings), default=0.0))


def _edge(edges: dict, row: dict, protocol: str, window_s: float) -> Edge:
    key = (row["source_workload"], row["destination_workload"], protocol)
    edge = edges.get(key)
    if edge is None:
        edge = edges[key] = Edge(*key, window_s=window_s)
    return edge


def _edge_label(edge: Edge) -> str:
    rate = edge.to_json()["perSecond"]
    what = f"{rate:g} conn/s" if edge.protocol == "tcp" else f"{rate:g} req/s"
    errors = f", {edge.error_rate:.1%} errors" if edge.error_rate else ""
    security = {"mutual_tls": "mTLS", "none": "plaintext"}.get(edge.mtls, "mTLS and plaintext")
    return f"{edge.protocol} {what}{errors}, {security}"


def graph_dot(g: Graph) -> str:
    lines = ["digraph mesh {", "  rankdir=LR;"]
    for node in g.nodes:
        shape = "box" if node["inMesh"] else "ellipse"
        lines.append(f'  "{node["workload"]}" [shape={shape}];')
    for edge in g.edges:
        style = "solid" if edge.mtls == "mutual_tls" else "dashed"
        lines.append(f'  "{edge.source}" -> "{edge.destination}" [label="{_edge_label(edge)}", style={style}];')
    return "\n".join(lines + ["}"]) + "\n"


def graph_mermaid(g: Graph) -> str:
    ids = {node["workload"]: f"n{i}" for i, node in enumerate(g.nodes)}
    lines = ["graph LR"]
    lines += [f'  {ids[node["workload"]]}["{node["workload"]}"]' for node in g.nodes]
    for edge in g.edges:
        arrow = "==>" if edge.mtls == "mutual_tls" else "-->"
        lines.append(f'  {ids[edge.source]} {arrow}|"{_edge_label(edge)}"| {ids[edge.destination]}')
    return "\n".join(lines) + "\n"


# -- top -------------------------------------------------------------------------------------


@dataclass
class PathCounts:
    """Requests a workload served on one path from one caller (cumulative, since its sidecar started)."""

    workload: str
    source: str
    method: str
    path: str
    count: int
    errors: int
    sum_ms: float
    max_ms: float


def path_counts(loaded: Loaded, service: str | None = None) -> dict[tuple, PathCounts]:
    names = [w.name for w in loaded.mesh.workloads.values() if service in (None, w.service, w.name)]
    counts = {}
    for reading in read(loaded, None, sorted(names)):
        for row in reading.rows("paths"):
            item = PathCounts(reading.workload, row["source"], row["method"], row["path"], row["count"],
                              row["errors"], row["sum_ms"], row["max_ms"])
            counts[(item.workload, item.source, item.method, item.path)] = item
    return counts


@dataclass
class TopRow:
    workload: str
    source: str
    method: str
    path: str
    requests: int  # in the interval
    per_second: float
    success_rate: float | None
    mean_ms: float | None  # in the interval
    max_ms: float  # since the sidecar started
    total: int

    def to_json(self) -> dict:
        return {"workload": self.workload, "source": self.source, "method": self.method, "path": self.path,
                "requests": self.requests, "perSecond": self.per_second, "successRate": self.success_rate,
                "meanMs": self.mean_ms, "maxMs": self.max_ms, "total": self.total}


def top(before: dict[tuple, PathCounts], after: dict[tuple, PathCounts], seconds: float,
        limit: int = 20) -> list[TopRow]:
    """The busiest paths between two readings of path_counts(), busiest first."""
    rows = []
    for key, now in after.items():
        then = before.get(key)
        requests = now.count - (then.count if then else 0)
        errors = now.errors - (then.errors if then else 0)
        spent = now.sum_ms - (then.sum_ms if then else 0)
        rows.append(TopRow(now.workload, now.source, now.method, now.path, requests,
                           round(requests / seconds, 3) if seconds > 0 else 0.0,
                           round(1 - errors / requests, 4) if requests else None,
                           round(spent / requests, 3) if requests else None, now.max_ms, now.count))
    rows.sort(key=lambda r: (-r.requests, -r.total, r.workload, r.path))
    return rows[:limit]


def sample_top(loaded: Loaded, service: str | None, interval: float, limit: int = 20) -> list[TopRow]:
    """Two readings `interval` seconds apart, compared (for `top --json`)."""
    before, started = path_counts(loaded, service), time.monotonic()
    time.sleep(interval)
    after = path_counts(loaded, service)
    return top(before, after, time.monotonic() - started, limit)
