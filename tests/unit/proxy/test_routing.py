"""Routing: outbound requests to a mesh service go to one of its versions.

policy/routing.py directly (Router on Exchanges), then through the fast path (HttpProxy
behind a real Listener, real loopback backends), then through the mitmproxy adapter.
"""

import asyncio
import dataclasses

import pytest
from mitmproxy.test import tflow, tutils

from http_backends import Backend
from meshproxy.config import Identity, MeshState, Version
from meshproxy.exchange import INBOUND, Exchange
from meshproxy.policy import routing
from meshproxy.policy.routing import SOURCE_HEADER, LazyQuery, Router, host_name
from sidecar_kit import (ORIGINAL_IP, PAYMENT, V1_HOST, V2_HOST, WEB, Adapters, RawServer, RunningSidecar, exchange_of,
                         flow_to, h2_flow_to, http_call, inbound, mesh_state, on_loop, outbound, parse, payment,
                         payment_state)

V1 = Version("v1", "payment-v1")
V2 = Version("v2", "payment-v2")
TWO = (("v1", V1.host), ("v2", V2.host))


def two_versions(load_balancer="round-robin", version="abc123", versions=TWO) -> MeshState:
    return mesh_state({"payment": payment(None, versions, ports=[8080], loadBalancer=load_balancer)},
                      version=version)


def reconfigure(state: MeshState, versions=TWO, version="def456") -> None:
    state.apply(parse({"payment": payment(None, versions, ports=[8080])}, version=version))


def routed(routes: list, load_balancer="round-robin", versions=TWO, **service) -> MeshState:
    return payment_state(routes, versions, loadBalancer=load_balancer, **service)


def in_flight(router: Router) -> dict:
    config, pickers = router._table
    return dict(pickers[id(config.services["payment"].routes[-1])].policy._active)


# -- the policy ------------------------------------------------------------------------------

def test_outbound_requests_alternate_between_versions():
    router = Router(two_versions())

    exchanges = [outbound(router)[0] for _ in range(4)]

    assert [e.upstream for e in exchanges] == [V1, V2, V1, V2]
    assert [e.version for e in exchanges] == ["v1", "v2", "v1", "v2"]
    assert [e.authority for e in exchanges] == ["payment:8080"] * 4  # the Host the server will see


def test_outbound_fills_in_the_exchange_and_adds_the_source_header():
    state = two_versions()
    exchange, added = outbound(Router(state))

    assert (exchange.source, exchange.service_name, exchange.version) == ("web-v1", "payment", "v1")
    assert exchange.service is state.config.services["payment"]
    assert exchange.route is state.config.services["payment"].routes[-1]
    assert exchange.flags == [] and exchange.picker is not None
    assert added == {SOURCE_HEADER: "web-v1"}


def test_outbound_returns_the_version_to_send_to():
    router = Router(two_versions())
    exchange = routing.Exchange("outbound", "GET", "payment", "/")

    assert router.outbound(exchange, {}, lambda n, v: None) == V1
    assert exchange.upstream == V1


def test_host_without_port_is_routed():
    exchange, _ = outbound(Router(two_versions()), authority="payment")

    assert exchange.upstream == V1


@pytest.mark.parametrize("authority", ["example.com", "example.com:443", "payment-v2:8080", "10.0.0.9:8080", ""])
def test_hosts_outside_the_mesh_are_left_alone(authority):
    # payment-v2 is a workload's own name: calling it directly bypasses the split
    exchange, added = outbound(Router(two_versions()), authority=authority)

    assert exchange.service_name == host_name(authority)
    assert (exchange.service, exchange.route, exchange.upstream, exchange.picker) == (None, None, None, None)
    assert exchange.version == "unknown"
    assert added == {}  # no mesh headers leave the mesh


def test_inbound_takes_the_source_and_does_not_route():
    router = Router(two_versions())
    router.state.identity = PAYMENT

    exchange = inbound(router, "checkout-v1")

    assert (exchange.direction, exchange.source, exchange.service_name, exchange.version) == (
        INBOUND, "checkout-v1", "payment", "v1")
    assert (exchange.route, exchange.upstream, exchange.picker) == (None, None, None)


def test_inbound_trusts_a_source_header_only_as_far_as_the_callers_certificate_goes():
    state = mesh_state({"payment": payment(None, TWO), "checkout": payment(None, (("v1", "checkout-v1"),))},
                       identity=PAYMENT)
    state.apply(dataclasses.replace(state.config, project="shop", version="with-project"))
    router = Router(state)
    checkout = "spiffe://cluster.local/ns/shop/sa/checkout"

    def caller(header, principal):
        exchange = Exchange(INBOUND, "GET", "payment:8080", "/pay")
        router.inbound(exchange, header, principal)
        return exchange.source

    assert caller("checkout-v1", checkout) == "checkout-v1"  # the header names one of its workloads
    assert caller("payment-v2", checkout) == "checkout"  # forged: the certificate says who calls
    assert caller(None, checkout) == "checkout"
    assert caller("payment-v2", "") == "payment-v2"  # plaintext: only the header is known
    assert caller("payment-v2", "spiffe://elsewhere/ns/x/sa/y") == "payment-v2"  # not this mesh's name


def test_inbound_without_source_header():
    assert inbound(Router(two_versions()), None).source == "unknown"


def test_least_request_is_released_when_the_exchange_is():
    router = Router(two_versions(load_balancer="least-request"))
    exchange, _ = outbound(router)
    assert in_flight(router)[exchange.upstream] == 1

    exchange.release()
    exchange.release()  # twice is harmless

    assert in_flight(router) == {V1: 0, V2: 0}


def test_release_ignores_exchanges_that_were_not_routed():
    router = Router(two_versions(load_balancer="least-request"))
    outbound(router)
    outside, _ = outbound(router, authority="example.com")

    outside.release()

    assert sum(in_flight(router).values()) == 1


def test_a_release_after_a_reload_goes_to_the_picker_that_counted_it():
    state = two_versions(load_balancer="least-request")
    router = Router(state)
    exchange, _ = outbound(router)
    old_picker = exchange.picker

    reconfigure(state)
    exchange.release()

    assert old_picker.policy._active == {V1: 0, V2: 0}
    assert old_picker is not router._table[1][id(state.config.services["payment"].routes[-1])]


def test_new_config_rebuilds_balancers():
    state = two_versions()
    router = Router(state)
    assert outbound(router)[0].upstream == V1

    reconfigure(state, versions=(("v2", V2.host),))

    assert [outbound(router)[0].upstream for _ in range(3)] == [V2] * 3


def test_new_config_restarts_round_robin():
    state = two_versions()
    router = Router(state)
    outbound(router)  # v1: the next would be v2

    reconfigure(state)

    assert outbound(router)[0].upstream == V1


def test_before_any_config_nothing_is_routed():
    exchange, added = outbound(Router(MeshState(WEB)))

    assert exchange.service is None and exchange.upstream is None
    assert exchange.service_name == "payment" and added == {}


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


def test_lazy_query_parses_only_when_read_and_keeps_the_first_value():
    query = LazyQuery("/pay?a=1&a=2&flag&b=%20x")
    assert query._parsed is None

    assert dict(query) == {"a": "1", "flag": "", "b": " x"}
    assert len(query) == 3 and query["flag"] == "" and "c" not in query
    assert dict(LazyQuery("/pay")) == {}


# -- routes, splits, ejections -------------------------------------------------------------

SPLIT_90_10 = [{"name": "default", "split": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]}]


def test_a_90_10_split_is_exact_over_1000_requests():
    router = Router(routed(SPLIT_90_10))
    counts = {"v1": 0, "v2": 0}

    for _ in range(1000):
        counts[outbound(router)[0].version] += 1

    assert counts == {"v1": 900, "v2": 100}


def test_a_random_split_is_close():
    router = Router(routed(SPLIT_90_10, "random"))

    v2 = sum(outbound(router)[0].version == "v2" for _ in range(2000))

    assert 140 <= v2 <= 260


CANARY = {"name": "canary", "match": [{"headers": [{"name": "X-Canary", "kind": "exact", "value": "true"}]},
                                      {"query": [{"name": "canary", "kind": "present"}]}],
          "split": [{"version": "v2", "weight": 100}], "timeoutMs": 250}
API_GET = {"name": "api-get", "match": [{"path": {"kind": "prefix", "value": "/api"}, "methods": ["GET"],
                                         "source": "web"}], "split": [{"version": "v1", "weight": 100}]}
REGEX = {"name": "orders", "match": [{"path": {"kind": "regex", "value": "/orders/[0-9]+"}}],
         "split": [{"version": "v2", "weight": 100}]}


@pytest.mark.parametrize(("method", "path", "headers", "route", "version"), [
    ("GET", "/pay", {"x-canary": "true"}, "canary", "v2"),
    ("GET", "/pay", {"x-canary": "TRUE"}, "default", "v1"),  # exact is exact
    ("GET", "/pay?canary", {}, "canary", "v2"),  # OR between match entries
    ("GET", "/api/items?x=1", {}, "api-get", "v1"),
    ("POST", "/api/items", {}, "default", "v1"),  # AND inside an entry
    ("GET", "/orders/17", {}, "orders", "v2"),
    ("GET", "/orders/17/lines", {}, "default", "v1"),  # a regex matches the whole path
    ("GET", "/orders/17?canary=1", {}, "canary", "v2"),  # the query is not part of the path
])
def test_the_first_matching_route_decides(method, path, headers, route, version):
    router = Router(routed([CANARY, API_GET, REGEX, {"name": "default"}]))

    exchange, _ = outbound(router, method=method, path=path, headers=headers)

    assert (exchange.route.name, exchange.version) == (route, version)


def test_a_given_query_mapping_is_used_instead_of_parsing_the_path():
    router = Router(routed([CANARY, {"name": "default"}]))
    exchange = routing.Exchange("outbound", "GET", "payment", "/pay")

    router.outbound(exchange, {}, lambda n, v: None, query={"canary": "1"})

    assert exchange.route.name == "canary"


def test_a_source_match_only_takes_that_callers_requests():
    state = routed([API_GET, {"name": "default", "split": [{"version": "v2", "weight": 100}]}])
    state.identity = Identity("shop", "admin-v1", "admin", "v1")

    assert outbound(Router(state), path="/api/items")[0].route.name == "default"


def test_the_route_timeout_sets_the_deadline():
    state = routed([CANARY, {"name": "default"}])
    before = routing.now()

    exchange, _ = outbound(Router(state), headers={"x-canary": "true"})

    assert exchange.route is state.config.services["payment"].routes[0]
    assert exchange.upstream == V2
    assert before + 0.25 <= exchange.deadline <= routing.now() + 0.25


def test_no_route_timeout_means_no_deadline():
    assert outbound(Router(two_versions()))[0].deadline is None


OUTLIER = {"outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTimeMs": 60000, "maxEjectionPercent": 100}}


def eject(router: Router, version: Version) -> None:
    health = router.outliers.services["payment"]
    for _ in range(5):
        health.record(version.host, 503)
    assert version.host in health.ejected_hosts()


def test_ejected_versions_are_skipped():
    router = Router(routed([{"name": "default"}], **OUTLIER))
    eject(router, V1)

    assert [outbound(router)[0].version for _ in range(4)] == ["v2"] * 4


def test_ejected_versions_are_skipped_by_a_split_too():
    router = Router(routed([{"name": "default", "split": [{"version": "v1", "weight": 50},
                                                          {"version": "v2", "weight": 50}]}], **OUTLIER))
    eject(router, V2)

    assert [outbound(router)[0].version for _ in range(4)] == ["v1"] * 4


def test_panic_mode_when_every_candidate_is_ejected():
    router = Router(routed([{"name": "default", "split": [{"version": "v2", "weight": 100}]}], **OUTLIER))
    eject(router, V2)

    assert outbound(router)[0].version == "v2"  # Envoy's panic: better than nothing


def test_pick_again_prefers_untried_versions_and_releases_the_previous_one():
    router = Router(routed([{"name": "default"}], "least-request"))
    exchange, _ = outbound(router)
    first = exchange.upstream

    second = exchange.pick_again([first])

    assert second != first and exchange.upstream == second and exchange.version == second.name
    assert in_flight(router) == {first: 0, second: 1}
    assert exchange.pick_again([V1, V2]) in (V1, V2)  # everything tried: any will do
    exchange.release()
    assert in_flight(router) == {V1: 0, V2: 0}


def test_pick_again_on_a_split_stays_within_the_split_and_prefers_the_untried_version():
    half = Router(routed([{"name": "default", "split": [{"version": "v1", "weight": 50},
                                                        {"version": "v2", "weight": 50}]}]))
    only_v2 = Router(routed([{"name": "default", "split": [{"version": "v2", "weight": 100}]}]))
    exchange, _ = outbound(half)
    pinned, _ = outbound(only_v2)

    first = exchange.upstream
    assert exchange.pick_again([first]) != first
    assert [pinned.pick_again([V2]) for _ in range(3)] == [V2] * 3  # v1 is not in the route's split


def test_pickers_are_built_once_per_config():
    state = routed([CANARY, {"name": "default"}])
    router = Router(state)
    table = router._table

    for _ in range(3):
        outbound(router)

    assert router._table is table
    reconfigure(state)
    assert router._table is not table


def test_routes_without_a_split_share_the_services_balancer():
    router = Router(routed([CANARY, {"name": "plain", "match": [{"methods": ["POST"]}]}, {"name": "default"}],
                           "least-request"))
    config, pickers = router._table
    routes = config.services["payment"].routes

    assert pickers[id(routes[1])] is pickers[id(routes[2])]  # least-request sees every request to the service
    assert pickers[id(routes[0])] is not pickers[id(routes[2])]


# -- through the fast path ------------------------------------------------------------------

@on_loop
async def test_fast_path_sends_each_request_to_the_chosen_version_with_the_apps_host():
    async with Backend() as v1, Backend(host=V2_HOST, port=v1.port) as v2:
        async with RunningSidecar(payment_state(None, (("v1", V1_HOST), ("v2", V2_HOST)))) as web:
            replies = [await web.call(v1.port) for _ in range(4)]

    assert [r.status for r in replies] == [200] * 4
    assert (len(v1.requests), len(v2.requests)) == (2, 2)
    for request in v1.requests + v2.requests:
        assert request.headers["host"] == f"payment:{v1.port}"  # the name the app called, not the pod
        assert request.headers[SOURCE_HEADER] == "web-v1"


@on_loop
async def test_fast_path_sends_calls_outside_the_mesh_where_the_app_sent_them():
    async with Backend() as elsewhere:
        async with RunningSidecar(payment_state()) as web:
            web.to(elsewhere.port, ip="127.0.0.1")
            reply = await http_call("127.0.0.1", web.outbound_port, host="example.com")
            no_host = await http_call("127.0.0.1", web.outbound_port, host=None)

    assert (reply.status, no_host.status) == (200, 200)
    assert elsewhere.requests[0].headers["host"] == "example.com"
    assert SOURCE_HEADER not in elsewhere.requests[0].headers
    assert elsewhere.requests[1].headers["host"] == f"127.0.0.1:{elsewhere.port}"  # the original destination
    assert [e["destination_service"] for e in web.log_lines()] == ["example.com", "127.0.0.1"]


@on_loop
async def test_fast_path_inbound_takes_the_source_header_off_before_the_app():
    async with Backend() as app:
        async with RunningSidecar(payment_state(identity=PAYMENT)) as sidecar:
            reply = await sidecar.call(app.port, headers=((SOURCE_HEADER, "checkout-v1"),), direction=INBOUND,
                                       ip="127.0.0.1")

    assert reply.status == 200
    assert SOURCE_HEADER not in app.requests[0].headers
    [entry] = sidecar.log_lines()
    assert (entry["direction"], entry["source"], entry["destination_service"]) == ("inbound", "checkout-v1", "payment")


@on_loop
async def test_fast_path_a_source_header_from_the_app_is_replaced():
    async with Backend() as app:
        async with RunningSidecar(payment_state(identity=PAYMENT), V2_HOST, inbound_port=app.port) as payment_side:
            payment_side.to(app.port, ip="127.0.0.1")
            async with RunningSidecar(payment_state(versions=(("v1", V2_HOST),))) as web:
                await web.call(app.port, headers=((SOURCE_HEADER, "spoofed"),))

    assert payment_side.log_lines()[0]["source"] == "web-v1"


@on_loop
async def test_fast_path_sends_only_its_own_source_header():
    heads = []

    async def capture(reader, writer):
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async with RawServer(capture) as server, RunningSidecar(payment_state()) as web:
        reply = await web.call(server.port, headers=((SOURCE_HEADER, "spoofed"),))

    assert reply.status == 200
    sources = [line for line in heads[0].split(b"\r\n") if line.lower().startswith(SOURCE_HEADER.encode())]
    assert sources == [SOURCE_HEADER.encode() + b": web-v1"]


@on_loop
async def test_fast_path_releases_least_request_counts():
    async with Backend() as v1, Backend(host=V2_HOST, port=v1.port) as v2:
        async with RunningSidecar(payment_state(None, (("v1", V1_HOST), ("v2", V2_HOST)),
                                          loadBalancer="least-request")) as web:
            await asyncio.gather(*(web.call(v1.port) for _ in range(6)))
            counts = in_flight(web.router)

    assert set(counts.values()) == {0}
    assert len(v1.requests) + len(v2.requests) == 6


# -- through the mitmproxy adapter -------------------------------------------------------------

def test_adapter_routes_the_flow_and_keeps_the_apps_host():
    adapters = Adapters(two_versions())
    flows = [flow_to() for _ in range(3)]

    for flow in flows:
        adapters.routing.requestheaders(flow)

    assert [f.request.host for f in flows] == ["payment-v1", "payment-v2", "payment-v1"]
    assert [f.request.port for f in flows] == [8080] * 3
    assert [f.request.headers["Host"] for f in flows] == ["payment:8080"] * 3
    assert [exchange_of(f).version for f in flows] == ["v1", "v2", "v1"]
    assert exchange_of(flows[0]).picker.policy is adapters.sidecar.router._table[1][id(
        exchange_of(flows[0]).route)].policy  # the fast path's router: one policy for both paths


def test_adapter_replaces_a_source_header_from_the_app():
    flow = flow_to(headers=((SOURCE_HEADER.encode(), b"spoofed"),))

    Adapters(two_versions()).routing.requestheaders(flow)

    assert flow.request.headers.get_all(SOURCE_HEADER) == ["web-v1"]


def test_adapter_routes_at_the_headers_before_a_streamed_body():
    flow = flow_to(headers=((b"Content-Length", b"5000000"),))
    flow.request.data.content = None  # the body has not been read
    flow.request.stream = True

    Adapters(two_versions()).routing.requestheaders(flow)

    assert flow.request.host == V1.host


def test_adapter_keeps_the_http2_authority():
    flow = h2_flow_to(8080)

    Adapters(two_versions()).routing.requestheaders(flow)

    assert flow.request.host == "payment-v1"
    assert flow.request.authority == "payment:8080"
    assert exchange_of(flow).protocol == "HTTP/2.0" and exchange_of(flow).grpc


def test_adapter_leaves_calls_outside_the_mesh_alone():
    flow = flow_to(host_header="example.com")

    Adapters(two_versions()).routing.requestheaders(flow)

    assert flow.request.host == ORIGINAL_IP and SOURCE_HEADER not in flow.request.headers
    assert exchange_of(flow).service_name == "example.com"


def test_adapter_leaves_a_request_without_host_alone():
    flow = flow_to(host_header=None)

    Adapters(two_versions()).routing.requestheaders(flow)

    assert flow.request.host == ORIGINAL_IP
    assert exchange_of(flow).service is None and SOURCE_HEADER not in flow.request.headers


def test_adapter_inbound_pops_the_source_header():
    adapters = Adapters(two_versions())
    adapters.sidecar.state.identity = PAYMENT
    flow = flow_to(direction=INBOUND, headers=((SOURCE_HEADER.encode(), b"checkout-v1"),))

    adapters.routing.requestheaders(flow)

    assert flow.request.host == ORIGINAL_IP
    assert SOURCE_HEADER not in flow.request.headers  # the app never sees it
    exchange = exchange_of(flow)
    assert (exchange.direction, exchange.source, exchange.service_name) == (INBOUND, "checkout-v1", "payment")


@pytest.mark.parametrize("outcome", ["response", "error"])
def test_adapter_releases_least_request_on_response_or_error(outcome):
    adapters = Adapters(two_versions(load_balancer="least-request"))
    flow = flow_to()
    adapters.routing.requestheaders(flow)
    assert sum(in_flight(adapters.sidecar.router).values()) == 1

    if outcome == "response":
        flow.response = tutils.tresp()
    else:
        flow.error = tflow.terr()
    getattr(adapters.routing, outcome)(flow)

    assert in_flight(adapters.sidecar.router) == {V1: 0, V2: 0}
