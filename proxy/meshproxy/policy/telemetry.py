"""Telemetry: Istio-named Prometheus metrics and JSON stats (the access log: policy/access_log.py).

Every proxied request and TCP connection is counted from this sidecar's point of view:
`reporter="source"` on the client side (outbound), `reporter="destination"` on the
server side (inbound), as in Istio, so one hop shows up in both sidecars. A request is
counted once, whatever its retries; `meshcli_upstream_attempts_total` counts the tries
per route, `meshcli_mirrored_requests_total` the copies mirroring sent, and
`meshcli_upstream_connections_opened_total` the connections this sidecar opened (pooled
connections are reused across the app's own connections).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshproxy.config import MeshState
from meshproxy.exchange import INBOUND, Exchange
from meshproxy.outlier import Outliers

HTTP_LABELS = ("reporter", "source_workload", "destination_workload", "destination_service",
               "destination_version", "response_code", "request_protocol", "response_flags")
ROUTE_LABELS = ("destination_service", "route")
MIRROR_LABELS = ("destination_service", "destination_version")
TCP_LABELS = ("reporter", "source_workload", "destination_workload", "destination_service")
CONNECTION_LABELS = ("destination",)
AUTHZ_LABELS = ("destination_workload", "policy", "rule")
# Istio's default buckets for request durations, in milliseconds.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000)


class Telemetry:
    def __init__(self, state: MeshState, outliers: Outliers | None = None) -> None:
        self.state = state
        self.outliers = outliers
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("istio_requests_total", "Requests proxied.", HTTP_LABELS,
                                registry=self.registry)
        self.durations = Histogram("istio_request_duration_milliseconds", "Request durations.",
                                   HTTP_LABELS, buckets=DURATION_BUCKETS, registry=self.registry)
        self.tcp_opened_total = Counter("istio_tcp_connections_opened_total", "TCP connections opened.",
                                  TCP_LABELS, registry=self.registry)
        self.tcp_closed_total = Counter("istio_tcp_connections_closed_total", "TCP connections closed.",
                                  TCP_LABELS, registry=self.registry)
        self.tcp_received = Counter("istio_tcp_received_bytes_total", "Bytes received from clients.",
                                    TCP_LABELS, registry=self.registry)
        self.tcp_sent = Counter("istio_tcp_sent_bytes_total", "Bytes sent to clients.",
                                TCP_LABELS, registry=self.registry)
        self.route_requests = Counter("meshcli_route_requests_total", "Requests per route (client side).",
                                      ROUTE_LABELS, registry=self.registry)
        self.attempts = Counter("meshcli_upstream_attempts_total", "Upstream tries per route, retries included.",
                                ROUTE_LABELS, registry=self.registry)
        self.mirrored = Counter("meshcli_mirrored_requests_total", "Copies sent to mirror versions.",
                                MIRROR_LABELS, registry=self.registry)
        self.connections = Counter("meshcli_upstream_connections_opened_total",
                                   "Connections this sidecar opened to upstreams (HTTP pools).",
                                   CONNECTION_LABELS, registry=self.registry)
        self.authz_denials = Counter("meshcli_authz_denied_total",
                                     "Requests and connections authorization denied (server side).",
                                     AUTHZ_LABELS, registry=self.registry)
        # prometheus_client validates labels and takes a lock on every .labels() call;
        # each (metric, label set) is resolved once, see _child().
        self._children: dict[tuple, object] = {}

    def _child(self, metric, labels: tuple[str, ...]):
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    # -- HTTP ---------------------------------------------------------------------------
    def record(self, exchange: Exchange) -> None:
        """Count one finished request (answered, failed or reset: status 0)."""
        me = self.state.identity
        inbound = exchange.direction == INBOUND
        upstream = exchange.upstream
        flags = exchange.flags
        response_flags = ",".join(flags) if flags else "-"
        labels = (
            "destination" if inbound else "source",
            exchange.source if inbound else me.workload,
            me.workload if inbound else (upstream.host if upstream else exchange.service_name),
            exchange.service_name or "unknown",
            exchange.version,
            str(exchange.status),
            "grpc" if exchange.grpc else "http",
            response_flags,
        )
        duration_ms = exchange.duration_ms
        self._child(self.requests, labels).inc()
        self._child(self.durations, labels).observe(duration_ms)
        route = exchange.route
        if route is not None:
            self._child(self.route_requests, (labels[3], route.name)).inc()
            self._child(self.attempts, (labels[3], route.name)).inc(exchange.attempts)
            if exchange.mirrored is not None:
                self._child(self.mirrored, (labels[3], exchange.mirrored)).inc()

    def authz_denied(self, decision) -> None:
        """Count a denial by authorization (policy.authz.Decision); its request is logged as usual."""
        self._child(self.authz_denials, (self.state.identity.workload, decision.policy or "-",
                                         str(decision.rule or "-"))).inc()

    def connection_opened(self, host: str, port: int) -> None:
        self._child(self.connections, (f"{host}:{port}",)).inc()

    # -- TCP ----------------------------------------------------------------------------
    def tcp_labels(self, direction: str, destination: str) -> tuple[str, ...]:
        """The label set of a relayed connection; `destination` is its original 'ip:port'."""
        me = self.state.identity
        inbound = direction == INBOUND
        return ("destination" if inbound else "source", "unknown" if inbound else me.workload,
                me.workload if inbound else destination, me.service if inbound else destination)

    def tcp_opened(self, labels: tuple[str, ...]) -> None:
        self._child(self.tcp_opened_total, labels).inc()

    def tcp_bytes(self, labels: tuple[str, ...], from_client: bool, count: int) -> None:
        self._child(self.tcp_received if from_client else self.tcp_sent, labels).inc(count)

    def tcp_closed(self, labels: tuple[str, ...]) -> None:
        self._child(self.tcp_closed_total, labels).inc()

    # -- views for the admin endpoints ---------------------------------------------------
    def stats(self) -> dict:
        """Counters as JSON: what `meshcli status`, tests and later `meshcli stat` read."""
        result: dict = {"requests": [], "durations": [], "tcp": [], "routes": [], "mirrored": [],
                        "upstream_connections": [], "authz_denied": []}
        routes: dict[tuple, dict] = {}
        durations: dict[tuple, dict] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "istio_requests_total":
                    result["requests"].append({**sample.labels, "count": int(sample.value)})
                elif sample.name.startswith("istio_request_duration_milliseconds_"):
                    # One row per label set: cumulative bucket counts (Prometheus' `le`), sum and count.
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    row = durations.setdefault(tuple(labels.values()), {**labels, "buckets": []})
                    kind = sample.name.rsplit("_", 1)[1]
                    if kind == "bucket":
                        row["buckets"].append([float(sample.labels["le"]), int(sample.value)])
                    elif kind in ("sum", "count"):
                        row["sum_ms" if kind == "sum" else "count"] = round(sample.value, 3) if kind == "sum" \
                            else int(sample.value)
                elif sample.name.startswith("istio_tcp_") and sample.name.endswith("_total"):
                    result["tcp"].append({**sample.labels, "metric": sample.name, "value": int(sample.value)})
                elif sample.name in ("meshcli_route_requests_total", "meshcli_upstream_attempts_total"):
                    entry = routes.setdefault((sample.labels["destination_service"], sample.labels["route"]),
                                              {**sample.labels, "requests": 0, "attempts": 0})
                    entry["requests" if sample.name == "meshcli_route_requests_total" else "attempts"] = \
                        int(sample.value)
                elif sample.name == "meshcli_mirrored_requests_total":
                    result["mirrored"].append({**sample.labels, "count": int(sample.value)})
                elif sample.name == "meshcli_authz_denied_total":
                    result["authz_denied"].append({**sample.labels, "count": int(sample.value)})
                elif sample.name == "meshcli_upstream_connections_opened_total":
                    result["upstream_connections"].append({**sample.labels, "opened": int(sample.value)})
        result["durations"] = list(durations.values())
        result["routes"] = [{**entry, "retries": max(0, entry["attempts"] - entry["requests"])}
                            for _, entry in sorted(routes.items())]
        result["outliers"] = self.outliers.stats() if self.outliers is not None else {}
        return result
