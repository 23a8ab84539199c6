"""Mirroring: copies to the mirror version, fire and forget, never touching the caller's answer.

policy/mirroring.py directly, then through the fast path against real loopback backends,
then through the mitmproxy adapter (HTTP/1 and HTTP/2).
"""

import asyncio
import time

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from h2_backends import H2Backend
from http_backends import Backend, Reply, fail_first, ok
from meshproxy.fastpath.http1 import BUFFER_LIMIT
from meshproxy.policy import mirroring as mirroring_module
from meshproxy.policy.mirroring import Mirroring, shadow_authority
from meshproxy.policy.routing import Router
from sidecar_kit import (V1_HOST, V2_HOST, Adapters, RunningSidecar, exchange_of, flow_to, h2_flow_to, handover_mode,
                         on_loop, outbound, payment_state, until)

TWO = (("v1", V1_HOST), ("v2", V2_HOST))


def mirrored(percent: float = 100, **route):
    return payment_state([{"name": "default", "split": [{"version": "v1", "weight": 100}],
                           "mirror": {"version": "v2", "percent": percent}, **route}], TWO)


# -- the policy ------------------------------------------------------------------------------

def test_wants_copy_names_the_mirror_version():
    router = Router(mirrored(100))
    exchange, _ = outbound(router)

    version = Mirroring().wants_copy(exchange)

    assert (version.name, version.host) == ("v2", V2_HOST)
    assert exchange.version == "v1"  # the caller's request still goes to v1


@pytest.mark.parametrize(("percent", "copies"), [(0, 0), (30, 30), (100, 100)])
def test_wants_copy_samples_an_exact_share(percent, copies):
    router, policy = Router(mirrored(percent)), Mirroring()

    assert sum(policy.wants_copy(outbound(router)[0]) is not None for _ in range(100)) == copies


def test_no_mirror_or_no_route_means_no_copy():
    policy = Mirroring()
    plain = outbound(Router(payment_state({}, TWO)))[0]
    outside = outbound(Router(mirrored(100)), authority="example.com")[0]

    assert policy.wants_copy(plain) is None and policy.wants_copy(outside) is None


def test_shadow_authority():
    assert shadow_authority("payment:8080") == "payment-shadow:8080"
    assert shadow_authority("payment") == "payment-shadow"


@on_loop
async def test_copy_sends_in_the_background_with_the_shadow_authority():
    exchange, _ = outbound(Router(mirrored(100)))
    policy = Mirroring()
    sent = []

    async def send(version, authority):
        await asyncio.sleep(0.01)
        sent.append((version.name, authority))

    policy.copy(exchange, policy.wants_copy(exchange), send)

    assert sent == [] and exchange.mirrored == "v2"  # copy() does not wait for the copy
    await until(lambda: sent)
    assert sent == [("v2", "payment-shadow:8080")]
    await asyncio.sleep(0)
    assert not policy._copies


@on_loop
async def test_a_failing_or_slow_mirror_harms_nothing(monkeypatch):
    monkeypatch.setattr(mirroring_module, "MIRROR_TIMEOUT", 0.05)
    exchange, _ = outbound(Router(mirrored(100)))
    policy = Mirroring()
    version = policy.wants_copy(exchange)

    async def broken(version, authority):
        raise ConnectionRefusedError("nobody there")

    async def slow(version, authority):
        await asyncio.sleep(10)

    policy.copy(exchange, version, broken)
    policy.copy(exchange, version, slow)
    await until(lambda: not policy._copies, timeout=0.5)

    assert not policy._copies  # both over: one failed, one was cut after MIRROR_TIMEOUT


@on_loop
async def test_stop_cancels_copies_in_flight():
    exchange, _ = outbound(Router(mirrored(100)))
    policy = Mirroring()
    started = asyncio.Event()

    async def slow(version, authority):
        started.set()
        await asyncio.sleep(10)

    policy.copy(exchange, policy.wants_copy(exchange), slow)
    await started.wait()
    [task] = policy._copies
    policy.stop()
    await asyncio.sleep(0)

    assert task.cancelled()


# -- through the fast path ------------------------------------------------------------------

@on_loop
async def test_a_copy_goes_to_the_mirror_and_the_answer_is_the_primarys():
    async with Backend(lambda n, r: Reply(body=b"primary")) as v1, \
            Backend(lambda n, r: Reply(500, b"mirror", delay=0.3), V2_HOST, v1.port) as v2, \
            RunningSidecar(mirrored(100)) as web:
        started = time.monotonic()
        reply = await web.call(v1.port, "POST", body=b"order")
        elapsed = time.monotonic() - started
        await until(lambda: v2.requests)

    assert (reply.status, reply.body) == (200, b"primary")
    assert elapsed < 0.2  # the slow mirror did not delay the caller
    [copy] = v2.requests
    assert (copy.method, copy.target, copy.body) == ("POST", "/pay", b"order")
    assert copy.headers["host"] == f"payment-shadow:{v1.port}"
    assert copy.headers["x-meshcli-source"] == "web-v1"
    assert web.stats()["mirrored"] == [{"destination_service": "payment", "destination_version": "v2", "count": 1}]
    assert web.log_lines()[0]["destination_version"] == "v1"


@on_loop
async def test_percent_zero_sends_no_copy_and_a_dead_mirror_harms_nothing():
    async with Backend(ok) as v1, Backend(ok, V2_HOST, v1.port) as v2, RunningSidecar(mirrored(0)) as web:
        await web.call(v1.port)
        await asyncio.sleep(0.03)
        assert v2.requests == []
    assert web.stats()["mirrored"] == []

    async with Backend(ok) as v1, RunningSidecar(mirrored(100)) as web:  # nothing listens on V2_HOST now
        reply = await web.call(v1.port)
        await until(lambda: not web.mirroring._copies)
    assert reply.status == 200
    assert not web.mirroring._copies  # the failed copy is gone


@on_loop
async def test_a_retried_request_is_mirrored_once():
    state = mirrored(100, retries={"attempts": 2, "retryOn": ["5xx"], "backoffMs": 1})
    async with Backend(fail_first(2)) as v1, Backend(ok, V2_HOST, v1.port) as v2, RunningSidecar(state) as web:
        reply = await web.call(v1.port)
        await until(lambda: v2.requests)
        await asyncio.sleep(0.02)

    assert reply.status == 200 and len(v1.requests) == 3
    assert len(v2.requests) == 1


@on_loop
async def test_a_body_too_large_to_keep_is_not_mirrored():
    big = b"b" * (BUFFER_LIMIT + 1)
    async with Backend(ok) as v1, Backend(ok, V2_HOST, v1.port) as v2, RunningSidecar(mirrored(100)) as web:
        reply = await web.call(v1.port, "POST", body=big)
        await asyncio.sleep(0.03)

    assert reply.status == 200 and len(v1.requests[0].body) == len(big)
    assert v2.requests == []


@on_loop
async def test_a_request_answered_by_a_fault_is_not_mirrored():
    async with Backend(ok) as v1, Backend(ok, V2_HOST, v1.port) as v2, \
            RunningSidecar(mirrored(100, fault={"abort": {"status": 503}})) as web:
        reply = await web.call(v1.port)
        await asyncio.sleep(0.03)

    assert reply.status == 503 and v1.requests == v2.requests == []


# -- through the mitmproxy adapter -------------------------------------------------------------

@on_loop
async def test_adapter_mirrors_with_the_same_policy():
    async with Backend(lambda n, r: Reply(body=b"primary")) as v1, Backend(ok, V2_HOST, v1.port) as v2:
        adapters = Adapters(mirrored(100))
        with taddons.context():
            flow = await adapters.call(flow_to(v1.port, method=b"POST", content=b"order"))
            await until(lambda: v2.requests)

    assert adapters.mirroring.mirroring is adapters.sidecar.mirroring
    assert (flow.response.status_code, flow.response.raw_content) == (200, b"primary")
    [copy] = v2.requests
    assert (copy.method, copy.body, copy.headers["host"]) == ("POST", b"order", f"payment-shadow:{v1.port}")
    assert exchange_of(flow).mirrored == "v2"
    assert adapters.sidecar.telemetry.stats()["mirrored"][0]["count"] == 1


@on_loop
async def test_an_http2_request_is_mirrored_over_http2():
    async with H2Backend() as v1, H2Backend(host=V2_HOST, port=v1.port) as v2:
        adapters = Adapters(mirrored(100))
        with taddons.context():
            flow = await adapters.call(h2_flow_to(v1.port, content=b"order"))
            await until(lambda: v2.requests)

    assert (flow.response.status_code, flow.response.http_version) == (200, "HTTP/2.0")
    [copy] = v2.requests
    assert copy.header(":authority") == f"payment-shadow:{v1.port}"
    assert (copy.header(":path"), copy.body) == ("/grpc.Pay/Charge", b"order")
    assert exchange_of(flow).mirrored == "v2"


def test_websocket_requests_are_not_mirrored():
    # The copy would go out as a plain GET and fail at the mirror.
    adapters = Adapters(mirrored(100))
    request = tutils.treq(host="10.0.0.9", port=80, headers=http.Headers(
        ((b"Host", b"payment:80"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = handover_mode()
    adapters.routing.requestheaders(flow)

    adapters.mirroring.request(flow)

    assert exchange_of(flow).mirrored is None
    assert not adapters.sidecar.mirroring._copies
