"""Resilience: the client side's forwarder against real loopback HTTP servers.

Versions are 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux), both servers
on the same port, since a request keeps the port the app called.
"""

import asyncio
import json
import time

import pytest
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from h2_backends import H2Backend
from h2_backends import Reply as H2Reply
from http_backends import Backend, Reply, fail_first, ok
from meshproxy import config
from meshproxy.addons import routing
from meshproxy.addons.resilience import META_ATTEMPTS, CircuitBreaker, Resilience, backoff, is_retriable
from meshproxy.addons.routing import Routing
from meshproxy.config import Identity, MeshState
from meshproxy.outlier import Outliers

V1_HOST, V2_HOST, NOBODY_HOST = "127.0.0.1", "127.0.0.2", "127.0.0.3"


class Sidecar:
    """Routing + Resilience of one client sidecar, as the pipeline wires them."""

    def __init__(self, route: dict, versions=(("v1", V1_HOST),), **service) -> None:
        body = {"versions": [{"name": n, "host": h} for n, h in versions], "routes": [{"name": "main", **route}],
                **service}
        self.state = MeshState(Identity("shop", "web-v1", "web", "v1"))
        self.state.apply(config.parse(json.dumps({"schema": 2, "version": "abc", "services": {"payment": body}})))
        self.outliers = Outliers(self.state)
        self.routing = Routing(self.state, self.outliers)
        self.resilience = Resilience(self.state, self.outliers)

    async def call(self, port: int, method: str = "GET", content: bytes = b"", path: str = "/pay",
                   headers: tuple = ()) -> http.HTTPFlow:
        flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=port, method=method.encode(), path=path.encode(),
                                           content=content,
                                           headers=http.Headers(((b"Host", b"payment:%d" % port),) + headers)))
        flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
        self.routing.requestheaders(flow)
        await self.resilience.request(flow)
        return flow

    async def call_h2(self, port: int, method: str = "POST", content: bytes = b"", path: str = "/grpc.Pay/Charge",
                      headers: tuple = ((b"content-type", b"application/grpc"), (b"te", b"trailers"))
                      ) -> http.HTTPFlow:
        """A request as mitmproxy reads it from an app speaking HTTP/2 (prior knowledge)."""
        flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=port, method=method.encode(), path=path.encode(),
                                           authority=b"payment:%d" % port, http_version=b"HTTP/2.0",
                                           content=content, headers=http.Headers(headers)))
        flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
        self.routing.requestheaders(flow)
        await self.resilience.request(flow)
        return flow


def run(scenario) -> None:
    async def main():
        with taddons.context():
            await scenario()
    asyncio.run(main())


RETRY_5XX = {"retries": {"attempts": 3, "retryOn": ["5xx"], "backoffMs": 1}}


def test_a_plain_request_is_forwarded_with_the_apps_host_and_without_hop_by_hop_headers():
    async def scenario():
        async with Backend(lambda n, r: Reply(201, b"made", chunked=True, headers=[("x-answer", "42")])) as v1:
            flow = await Sidecar({}).call(v1.port, "POST", b"order=1", headers=(
                (b"Connection", b"keep-alive, x-private"), (b"x-private", b"1"), (b"x-kept", b"yes")))

        [request] = v1.requests
        assert (request.method, request.target, request.body) == ("POST", "/pay", b"order=1")
        assert request.headers["host"] == f"payment:{v1.port}"
        assert request.headers["x-meshcli-source"] == "web-v1"
        assert request.headers["x-kept"] == "yes"
        assert "x-private" not in request.headers and "connection" not in request.headers
        response = flow.response
        assert (response.status_code, response.raw_content, response.headers["x-answer"]) == (201, b"made", "42")
        # the body is whole: chunked framing became a length
        assert "transfer-encoding" not in response.headers
        assert response.headers["content-length"] == "4"
        assert flow.metadata[META_ATTEMPTS] == 1
        assert flow.metadata[routing.META_FLAGS] == []

    run(scenario)


def test_retries_turn_failures_into_a_success():
    async def scenario():
        async with Backend(fail_first(2)) as v1:
            flow = await Sidecar(RETRY_5XX).call(v1.port)

        assert flow.response.status_code == 200
        assert flow.metadata[META_ATTEMPTS] == 3
        assert len(v1.requests) == 3
        assert flow.metadata[routing.META_FLAGS] == []

    run(scenario)


def test_a_retry_prefers_a_version_not_tried_yet():
    async def scenario():
        async with Backend(lambda n, r: Reply(503)) as v1, Backend(ok, V2_HOST, v1.port) as v2:
            sidecar = Sidecar({"retries": {"attempts": 1, "retryOn": ["gateway-error"], "backoffMs": 1}},
                              versions=(("v1", V1_HOST), ("v2", V2_HOST)))
            flow = await sidecar.call(v1.port)  # round robin starts with v1

        assert flow.response.status_code == 200
        assert (len(v1.requests), len(v2.requests)) == (1, 1)
        assert flow.metadata[routing.META_VERSION] == "v2"  # the version that answered

    run(scenario)


def test_exhausted_retries_return_the_last_answer_with_urx():
    async def scenario():
        async with Backend(lambda n, r: Reply(500, b"broken")) as v1:
            flow = await Sidecar({"retries": {"attempts": 2, "retryOn": ["5xx"], "backoffMs": 1}}).call(v1.port)

        assert (flow.response.status_code, flow.response.raw_content) == (500, b"broken")
        assert flow.metadata[META_ATTEMPTS] == 3
        assert flow.metadata[routing.META_FLAGS] == ["URX"]

    run(scenario)


def test_status_codes_outside_retry_on_are_not_retried():
    async def scenario():
        async with Backend(fail_first(1, status=500)) as v1:
            flow = await Sidecar({"retries": {"attempts": 3, "retryOn": ["gateway-error"]}}).call(v1.port)
        async with Backend(fail_first(1, status=409)) as v1:
            conflict = await Sidecar({"retries": {"attempts": 3, "retryOn": ["retriable-status-codes"],
                                                  "retriableStatusCodes": [409], "backoffMs": 1}}).call(v1.port)

        assert (flow.response.status_code, flow.metadata[META_ATTEMPTS]) == (500, 1)
        assert (conflict.response.status_code, conflict.metadata[META_ATTEMPTS]) == (200, 2)

    run(scenario)


def test_post_is_not_retried_unless_allowed():
    async def scenario():
        async with Backend(fail_first(1)) as v1:
            refused = await Sidecar(RETRY_5XX).call(v1.port, "POST", b"x")
        async with Backend(fail_first(1)) as v1:
            allowed = await Sidecar({"retries": {**RETRY_5XX["retries"], "retryNonIdempotent": True}}).call(
                v1.port, "POST", b"x")

        assert (refused.response.status_code, refused.metadata[META_ATTEMPTS]) == (503, 1)
        assert refused.metadata[routing.META_FLAGS] == []
        assert (allowed.response.status_code, allowed.metadata[META_ATTEMPTS]) == (200, 2)

    run(scenario)


def test_a_connect_failure_is_retried_even_for_post():
    async def scenario():
        async with Backend(ok, V2_HOST) as v2:
            sidecar = Sidecar({"retries": {"attempts": 1, "retryOn": ["connect-failure"], "backoffMs": 1}},
                              versions=(("v1", NOBODY_HOST), ("v2", V2_HOST)))
            flow = await sidecar.call(v2.port, "POST", b"x")

        assert flow.response.status_code == 200
        assert flow.metadata[META_ATTEMPTS] == 2
        assert v2.requests[0].body == b"x"

    run(scenario)


def test_a_connect_failure_with_nothing_else_to_try_is_503_uf():
    async def scenario():
        async with Backend(ok, V2_HOST) as free:  # only to get a port nobody listens on at NOBODY_HOST
            flow = await Sidecar({}, versions=(("v1", NOBODY_HOST),)).call(free.port)

        assert flow.response.status_code == 503
        assert flow.response.raw_content == (b"upstream connect error or disconnect/reset before headers. "
                                             b"reset reason: connection failure")
        assert flow.metadata[routing.META_FLAGS] == ["UF"]

    run(scenario)


def test_a_reset_is_retried_and_without_retries_is_503():
    async def scenario():
        reset_once = lambda n, r: Reply(reset=True) if n == 1 else Reply()  # noqa: E731
        async with Backend(reset_once) as v1:
            retried = await Sidecar({"retries": {"attempts": 1, "retryOn": ["reset"], "backoffMs": 1}}).call(v1.port)
        async with Backend(reset_once) as v1:
            plain = await Sidecar({}).call(v1.port)

        assert (retried.response.status_code, retried.metadata[META_ATTEMPTS]) == (200, 2)
        assert plain.response.status_code == 503
        assert b"reset reason: connection termination" in plain.response.raw_content
        assert plain.metadata[routing.META_FLAGS] == ["UC"]

    run(scenario)


def test_per_try_timeout_gives_up_on_a_slow_try_and_retries():
    async def scenario():
        async with Backend(lambda n, r: Reply(delay=2.0) if n == 1 else Reply()) as v1:
            started = time.monotonic()
            flow = await Sidecar({"retries": {"attempts": 2, "perTryTimeoutMs": 100, "retryOn": ["5xx"],
                                              "backoffMs": 1}}).call(v1.port)
            elapsed = time.monotonic() - started

        assert flow.response.status_code == 200
        assert flow.metadata[META_ATTEMPTS] == 2
        assert elapsed < 1.0

    run(scenario)


def test_the_route_timeout_covers_the_whole_exchange():
    async def scenario():
        async with Backend(lambda n, r: Reply(delay=2.0)) as v1:
            started = time.monotonic()
            flow = await Sidecar({"timeoutMs": 300, "retries": {"attempts": 5, "perTryTimeoutMs": 200,
                                                                "retryOn": ["5xx"], "backoffMs": 1}}).call(v1.port)
            elapsed = time.monotonic() - started

        assert (flow.response.status_code, flow.response.raw_content) == (504, b"upstream request timeout")
        assert "UT" in flow.metadata[routing.META_FLAGS]
        assert 0.25 < elapsed < 0.6
        assert flow.metadata[META_ATTEMPTS] == 2  # 200 ms, then the 100 ms left

    run(scenario)


def test_time_spent_before_forwarding_counts_against_the_deadline():
    # e.g. a delay the Faults addon injected: the deadline started when Routing saw the request
    async def scenario():
        async with Backend() as v1:
            sidecar = Sidecar({"timeoutMs": 50})
            flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=v1.port, content=b"",
                                               headers=http.Headers(((b"Host", b"payment:%d" % v1.port),))))
            flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
            sidecar.routing.requestheaders(flow)
            await asyncio.sleep(0.06)
            await sidecar.resilience.request(flow)

        assert flow.response.status_code == 504
        assert v1.requests == []

    run(scenario)


def test_circuit_breaker_overflow_is_refused_at_once():
    async def scenario():
        async with Backend(lambda n, r: Reply(delay=0.3)) as v1:
            sidecar = Sidecar({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1})
            calls = [asyncio.create_task(sidecar.call(v1.port)) for _ in range(3)]
            refused = await calls[2]
            in_flight = [task.done() for task in calls[:2]]
            answered = await asyncio.gather(*calls[:2])

        assert in_flight == [False, False]  # the third was refused while the others still ran
        assert refused.response.status_code == 503
        assert refused.response.headers["x-meshcli-circuit"] == "open"
        assert refused.response.raw_content.endswith(b"reset reason: overflow")
        assert refused.metadata[routing.META_FLAGS] == ["UO"]
        assert [f.response.status_code for f in answered] == [200, 200]
        assert len(v1.requests) == 2

    run(scenario)


def test_waiting_for_a_circuit_breaker_slot_is_not_the_hosts_per_try_time():
    # As in Envoy, the per-try timeout starts when the try gets a slot, and a wait in
    # this sidecar's own queue is never held against the host by outlier detection.
    async def scenario():
        async with Backend(lambda n, r: Reply(delay=0.1)) as v1:
            sidecar = Sidecar({"retries": {"attempts": 0, "perTryTimeoutMs": 150}},
                              circuitBreaker={"maxConnections": 1, "maxPendingRequests": 5},
                              outlierDetection={"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 1})
            flows = await asyncio.gather(sidecar.call(v1.port), sidecar.call(v1.port))
            slow = await asyncio.gather(*(sidecar.call(v1.port) for _ in range(2)))

        assert [f.response.status_code for f in flows + slow] == [200, 200, 200, 200]
        assert sidecar.outliers.services["payment"].ejected_hosts() == frozenset()

    run(scenario)


def test_the_deadline_passing_while_waiting_for_a_slot_is_504_ut_without_blaming_the_host():
    async def scenario():
        async with Backend(lambda n, r: Reply(delay=0.3)) as v1:
            # requests with x-short get a 100 ms timeout; the others (the default route) none
            sidecar = Sidecar({"match": [{"headers": [{"name": "x-short", "kind": "present"}]}], "timeoutMs": 100},
                              circuitBreaker={"maxConnections": 1},
                              outlierDetection={"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 1})
            holder = asyncio.create_task(sidecar.call(v1.port))
            await asyncio.sleep(0.05)
            waiting = await sidecar.call(v1.port, headers=((b"x-short", b"1"),))
            await holder

        assert (waiting.response.status_code, waiting.metadata[routing.META_FLAGS]) == (504, ["UT"])
        assert len(v1.requests) == 1
        assert sidecar.outliers.services["payment"].ejected_hosts() == frozenset()

    run(scenario)


def test_circuit_breaker_slot_handover_and_cancelled_waiters():
    async def scenario():
        breaker = CircuitBreaker()
        breaker.configure(config.CircuitBreaker(max_connections=1, max_pending_requests=2))
        assert await breaker.acquire()
        waiting = asyncio.create_task(breaker.acquire())
        gave_up = asyncio.create_task(breaker.acquire())
        await asyncio.sleep(0)
        gave_up.cancel()
        breaker.release()  # the slot goes to the first waiter

        assert await waiting
        assert breaker.in_flight == 1
        breaker.release()
        assert breaker.in_flight == 0
        assert not breaker._waiters

    run(scenario)


@pytest.mark.parametrize(("per_connection", "connections"), [(2, 3), (0, 1), (None, 1)])
def test_max_requests_per_connection(per_connection, connections):
    async def scenario():
        async with Backend() as v1:
            sidecar = Sidecar({}, circuitBreaker={"maxRequestsPerConnection": per_connection})
            for _ in range(5):
                assert (await sidecar.call(v1.port)).response.status_code == 200
            assert v1.connections == connections

    run(scenario)


def test_outlier_detection_moves_traffic_away_and_lets_it_back():
    async def scenario():
        healthy = {"v1": False}
        v1_reply = lambda n, r: Reply() if healthy["v1"] else Reply(503)  # noqa: E731
        async with Backend(v1_reply) as v1, Backend(ok, V2_HOST, v1.port) as v2:
            sidecar = Sidecar({}, versions=(("v1", V1_HOST), ("v2", V2_HOST)),
                              outlierDetection={"consecutive5xxErrors": 2, "baseEjectionTimeMs": 300,
                                                "maxEjectionPercent": 50})
            before = [(await sidecar.call(v1.port)).metadata[routing.META_VERSION] for _ in range(4)]
            during = [(await sidecar.call(v1.port)).metadata[routing.META_VERSION] for _ in range(6)]
            stats = sidecar.outliers.stats()
            healthy["v1"] = True
            await asyncio.sleep(0.35)
            after = [(await sidecar.call(v1.port)).metadata[routing.META_VERSION] for _ in range(4)]

        assert before == ["v1", "v2", "v1", "v2"]  # the second 503 in a row ejects v1
        assert during == ["v2"] * 6
        assert stats["payment"]["ejected"][0]["version"] == "v1"
        assert sorted(after) == ["v1", "v1", "v2", "v2"]

    run(scenario)


GRPC_OK = H2Reply(body=b"\x00\x00\x00\x00\x02ok", headers=[("content-type", "application/grpc")],
                  trailers=[("grpc-status", "0")])


def test_an_http2_request_goes_out_over_http2_with_its_trailers_back():
    async def scenario():
        async with H2Backend(lambda n, r: GRPC_OK) as v1:
            sidecar = Sidecar({})
            flows = await asyncio.gather(*(sidecar.call_h2(v1.port, content=b"\x00\x00\x00\x00\x01x")
                                           for _ in range(5)))

        request = v1.requests[0]
        assert request.headers[:4] == [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.Pay/Charge"),
                                       (":authority", f"payment:{v1.port}")]
        assert ("te", "trailers") in request.headers
        assert request.header("x-meshcli-source") == "web-v1"
        assert request.body == b"\x00\x00\x00\x00\x01x"
        assert v1.connections == 1  # the five calls shared one connection
        response = flows[0].response
        assert (response.status_code, response.http_version) == (200, "HTTP/2.0")
        assert response.raw_content == b"\x00\x00\x00\x00\x02ok"
        assert response.trailers.fields == ((b"grpc-status", b"0"),)
        assert flows[0].metadata[routing.META_FLAGS] == []

    run(scenario)


def test_http2_retries_a_reset_stream_and_a_5xx():
    async def scenario():
        replies = {1: H2Reply(reset=True), 2: H2Reply(503)}
        async with H2Backend(lambda n, r: replies.get(n, GRPC_OK)) as v1:
            retry_on = {"attempts": 2, "retryOn": ["reset", "5xx"], "retryNonIdempotent": True, "backoffMs": 1}
            flow = await Sidecar({"retries": retry_on}).call_h2(v1.port)

        assert (flow.response.status_code, flow.metadata[META_ATTEMPTS]) == (200, 3)
        assert flow.response.trailers["grpc-status"] == "0"
        assert v1.connections == 1  # a reset stream does not cost the connection

    run(scenario)


def test_http2_timeout_is_504_and_cancels_only_that_stream():
    async def scenario():
        slow = lambda n, r: H2Reply(delay=2.0) if n == 1 else GRPC_OK  # noqa: E731
        async with H2Backend(slow) as v1:
            sidecar = Sidecar({"timeoutMs": 100})
            started = time.monotonic()
            timed_out = await sidecar.call_h2(v1.port)
            elapsed = time.monotonic() - started
            after = await sidecar.call_h2(v1.port)

        assert (timed_out.response.status_code, timed_out.response.raw_content) == (504, b"upstream request timeout")
        assert timed_out.metadata[routing.META_FLAGS] == ["UT"]
        assert elapsed < 0.5
        assert after.response.status_code == 200
        assert [code for _, code in v1.client_resets] == [8]  # CANCEL
        assert v1.connections == 1

    run(scenario)


def test_http2_circuit_breaker_overflow_is_refused_at_once():
    async def scenario():
        async with H2Backend(lambda n, r: H2Reply(delay=0.3)) as v1:
            sidecar = Sidecar({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1})
            calls = [asyncio.create_task(sidecar.call_h2(v1.port)) for _ in range(3)]
            refused = await calls[2]
            answered = await asyncio.gather(*calls[:2])

        assert (refused.response.status_code, refused.metadata[routing.META_FLAGS]) == (503, ["UO"])
        assert refused.response.headers["x-meshcli-circuit"] == "open"
        assert [f.response.status_code for f in answered] == [200, 200]
        assert len(v1.requests) == 2

    run(scenario)


def test_flows_it_does_not_handle_are_left_to_mitmproxy():
    async def scenario():
        sidecar = Sidecar({})
        port = 9  # nothing is sent anywhere

        def flow_for(**changes):
            flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=port,
                                               headers=http.Headers(((b"Host", b"payment:9"),))))
            flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
            sidecar.routing.requestheaders(flow)
            for name, value in changes.items():
                setattr(flow.request, name, value)
            return flow

        outside = flow_for()
        outside.request.headers["Host"] = "example.com"
        outside.metadata.clear()
        sidecar.routing.requestheaders(outside)
        streamed = flow_for(stream=True)
        with_trailers = flow_for(trailers=http.Headers(((b"x-checksum", b"1"),)))
        websocket = flow_for()
        websocket.request.headers["Upgrade"] = "websocket"
        answered = flow_for()
        answered.response = tutils.tresp()
        killed = flow_for()
        killed.kill()
        inbound = flow_for()
        inbound.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.INBOUND_PORT}")
        inbound.metadata.clear()
        sidecar.routing.requestheaders(inbound)

        for flow in (outside, streamed, with_trailers, websocket, killed, inbound):
            await sidecar.resilience.request(flow)
            assert flow.response is None
            assert META_ATTEMPTS not in flow.metadata
        await sidecar.resilience.request(answered)
        assert answered.response.status_code == 200

    run(scenario)


def test_a_request_h11_cannot_write_is_left_to_mitmproxy():
    async def scenario():
        async with Backend() as v1:
            sidecar = Sidecar({})
            flow = await sidecar.call(v1.port, path="/caf\u00e9?q=1")  # a raw UTF-8 path, as curl sends it

        assert flow.response is None  # no addon error: mitmproxy forwards it to the chosen version
        assert flow.request.host == V1_HOST
        assert v1.requests == [] and sidecar.resilience.pool.opened == 0

    run(scenario)


def test_an_http10_servers_answer_is_given_in_the_apps_version_with_every_header():
    # An HTTP/1.0 answer without a length is read until the server closes. Relayed as
    # HTTP/1.0 without its (hop-by-hop) Connection header, mitmproxy would close the
    # app's kept-alive connection after it.
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                     b"Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(serve, V1_HOST, 0)
        port = server.sockets[0].getsockname()[1]
        flow = await Sidecar({}).call(port, path="/pay?a=1&a=2")
        server.close()

        response = flow.response
        assert (response.status_code, response.http_version, response.raw_content) == (200, "HTTP/1.1", b"all of it")
        assert response.headers.fields == ((b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"9"))
        assert not http1.connection_close(flow.request.http_version, flow.request.headers)
        assert not http1.connection_close(response.http_version, response.headers)

    run(scenario)


@pytest.mark.parametrize(("retry_on", "failure", "status", "idempotent", "expected"), [
    (["connect-failure"], "connect-failure", 0, False, True),
    (["gateway-error"], "connect-failure", 0, True, True),
    (["retriable-status-codes"], "connect-failure", 0, True, False),
    (["reset"], "reset", 0, True, True),
    (["reset"], "reset", 0, False, False),
    (["connect-failure"], "reset", 0, True, False),
    (["5xx"], "timeout", 0, True, True),
    (["reset"], "timeout", 0, True, False),
    (["5xx"], None, 500, True, True),
    (["gateway-error"], None, 500, True, False),
    (["gateway-error"], None, 504, True, True),
    (["5xx"], None, 404, True, False),
])
def test_what_is_retriable(retry_on, failure, status, idempotent, expected):
    retries = config.Retries(attempts=1, retry_on=frozenset(retry_on))

    assert is_retriable(retries, failure, status, idempotent) is expected


def test_no_retry_policy_means_no_retry():
    assert not is_retriable(None, "connect-failure", 0, True)


def test_backoff_is_jittered_and_capped_at_ten_times_the_base():
    draws = [backoff(0.025, retry) for retry in range(10) for _ in range(50)]

    assert all(0 <= d <= 0.25 for d in draws)
    assert max(backoff(0.025, 0) for _ in range(200)) <= 0.025
    assert max(draws) > 0.2  # late retries reach near the cap
