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

Security: mTLS modes are PeerAuthentication's (the same three names), authorization
sources are principals (a service: `TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE`, Istio's SPIFFE
ID without `spiffe://`; a caller without identity: `notPrincipals: ["*"]`), and path and
header conditions are Istio's strings (`/x` exact, `/x*` prefix, `*x` suffix, `*` present).
"""

from __future__ import annotations

import re
from decimal import Decimal

from meshproxy.config import DEFAULT_ROUTE, NO_IDENTITY, LoadBalancer, MatchKind, MtlsMode, RetryOn

NETWORKING_API = "networking.istio.io/v1"
SECURITY_API = "security.istio.io/v1"
VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
PEER_AUTHENTICATION = "PeerAuthentication"
AUTHORIZATION_POLICY = "AuthorizationPolicy"
API_OF = {VIRTUAL_SERVICE: NETWORKING_API, DESTINATION_RULE: NETWORKING_API,
          PEER_AUTHENTICATION: SECURITY_API, AUTHORIZATION_POLICY: SECURITY_API}
# Istio's API groups: older versions (v1beta1, v1alpha3) have the same fields for what is mapped.
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io")

VERSION_LABEL = "version"  # subsets: `labels: {version: v2}`
APP_LABEL = "app"  # a route's sourceLabels: `{app: frontend}`
KOMPOSE_LABEL = "io.kompose.service"  # kompose's label: one compose service

CLUSTER_DOMAIN = "svc.cluster.local"
DEFAULT_NAMESPACE = "default"  # where `kubectl apply` puts a resource without a namespace
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


# --- security ---------------------------------------------------------------------------

# The mesh-wide PeerAuthentication: Istio's convention names the namespace-wide one `default`.
NAMESPACE_PEER_AUTHENTICATION = "default"
# DestinationRule trafficPolicy.tls: what callers' sidecars send. Auto mTLS (Istio's default)
# sends mTLS to workloads with a sidecar and plain text to a PeerAuthentication DISABLE.
CLIENT_TLS_MUTUAL = "ISTIO_MUTUAL"
CLIENT_TLS_DISABLE = MtlsMode.DISABLE.value
ANY_PRINCIPAL = "*"  # `notPrincipals: ["*"]`: requests without an authenticated principal
SPIFFE = "spiffe://"
HEADER_ATTRIBUTE = re.compile(r"request\.headers\[([^\]]+)\]")
WILDCARD = "*"


def principal(source: str, trust_domain: str, namespace: str) -> str | None:
    """An authorization source as an Istio principal (None: NO_IDENTITY, which is notPrincipals)."""
    if source == NO_IDENTITY:
        return None
    if source.startswith(SPIFFE):
        return source[len(SPIFFE):]
    return f"{trust_domain}/ns/{namespace}/sa/{source}"


def source_of_principal(text: str, trust_domain: str, namespaces: set[str], services: set[str]) -> str:
    """An Istio principal (no wildcard) as an authorization source: a service of the mesh when it is
    its identity in one of `namespaces`, else the SPIFFE ID."""
    parts = text.split("/")
    if len(parts) == 5 and parts[0] == trust_domain and parts[1] == "ns" and parts[2] in namespaces \
            and parts[3] == "sa" and parts[4] in services:
        return parts[4]
    return SPIFFE + text


def istio_value(kind: str, value: str) -> str:
    """An authorization path or header condition as Istio writes it."""
    return {MatchKind.EXACT.value: value, MatchKind.PREFIX.value: value + WILDCARD,
            MatchKind.SUFFIX.value: WILDCARD + value, MatchKind.PRESENT.value: WILDCARD}[kind]


def match_of_istio_value(text: str) -> tuple[str, str]:
    """(kind, value) of an Istio path or header string (istio_value()'s inverse)."""
    if text == WILDCARD:
        return MatchKind.PRESENT.value, ""
    if text.startswith(WILDCARD):  # Istio's order: `*x*` is a suffix match of `x*`
        return MatchKind.SUFFIX.value, text[1:]
    if text.endswith(WILDCARD):
        return MatchKind.PREFIX.value, text[:-1]
    return MatchKind.EXACT.value, text
