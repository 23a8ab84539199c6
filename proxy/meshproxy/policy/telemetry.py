"""Telemetry: Istio's standard metrics, meshcli's own counters and JSON stats (the access
log: policy/access_log.py).

Every proxied request and TCP connection is counted from this sidecar's point of view:
`reporter="source"` on the client side (outbound), `reporter="destination"` on the
server side (inbound), as in Istio, so one hop shows up in both sidecars. The label set
is Istio's (ISTIO_LABELS), so its Grafana dashboards work unchanged: the compose project
is the namespace, a service's versions are its workloads; what this sidecar knows of a
peer (its app and version) comes from the compiled config; a raw TCP connection's
workloads from its addresses (the destination's, and inbound the caller's), resolved like
the TCP faults' addresses. Without mTLS principals are "unknown", as Istio reports them.

A request is counted once, whatever its retries: `meshcli_upstream_attempts_total`
counts the tries per route, `meshcli_retries_total` the retries, and faults, circuit
breaker overflows, outlier ejections and authorization denials have counters of their own. Inbound requests are
also counted per path (bounded, for `meshcli top`).

The hot path: a request's label values are looked up in one dict keyed by the few
exchange fields they derive from, giving the series of its label set; the four HTTP
metrics of a series are plain counters (HttpSeries: one writer, the event loop, no lock,
a bisect per histogram), as are a connection's (TcpSeries), and a collector turns them
into Prometheus samples at scrape time. prometheus_client's own children (a lock per
increment, a loop over the buckets per observation) cost twice as much per request; they
serve the rarer counters.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from meshproxy.config import MeshState, SidecarConfig, spiffe_id
from meshproxy.exchange import INBOUND, Exchange
from meshproxy.outlier import Outliers
from meshproxy.resolver import ServiceAddresses, workload_hosts

# Istio's standard label set, in its order (istio.io: "Istio Standard Metrics").
ISTIO_LABELS = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service",
    "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
# TCP metrics carry all but the HTTP ones.
TCP_LABELS = tuple(name for name in ISTIO_LABELS if name not in ("request_protocol", "response_code",
                                                                 "grpc_response_status", "response_flags"))
ROUTE_LABELS = ("destination_service", "route")
MIRROR_LABELS = ("destination_service", "destination_version")
FAULT_LABELS = ("destination_service", "kind")  # kind: delay, abort (TCP faults: tcp-delay, tcp-break)
CONNECTION_LABELS = ("destination",)
AUTHZ_LABELS = ("destination_workload", "policy", "rule")
UNKNOWN = "unknown"
# Istio's default buckets for request durations, in milliseconds...
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000)
# ...and for sizes, in bytes (exponential: 1 to 10^8).
SIZE_BUCKETS = tuple(10 ** i for i in range(9))
# `meshcli top`: inbound requests per (source, method, path), at most this many, the rest pooled.
MAX_PATHS = 256
OTHER_PATHS = "(other)"
# Envoy's response flags that mean an injected fault, by kind.
FAULT_FLAGS = {"DI": "delay", "FI": "abort"}
OVERFLOW_FLAG = "UO"


class HttpSeries:
    """One label set's requests, durations and sizes. Buckets are per bucket (not cumulative),
    the last one +Inf; the count is their sum, so a scrape never sees them disagree."""

    __slots__ = ("labels", "durations", "duration_sum", "request_sizes", "request_bytes", "response_sizes",
                 "response_bytes")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.request_sizes = [0] * (len(SIZE_BUCKETS) + 1)
        self.response_sizes = [0] * (len(SIZE_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.request_bytes = self.response_bytes = 0

    def observe(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        self.durations[bisect_left(DURATION_BUCKETS, duration_ms)] += 1  # Prometheus' le: value <= bound
        self.duration_sum += duration_ms
        self.request_sizes[bisect_left(SIZE_BUCKETS, request_bytes)] += 1
        self.request_bytes += request_bytes
        self.response_sizes[bisect_left(SIZE_BUCKETS, response_bytes)] += 1
        self.response_bytes += response_bytes


class TcpSeries:
    """One label set's relayed connections: opened, closed, bytes from and to the client."""

    __slots__ = ("labels", "opened", "closed", "received", "sent")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.opened = self.closed = self.received = self.sent = 0


# The TCP metrics, each with the TcpSeries field it reads.
TCP_METRICS = (("istio_tcp_connections_opened_total", "opened", "TCP connections opened."),
               ("istio_tcp_connections_closed_total", "closed", "TCP connections closed."),
               ("istio_tcp_received_bytes_total", "received", "Bytes received from clients."),
               ("istio_tcp_sent_bytes_total", "sent", "Bytes sent to clients."))


def _cumulative(bounds: tuple, counts) -> list[tuple[str, int]]:
    total, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts):
        total += count
        buckets.append((floatToGoString(bound), total))
    return buckets


class _IstioCollector:
    """Istio's metrics, from the HttpSeries and TcpSeries at scrape time."""

    def __init__(self, series: dict[tuple, HttpSeries], tcp: dict[tuple, TcpSeries]) -> None:
        self.series, self.tcp = series, tcp

    def describe(self):
        return []

    def collect(self):
        yield from self._http()
        connections = list(self.tcp.values())
        for name, field_name, documentation in TCP_METRICS:
            family = CounterMetricFamily(name, documentation, labels=TCP_LABELS)
            for series in connections:
                family.add_metric(series.labels, getattr(series, field_name))
            yield family

    def _http(self):
        requests = CounterMetricFamily("istio_requests", "Requests proxied.", labels=ISTIO_LABELS)
        durations = HistogramMetricFamily("istio_request_duration_milliseconds", "Request durations.",
                                          labels=ISTIO_LABELS)
        request_sizes = HistogramMetricFamily("istio_request_bytes", "Request body sizes.", labels=ISTIO_LABELS)
        response_sizes = HistogramMetricFamily("istio_response_bytes", "Response body sizes.", labels=ISTIO_LABELS)
        for series in list(self.series.values()):  # the event loop may add one meanwhile
            buckets = _cumulative(DURATION_BUCKETS, series.durations)
            requests.add_metric(series.labels, buckets[-1][1])
            durations.add_metric(series.labels, buckets, series.duration_sum)
            request_sizes.add_metric(series.labels, _cumulative(SIZE_BUCKETS, series.request_sizes),
                                     series.request_bytes)
            response_sizes.add_metric(series.labels, _cumulative(SIZE_BUCKETS, series.response_sizes),
                                      series.response_bytes)
        yield from (requests, durations, request_sizes, response_sizes)


class Telemetry:
    def __init__(self, state: MeshState, outliers: Outliers | None = None,
                 addresses: ServiceAddresses | None = None) -> None:
        self.state = state
        self.outliers = outliers
        # A relayed TCP connection carries only its destination IP: the workload behind it.
        self.addresses = addresses or ServiceAddresses(state, workload_hosts)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.series: dict[tuple[str, ...], HttpSeries] = {}  # label values -> its series
        self.tcp_series: dict[tuple[str, ...], TcpSeries] = {}
        r.register(_IstioCollector(self.series, self.tcp_series))
        # (service, route) -> [requests, tries, retries]: plain integers, read at scrape time as the
        # Istio series are (prometheus_client's labelled counters cost a lock and four calls each)
        self.routes: dict[tuple[str, str], list[int]] = {}
        r.register(_RouteCollector(self.routes))
        self.faults = Counter("meshcli_faults_injected_total", "Faults injected, by kind.", FAULT_LABELS,
                              registry=r)
        self.overflows = Counter("meshcli_circuit_breaker_overflows_total",
                                 "Requests refused by an open circuit breaker (flag UO).",
                                 ("destination_service",), registry=r)
        self.mirrored = Counter("meshcli_mirrored_requests_total", "Copies sent to mirror versions.",
                                MIRROR_LABELS, registry=r)
        self.connections = Counter("meshcli_upstream_connections_opened_total",
                                   "Connections this sidecar opened to upstreams (HTTP pools).",
                                   CONNECTION_LABELS, registry=r)
        self.authz_denials = Counter("meshcli_authz_denied_total",
                                     "Requests and connections authorization denied (server side).",
                                     AUTHZ_LABELS, registry=r)
        r.register(_EjectionCollector(self))
        self._children: dict[tuple, object] = {}
        # exchange fields -> their label set's series; emptied on a new config (peers may change).
        self._http: dict[tuple, HttpSeries] = {}
        self._workloads: dict[str, tuple[str, str]] = {}  # workload (host) -> (service, version)
        self.paths: dict[tuple[str, str, str], list] = {}  # (source, method, path) -> [count, errors, sum ms, max ms]
        state.subscribe(self._configure)

    def _configure(self, config: SidecarConfig) -> None:
        self._workloads = {v.host: (service.name, v.name)
                           for service in config.services.values() for v in service.versions}
        self._http = {}

    def start(self) -> None:
        """Keep the TCP destinations' addresses current (with the event loop running)."""
        self.addresses.start()

    def stop(self) -> None:
        self.addresses.stop()

    def _child(self, metric, labels: tuple[str, ...]):
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    @property
    def namespace(self) -> str:
        return self.state.config.project or self.state.identity.project or UNKNOWN

    def _peer(self, workload: str) -> tuple[str, str, str]:
        """(namespace, app, version) of a workload of this project; unknown for anything else."""
        known = self._workloads.get(workload)
        return (self.namespace, *known) if known is not None else (UNKNOWN, UNKNOWN, UNKNOWN)

    def _principal(self, service: str, secured: bool) -> str:
        return spiffe_id(self.state.config.trust_domain, self.namespace, service) if secured else UNKNOWN

    # -- HTTP ---------------------------------------------------------------------------
    def http_labels(self, exchange: Exchange) -> tuple[str, ...]:
        """Istio's labels of a finished request, in ISTIO_LABELS' order."""
        me = self.state.identity
        ns = self.namespace
        flags = exchange.flags
        secured = exchange.security_policy == "mutual_tls"
        service = exchange.service_name or UNKNOWN
        version = exchange.version or UNKNOWN
        if exchange.direction == INBOUND:
            source = exchange.source
            source_ns, source_app, source_version = self._peer(source)
            source_side = (source, source_ns, exchange.source_principal or UNKNOWN, source_app, source_version,
                           source_app)
            destination_side = (me.workload, ns, self._principal(me.service, secured), me.service, version,
                                service, service, ns, me.service)
        else:
            upstream = exchange.upstream
            in_mesh = exchange.service is not None
            workload = upstream.host if upstream is not None else service
            source_side = (me.workload, ns, self._principal(me.service, secured), me.service,
                           me.version or UNKNOWN, me.service)
            app = service if in_mesh else UNKNOWN
            destination_side = (workload, ns if in_mesh else UNKNOWN, self._principal(service, secured), app,
                                version, service, service, ns if in_mesh else UNKNOWN, app)
        return ("destination" if exchange.direction == INBOUND else "source", *source_side, *destination_side,
                "grpc" if exchange.grpc else "http", str(exchange.status), exchange.grpc_status,
                ",".join(flags) if flags else "-", exchange.security_policy)

    def record(self, exchange: Exchange) -> None:
        """Count one finished request (answered, failed or reset: status 0)."""
        flags = exchange.flags
        upstream = exchange.upstream
        key = (exchange.direction, exchange.source, exchange.service_name, upstream.host if upstream else None,
               exchange.version, exchange.status, exchange.grpc, exchange.grpc_status,
               tuple(flags) if flags else None, exchange.security_policy, exchange.source_principal)
        series = self._http.get(key)
        if series is None:
            labels = self.http_labels(exchange)
            series = self.series.get(labels)
            if series is None:
                series = self.series[labels] = HttpSeries(labels)
            self._http[key] = series
        labels = series.labels
        duration_ms = exchange.duration_ms
        series.observe(duration_ms, exchange.request_bytes, exchange.response_bytes)
        route = exchange.route
        service = labels[12]
        if route is not None:
            tally = self.routes.get((service, route.name))
            if tally is None:
                tally = self.routes[(service, route.name)] = [0, 0, 0]
            tally[0] += 1
            tally[1] += exchange.attempts
            if exchange.attempts > 1:
                tally[2] += exchange.attempts - 1
            if exchange.mirrored is not None:
                self._child(self.mirrored, (service, exchange.mirrored)).inc()
        if flags:
            self._count_flags(service, flags)
        if exchange.direction == INBOUND:
            self._count_path(exchange, duration_ms)

    def authz_denied(self, decision) -> None:
        """Count a denial by authorization (policy.authz.Decision); its request is logged as usual."""
        self._child(self.authz_denials, (self.state.identity.workload, decision.policy or "-",
                                         str(decision.rule or "-"))).inc()

    def _count_flags(self, service: str, flags: list[str]) -> None:
        for flag in flags:
            kind = FAULT_FLAGS.get(flag)
            if kind is not None:
                self._child(self.faults, (service, kind)).inc()
            elif flag == OVERFLOW_FLAG:
                self._child(self.overflows, (service,)).inc()

    def _count_path(self, exchange: Exchange, duration_ms: float) -> None:
        path = exchange.path.partition("?")[0]
        key = (exchange.source, exchange.method, path)
        counts = self.paths.get(key)
        if counts is None:
            if len(self.paths) >= MAX_PATHS:
                key = (OTHER_PATHS, OTHER_PATHS, OTHER_PATHS)
                counts = self.paths.get(key)
            if counts is None:
                counts = self.paths[key] = [0, 0, 0.0, 0.0]
        counts[0] += 1
        if exchange.status >= 500 or exchange.status == 0:
            counts[1] += 1
        counts[2] += duration_ms
        if duration_ms > counts[3]:
            counts[3] = duration_ms

    def connection_opened(self, host: str, port: int) -> None:
        self._child(self.connections, (f"{host}:{port}",)).inc()

    # -- TCP ----------------------------------------------------------------------------
    def tcp_labels(self, direction: str, destination: str, security_policy: str = "none",
                   peer_ip: str | None = None) -> tuple[str, ...]:
        """The label set of a relayed connection (TCP_LABELS' order); `destination` is its
        original 'ip:port'. Inbound, the caller is the workload at `peer_ip` (the address the
        connection came from), when that is one of the project's."""
        me = self.state.identity
        ns = self.namespace
        secured = security_policy == "mutual_tls"
        if direction == INBOUND:
            source = self._workload_at(peer_ip) if peer_ip else None
            if source is None:
                source_side: tuple = (UNKNOWN,) * 6
            else:
                app, version = self._workloads[source]
                source_side = (source, ns, self._principal(app, secured), app, version, app)
            return ("destination", *source_side, me.workload, ns, self._principal(me.service, secured), me.service,
                    me.version or UNKNOWN, me.service, me.service, ns, me.service, security_policy)
        source_side = (me.workload, ns, self._principal(me.service, secured), me.service, me.version or UNKNOWN,
                       me.service)
        workload = self._workload_at(destination.rpartition(":")[0])
        known = self._workloads.get(workload) if workload is not None else None
        if known is None:  # outside the mesh (Envoy's passthrough): named by its address
            return ("source", *source_side, destination, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN,
                    destination, destination, UNKNOWN, UNKNOWN, security_policy)
        service, version = known
        return ("source", *source_side, workload, ns, self._principal(service, secured), service, version,
                service, service, ns, service, security_policy)

    def _workload_at(self, ip: str) -> str | None:
        workload = self.addresses.service_at(ip)
        return workload if workload in self._workloads else None

    def _tcp(self, labels: tuple[str, ...]) -> TcpSeries:
        series = self.tcp_series.get(labels)
        if series is None:
            series = self.tcp_series[labels] = TcpSeries(labels)
        return series

    def tcp_opened(self, labels: tuple[str, ...]) -> None:
        self._tcp(labels).opened += 1

    def tcp_bytes(self, labels: tuple[str, ...], from_client: bool, count: int) -> None:
        series = self._tcp(labels)
        if from_client:
            series.received += count
        else:
            series.sent += count

    def tcp_closed(self, labels: tuple[str, ...], flags: str = "-") -> None:
        self._tcp(labels).closed += 1
        kind = FAULT_FLAGS.get(flags)
        if kind is not None:
            self._child(self.faults, (labels[12], "tcp-" + kind)).inc()

    # -- views for the admin endpoints ---------------------------------------------------
    def snapshot(self) -> dict:
        """Istio's counters and the per-path counts, compact (tuples of numbers beside the
        shared label tuples): what the admin keeps a history of; rows() makes JSON of it."""
        return {"http": {labels: (tuple(s.durations), s.duration_sum) for labels, s in list(self.series.items())},
                "tcp": {labels: (s.opened, s.closed, s.received, s.sent)
                        for labels, s in list(self.tcp_series.items())},
                "paths": {key: tuple(counts) for key, counts in list(self.paths.items())}}

    @staticmethod
    def rows(snapshot: dict) -> dict:
        """A snapshot as /stats shows it: "requests" and "durations" rows (cumulative buckets,
        Prometheus' `le`) per label set, "tcp" rows per label set and metric (those above 0), "paths"."""
        requests, durations, tcp = [], [], []
        for labels, (buckets, total_ms) in snapshot["http"].items():
            named = dict(zip(ISTIO_LABELS, labels))
            cumulative = _cumulative(DURATION_BUCKETS, buckets)
            count = cumulative[-1][1]
            requests.append({**named, "count": count})
            durations.append({**named, "buckets": [[float(le), n] for le, n in cumulative],
                              "sum_ms": round(total_ms, 3), "count": count})
        for labels, values in snapshot["tcp"].items():
            named = dict(zip(TCP_LABELS, labels))
            tcp += [{**named, "metric": name, "value": value}
                    for (name, _, _), value in zip(TCP_METRICS, values) if value]
        paths = [{"source": source, "method": method, "path": path, "count": count, "errors": errors,
                  "sum_ms": round(total, 3), "max_ms": round(worst, 3)}
                 for (source, method, path), (count, errors, total, worst) in snapshot["paths"].items()]
        return {"requests": requests, "durations": durations, "tcp": tcp, "paths": paths}

    def stats(self) -> dict:
        """Counters as JSON: what `meshcli status`, `stat`, `graph` and `top` read."""
        result: dict = {**self.rows(self.snapshot()), "routes": [], "mirrored": [], "upstream_connections": [],
                        "faults": [], "overflows": [], "authz_denied": []}
        routes: dict[tuple, dict] = {}
        for metric in self.registry.collect():
            if metric.name.startswith("istio_"):
                continue  # from the snapshot above
            for sample in metric.samples:
                name = sample.name
                if name in ("meshcli_route_requests_total", "meshcli_upstream_attempts_total"):
                    entry = routes.setdefault((sample.labels["destination_service"], sample.labels["route"]),
                                              {**sample.labels, "requests": 0, "attempts": 0})
                    entry["requests" if name == "meshcli_route_requests_total" else "attempts"] = int(sample.value)
                elif name == "meshcli_mirrored_requests_total":
                    result["mirrored"].append({**sample.labels, "count": int(sample.value)})
                elif name == "meshcli_upstream_connections_opened_total":
                    result["upstream_connections"].append({**sample.labels, "opened": int(sample.value)})
                elif name == "meshcli_faults_injected_total":
                    result["faults"].append({**sample.labels, "count": int(sample.value)})
                elif name == "meshcli_circuit_breaker_overflows_total":
                    result["overflows"].append({**sample.labels, "count": int(sample.value)})
                elif name == "meshcli_authz_denied_total":
                    result["authz_denied"].append({**sample.labels, "count": int(sample.value)})
        result["routes"] = [{**entry, "retries": max(0, entry["attempts"] - entry["requests"])}
                            for _, entry in sorted(routes.items())]
        result["outliers"] = self.outliers.stats() if self.outliers is not None else {}
        return result


class _RouteCollector:
    """Requests, tries and retries per route, from Telemetry.routes at scrape time."""

    def __init__(self, routes: dict[tuple[str, str], list[int]]) -> None:  # Telemetry.routes
        self.routes = routes

    def describe(self):
        return []

    def collect(self):
        requests = CounterMetricFamily("meshcli_route_requests", "Requests per route (client side).",
                                       labels=ROUTE_LABELS)
        attempts = CounterMetricFamily("meshcli_upstream_attempts", "Upstream tries per route, retries included.",
                                       labels=ROUTE_LABELS)
        retries = CounterMetricFamily("meshcli_retries", "Retries per route (tries after the first).",
                                      labels=ROUTE_LABELS)
        for labels, (count, tries, retried) in list(self.routes.items()):  # the event loop may add one meanwhile
            requests.add_metric(labels, count)
            attempts.add_metric(labels, tries)
            retries.add_metric(labels, retried)
        yield from (requests, attempts, retries)


class _EjectionCollector:
    """meshcli_outlier_ejections_total, read from the outlier state at scrape time (no hot-path cost)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily("meshcli_outlier_ejections", "Versions ejected by outlier detection.",
                                     labels=("destination_service", "destination_version"))
        outliers = self.telemetry.outliers
        for service, state in (outliers.ejections() if outliers is not None else {}).items():
            for version, count in state.items():
                family.add_metric((service, version), count)
        yield family
