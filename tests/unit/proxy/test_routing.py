"""Routing: outbound requests to a mesh service go to one of its versions."""

import asyncio
import json

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from meshproxy import config
from meshproxy.addons import routing
from meshproxy.addons.routing import Routing, host_name
from meshproxy.config import Identity, MeshState, Version

V1 = Version("v1", "payment-v1")
V2 = Version("v2", "payment-v2")


def mesh_config(load_balancer="round-robin", versions=(V1, V2), version="abc123") -> config.SidecarConfig:
    return config.parse(json.dumps({
        "schema": 2,
        "version": version,
        "services": {
            "payment": {"versions": [{"name": v.name, "host": v.host} for v in versions],
                        "ports": [8080], "loadBalancer": load_balancer},
        },
    }))


def make_state(**kwargs) -> MeshState:
    state = MeshState(Identity("shop", "web-v1", "web", "v1"))
    state.apply(mesh_config(**kwargs))
    return state


def flow_to(host_header: str | None = "payment:8080", port: int = routing.OUTBOUND_PORT,
            headers: tuple = (), **request) -> http.HTTPFlow:
    """A flow as transparent mode delivers it: request.host is the original destination IP."""
    all_headers = ((b"Host", host_header.encode()),) if host_header else ()
    req = tutils.treq(host="10.0.0.9", port=8080, content=b"", headers=http.Headers(all_headers + headers),
                      **request)
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{port}")
    return flow


def run(addon, flow) -> None:
    """Every hook of the flow in order, as mitmproxy calls them."""
    async def cycle():
        with taddons.context(addon) as tctx:
            await tctx.cycle(addon, flow)
    asyncio.run(cycle())


def test_outbound_requests_alternate_between_versions():
    addon = Routing(make_state())
    flows = [flow_to() for _ in range(4)]

    for flow in flows:
        run(addon, flow)

    assert [f.request.host for f in flows] == ["payment-v1", "payment-v2", "payment-v1", "payment-v2"]
    assert [f.request.port for f in flows] == [8080] * 4
    # the server sees the name the app called, not the pod it landed on
    assert [f.request.headers["Host"] for f in flows] == ["payment:8080"] * 4
    assert [f.metadata[routing.META_VERSION] for f in flows] == ["v1", "v2", "v1", "v2"]
    assert [f.metadata[routing.META_UPSTREAM] for f in flows] == [V1, V2, V1, V2]


def test_the_version_is_chosen_from_the_headers_before_a_streamed_body():
    # Over stream_large_bodies mitmproxy sends the body upstream as it arrives, right after
    # the requestheaders hook: the destination must be chosen by then.
    flow = flow_to(headers=((b"Content-Length", b"5000000"),))
    flow.request.data.content = None  # the body has not been read
    flow.request.stream = True

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == V1.host and flow.metadata[routing.META_VERSION] == "v1"


def test_outbound_metadata_and_source_header():
    flow = flow_to()

    Routing(make_state()).requestheaders(flow)

    assert flow.metadata[routing.META_DIRECTION] == "outbound"
    assert flow.metadata[routing.META_SERVICE] == "payment"
    assert flow.metadata[routing.META_VERSION] == "v1"
    assert flow.request.headers.get_all(routing.SOURCE_HEADER) == ["web-v1"]


def test_a_source_header_from_the_app_is_replaced():
    flow = flow_to(headers=((routing.SOURCE_HEADER.encode(), b"spoofed"),))

    Routing(make_state()).requestheaders(flow)

    assert flow.request.headers.get_all(routing.SOURCE_HEADER) == ["web-v1"]


def test_host_without_port_is_routed():
    flow = flow_to("payment")

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == "payment-v1"
    assert flow.request.headers["Host"] == "payment"


def test_http2_authority_is_kept():
    flow = flow_to(None, http_version=b"HTTP/2.0", authority=b"payment:8080")

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == "payment-v1"
    assert flow.request.authority == "payment:8080"
    assert flow.metadata[routing.META_VERSION] == "v1"


@pytest.mark.parametrize("host_header", ["example.com", "example.com:443", "payment-v2:8080", "10.0.0.9:8080"])
def test_hosts_outside_the_mesh_are_left_alone(host_header):
    # payment-v2 is a workload's own name: calling it directly bypasses the split
    flow = flow_to(host_header)

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == "10.0.0.9"
    assert flow.request.headers["Host"] == host_header
    assert flow.metadata[routing.META_SERVICE] == host_name(host_header)
    assert routing.META_VERSION not in flow.metadata
    assert routing.META_UPSTREAM not in flow.metadata


def test_request_without_host_is_left_alone():
    flow = flow_to(None)

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == "10.0.0.9"
    assert flow.metadata[routing.META_SERVICE] == "10.0.0.9"


def test_inbound_takes_the_source_and_does_not_reroute():
    flow = flow_to(port=routing.INBOUND_PORT, headers=((routing.SOURCE_HEADER.encode(), b"checkout-v1"),))

    Routing(make_state()).requestheaders(flow)

    assert flow.request.host == "10.0.0.9"
    assert flow.request.headers["Host"] == "payment:8080"
    assert routing.SOURCE_HEADER not in flow.request.headers  # the app never sees it
    assert flow.metadata == {
        routing.META_FLAGS: [],
        routing.META_DIRECTION: "inbound",
        routing.META_SOURCE: "checkout-v1",
        routing.META_SERVICE: "web",
        routing.META_VERSION: "v1",
    }


def test_inbound_without_source_header():
    flow = flow_to(port=routing.INBOUND_PORT)

    Routing(make_state()).requestheaders(flow)

    assert flow.metadata[routing.META_SOURCE] == "unknown"


def in_flight(addon: Routing) -> dict:
    config, pickers = addon._table
    return dict(pickers[id(config.services["payment"].routes[-1])].policy._active)


@pytest.mark.parametrize("outcome", [{"resp": True}, {"err": True}])
def test_least_request_is_released_on_response_or_error(outcome):
    addon = Routing(make_state(load_balancer="least-request"))
    flow = flow_to()
    addon.requestheaders(flow)
    chosen = flow.metadata[routing.META_UPSTREAM]
    assert in_flight(addon)[chosen] == 1

    finished = flow_to()
    finished.metadata.update(flow.metadata)
    if outcome.get("resp"):
        finished.response = tutils.tresp()
        addon.response(finished)
    else:
        finished.error = tflow.terr()
        addon.error(finished)

    assert in_flight(addon) == {V1: 0, V2: 0}


def test_full_cycle_leaves_nothing_in_flight():
    addon = Routing(make_state(load_balancer="least-request"))
    flows = [flow_to() for _ in range(3)]
    flows[0].response = tutils.tresp()
    flows[1].error = tflow.terr()
    flows[2].response = tutils.tresp()

    for flow in flows:
        run(addon, flow)

    assert in_flight(addon) == {V1: 0, V2: 0}


def test_release_ignores_flows_that_were_not_routed():
    addon = Routing(make_state(load_balancer="least-request"))
    addon.requestheaders(flow_to())
    outside = flow_to("example.com")
    addon.requestheaders(outside)
    outside.response = tutils.tresp()

    addon.response(outside)

    assert sum(in_flight(addon).values()) == 1


def test_new_config_rebuilds_balancers():
    state = make_state()
    addon = Routing(state)
    first = flow_to()
    addon.requestheaders(first)
    assert first.request.host == "payment-v1"

    state.apply(mesh_config(versions=(V2,), version="def456"))
    flows = [flow_to() for _ in range(3)]
    for flow in flows:
        addon.requestheaders(flow)

    assert [f.request.host for f in flows] == ["payment-v2"] * 3


def test_new_config_restarts_round_robin():
    state = make_state()
    addon = Routing(state)
    addon.requestheaders(flow_to())  # v1: the next would be v2

    state.apply(mesh_config(version="def456"))
    flow = flow_to()
    addon.requestheaders(flow)

    assert flow.request.host == "payment-v1"


def test_before_any_config_nothing_is_routed():
    addon = Routing(MeshState(Identity("shop", "web-v1", "web", "v1")))
    flow = flow_to()

    addon.requestheaders(flow)

    assert flow.request.host == "10.0.0.9"
    assert flow.metadata[routing.META_SERVICE] == "payment"


@pytest.mark.parametrize(("authority", "name"), [
    ("payment:8080", "payment"),
    ("payment", "payment"),
    ("[::1]:80", "::1"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("", ""),
    (None, ""),
])
def test_host_name(authority, name):
    assert host_name(authority) == name


# -- routes, splits, ejections -------------------------------------------------------------

def routed_state(routes: list, load_balancer="round-robin", versions=(V1, V2), **service) -> MeshState:
    state = MeshState(Identity("shop", "web-v1", "web", "v1"))
    state.apply(config.parse(json.dumps({"schema": 2, "version": "r1", "services": {"payment": {
        "versions": [{"name": v.name, "host": v.host} for v in versions], "loadBalancer": load_balancer,
        "routes": routes, **service}}})))
    return state


def test_a_90_10_split_is_exact_over_1000_requests():
    addon = Routing(routed_state([{"name": "default", "split": [{"version": "v1", "weight": 90},
                                                                {"version": "v2", "weight": 10}]}]))
    counts = {"v1": 0, "v2": 0}

    for _ in range(1000):
        flow = flow_to()
        addon.requestheaders(flow)
        counts[flow.metadata[routing.META_VERSION]] += 1

    assert counts == {"v1": 900, "v2": 100}


def test_a_random_split_is_close():
    addon = Routing(routed_state([{"name": "default", "split": [{"version": "v1", "weight": 90},
                                                                {"version": "v2", "weight": 10}]}], "random"))
    v2 = 0
    for _ in range(2000):
        flow = flow_to()
        addon.requestheaders(flow)
        v2 += flow.metadata[routing.META_VERSION] == "v2"

    assert 140 <= v2 <= 260


CANARY = {"name": "canary", "match": [{"headers": [{"name": "X-Canary", "kind": "exact", "value": "true"}]},
                                      {"query": [{"name": "canary", "kind": "present"}]}],
          "split": [{"version": "v2", "weight": 100}], "timeoutMs": 250}
API_GET = {"name": "api-get", "match": [{"path": {"kind": "prefix", "value": "/api"}, "methods": ["GET"],
                                         "source": "web"}], "split": [{"version": "v1", "weight": 100}]}
REGEX = {"name": "orders", "match": [{"path": {"kind": "regex", "value": "/orders/[0-9]+"}}],
         "split": [{"version": "v2", "weight": 100}]}


@pytest.mark.parametrize(("request_kwargs", "headers", "route", "version"), [
    ({}, ((b"x-canary", b"true"),), "canary", "v2"),
    ({}, ((b"x-canary", b"TRUE"),), "default", "v1"),  # exact is exact
    ({"path": b"/pay?canary"}, (), "canary", "v2"),  # OR between match entries
    ({"path": b"/api/items?x=1"}, (), "api-get", "v1"),
    ({"path": b"/api/items", "method": b"POST"}, (), "default", "v1"),  # AND inside an entry
    ({"path": b"/orders/17"}, (), "orders", "v2"),
    ({"path": b"/orders/17/lines"}, (), "default", "v1"),  # a regex matches the whole path
])
def test_the_first_matching_route_decides(request_kwargs, headers, route, version):
    addon = Routing(routed_state([CANARY, API_GET, REGEX, {"name": "default"}]))
    flow = flow_to(headers=headers, **request_kwargs)

    addon.requestheaders(flow)

    assert flow.metadata[routing.META_ROUTE].name == route
    assert flow.metadata[routing.META_VERSION] == version


def test_a_source_match_only_takes_that_callers_requests():
    state = routed_state([API_GET, {"name": "default", "split": [{"version": "v2", "weight": 100}]}])
    state.identity = Identity("shop", "admin-v1", "admin", "v1")
    flow = flow_to(path=b"/api/items")

    Routing(state).requestheaders(flow)

    assert flow.metadata[routing.META_ROUTE].name == "default"


def test_route_metadata_for_the_addons_that_follow():
    state = routed_state([CANARY, {"name": "default"}])
    flow = flow_to(headers=((b"x-canary", b"true"),))
    before = routing.now()

    Routing(state).requestheaders(flow)

    meta = flow.metadata
    assert meta[routing.META_SERVICE_CONFIG] is state.config.services["payment"]
    assert meta[routing.META_ROUTE] is state.config.services["payment"].routes[0]
    assert meta[routing.META_FLAGS] == []
    assert meta[routing.META_UPSTREAM] == V2
    assert before + 0.25 <= meta[routing.META_DEADLINE] <= routing.now() + 0.25
    assert flow.request.host == "payment-v2"


def test_no_route_timeout_means_no_deadline():
    flow = flow_to()

    Routing(make_state()).requestheaders(flow)

    assert flow.metadata[routing.META_DEADLINE] is None


def eject(addon: Routing, version: Version) -> None:
    health = addon.outliers.services["payment"]
    for _ in range(5):
        health.record(version.host, 503)
    assert version.host in health.ejected_hosts()


OUTLIER = {"outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTimeMs": 60000, "maxEjectionPercent": 100}}


def test_ejected_versions_are_skipped():
    addon = Routing(routed_state([{"name": "default"}], **OUTLIER))
    eject(addon, V1)
    flows = [flow_to() for _ in range(4)]

    for flow in flows:
        addon.requestheaders(flow)

    assert [f.metadata[routing.META_VERSION] for f in flows] == ["v2"] * 4


def test_panic_mode_when_every_candidate_is_ejected():
    addon = Routing(routed_state([{"name": "default", "split": [{"version": "v2", "weight": 100}]}], **OUTLIER))
    eject(addon, V2)
    flow = flow_to()

    addon.requestheaders(flow)

    assert flow.metadata[routing.META_VERSION] == "v2"  # Envoy's panic: better than nothing


def test_pick_again_prefers_untried_versions_and_releases_the_previous_one():
    addon = Routing(routed_state([{"name": "default"}], "least-request"))
    flow = flow_to()
    addon.requestheaders(flow)
    first = flow.metadata[routing.META_UPSTREAM]

    second = routing.pick_again(flow, [first])

    assert second != first
    assert flow.request.host == second.host
    assert flow.request.headers["Host"] == "payment:8080"
    assert in_flight(addon) == {first: 0, second: 1}
    assert routing.pick_again(flow, [V1, V2]) in (V1, V2)  # everything tried: any will do
    routing.release(flow)
    assert in_flight(addon) == {V1: 0, V2: 0}


def test_pickers_are_built_once_per_config():
    state = routed_state([CANARY, {"name": "default"}])
    addon = Routing(state)
    table = addon._table

    for _ in range(3):
        addon.requestheaders(flow_to())

    assert addon._table is table
    state.apply(mesh_config(version="def456"))
    assert addon._table is not table
