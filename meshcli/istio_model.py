"""What mesh.yaml and Istio's resources share: the mapping tables both directions read.

`meshcli export istio` (istio_export.py) and `meshcli import istio` (istio_import.py)
translate through these tables only, so a mapping is written once and the two directions
cannot drift apart: load balancers, retry conditions, string matches, durations, the pod
labels subsets select, and the host names that name a compose service.

Labels: subsets select pods by Istio's `version` label, and routes name hosts by the
logical service (`reviews`), as Istio's own samples do: one Kubernetes Service per logical
service spanning its versions, which is what Istio routes between. kompose's
`io.kompose.service` label names one compose service (`reviews-v2`), so a subset that
selects it is read back on import too.

Security (issue 12: mTLS modes, authorization rules): PeerAuthentication and
AuthorizationPolicy are named here; their mapping goes beside the networking one in both
modules (istio_export.RESOURCES, istio_import.KINDS) when the mesh file has those fields.
"""

from __future__ import annotations

from decimal import Decimal

from meshproxy.config import DEFAULT_ROUTE, LoadBalancer, MatchKind, RetryOn

NETWORKING_API = "networking.istio.io/v1"
VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
PEER_AUTHENTICATION = "PeerAuthentication"  # security.istio.io/v1
AUTHORIZATION_POLICY = "AuthorizationPolicy"
# Istio's API groups: older versions (v1beta1, v1alpha3) have the same fields for what is mapped.
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io")

VERSION_LABEL = "version"  # subsets: `labels: {version: v2}`
APP_LABEL = "app"  # a route's sourceLabels: `{app: frontend}`
KOMPOSE_LABEL = "io.kompose.service"  # kompose's label: one compose service

CLUSTER_DOMAIN = "svc.cluster.local"
DEFAULT_ROUTE_NAME = DEFAULT_ROUTE  # the exported name of the service-level route

LOAD_BALANCER_TO_ISTIO = {LoadBalancer.ROUND_ROBIN.value: "ROUND_ROBIN", LoadBalancer.RANDOM.value: "RANDOM",
                          LoadBalancer.LEAST_REQUEST.value: "LEAST_REQUEST"}
LOAD_BALANCER_FROM_ISTIO = {**{v: k for k, v in LOAD_BALANCER_TO_ISTIO.items()},
                            "LEAST_CONN": LoadBalancer.LEAST_REQUEST.value}  # Istio's deprecated name

# meshcli's retry conditions are Envoy's names, which Istio's `retryOn` uses too.
RETRY_ON = tuple(kind.value for kind in RetryOn)
RETRIABLE_STATUS_CODES = RetryOn.RETRIABLE_STATUS_CODES.value
# Istio retries this way where a VirtualService route sets no `retries` (pilot's default policy).
ISTIO_DEFAULT_RETRIES = "2 attempts on connect-failure, refused-stream, unavailable, cancelled and 503"

# A header's presence is an empty match in Istio; a query parameter's is any value.
PRESENT_QUERY_REGEX = ".*"
STRING_MATCH_KINDS = (MatchKind.EXACT.value, MatchKind.PREFIX.value, MatchKind.REGEX.value)

# Istio durations are Go durations; meshcli writes seconds, which every Istio version reads.
GO_DURATION_UNITS = {"ns": Decimal("0.000001"), "us": Decimal("0.001"), "µs": Decimal("0.001"),
                     "ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


def duration(ms: float) -> str:
    """1500 -> "1.5s", 25 -> "0.025s"."""
    seconds = (Decimal(str(ms)) / 1000).normalize()
    return f"{seconds:f}s"


def parse_duration(text: object) -> float:
    """A Go duration ("7s", "1m30s", "0.5s", "250ms") -> milliseconds; ValueError otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not a duration")
    total, rest = Decimal(0), text
    while rest:
        number = len(rest) - len(rest.lstrip("0123456789."))
        unit = next((u for u in sorted(GO_DURATION_UNITS, key=len, reverse=True) if rest[number:].startswith(u)), None)
        if number == 0 or unit is None or rest[:number].count(".") > 1:
            raise ValueError(f'"{text}" is not a duration such as 2s, 500ms or 1m30s')
        total += Decimal(rest[:number]) * GO_DURATION_UNITS[unit]
        rest = rest[number + len(unit):]
    return int(total) if total == int(total) else float(total)


def service_of_host(host: str, namespace: str | None) -> str:
    """The service a host names: `reviews`, `reviews.NS`, `reviews.NS.svc`, `reviews.NS.svc.cluster.local`
    (NS: the resource's namespace when it has one, else any)."""
    name, _, rest = host.partition(".")
    if not rest:
        return name
    ns, _, domain = rest.partition(".")
    if domain in ("", "svc", CLUSTER_DOMAIN) and (namespace is None or ns == namespace):
        return name
    return host


def mesh_duration(ms: float) -> str:
    """Milliseconds as mesh.yaml writes them: 7000 -> "7s", 250 -> "250ms", 0.5 -> "0.5ms"."""
    if ms >= 1000 and ms % 1000 == 0:
        return f"{int(ms) // 1000}s"
    return f"{Decimal(str(ms)).normalize():f}ms"
