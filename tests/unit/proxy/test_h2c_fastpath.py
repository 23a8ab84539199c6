"""h2c (HTTP/2 with prior knowledge, gRPC) on the fast path: fastpath/http2.py through the
same policies as HTTP/1.1 - routing, faults, mirroring, resilience, telemetry - against
real loopback HTTP/2 servers, from an app's h2c connection."""

import asyncio
import time


from h2_backends import H2Backend
from h2_backends import Reply as H2Reply
from meshproxy.exchange import FAULT_HEADER, INBOUND
from meshproxy.policy.routing import SOURCE_HEADER
from sidecar_kit import PAYMENT, V1_HOST, V2_HOST, H2Client, RunningSidecar, on_loop, payment_state, until

GRPC_OK = H2Reply(body=b"\x00\x00\x00\x00\x02ok", headers=[("content-type", "application/grpc")],
                  trailers=[("grpc-status", "0")])
CALL = b"\x00\x00\x00\x00\x01x"


async def app_connection(sidecar: RunningSidecar, port: int, ip: str = "10.0.0.9", inbound: bool = False) -> H2Client:
    return H2Client(*await sidecar.to(port, ip).connect(inbound))


async def calls(sidecar: RunningSidecar, port: int, count: int = 1, **request):
    app = await app_connection(sidecar, port)
    try:
        return await asyncio.gather(*(app.request(f"payment:{port}", body=CALL, **request) for _ in range(count)))
    finally:
        await app.close()


@on_loop
async def test_grpc_goes_out_as_h2c_to_the_chosen_version_with_its_trailers_back():
    async with H2Backend(lambda n, r: GRPC_OK) as v1, RunningSidecar(payment_state()) as web:
        answers = await calls(web, v1.port, 5)
        await until(lambda: len(web.log_lines()) == 5)

    request = v1.requests[0]
    assert request.headers[:4] == [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.Pay/Charge"),
                                   (":authority", f"payment:{v1.port}")]
    assert request.header(SOURCE_HEADER) == "web-v1" and ("te", "trailers") in request.headers
    assert request.body == CALL
    assert v1.connections == 1  # the five streams shared one upstream connection
    assert [(a.status, a.body, a.trailers) for a in answers] == [(200, GRPC_OK.body, [("grpc-status", "0")])] * 5
    entry = web.log_lines()[0]
    assert (entry["protocol"], entry["attempts"], entry["response_flags"]) == ("HTTP/2.0", 1, "-")
    assert web.stats()["requests"][0]["request_protocol"] == "grpc"


@on_loop
async def test_h2c_sends_only_its_own_source_header():
    async with H2Backend(lambda n, r: GRPC_OK) as v1, RunningSidecar(payment_state()) as web:
        await calls(web, v1.port, headers=(("content-type", "application/grpc"), (SOURCE_HEADER, "spoofed")))

    assert [v for n, v in v1.requests[0].headers if n == SOURCE_HEADER] == ["web-v1"]


@on_loop
async def test_h2c_retries_a_reset_stream_and_a_5xx():
    replies = {1: H2Reply(reset=True), 2: H2Reply(503)}
    retries = {"attempts": 2, "retryOn": ["reset", "5xx"], "retryNonIdempotent": True, "backoffMs": 1}
    async with H2Backend(lambda n, r: replies.get(n, GRPC_OK)) as v1, \
            RunningSidecar(payment_state({"retries": retries})) as web:
        [answer] = await calls(web, v1.port)

    assert (answer.status, answer.trailers) == (200, [("grpc-status", "0")])
    assert web.log_lines()[0]["attempts"] == 3
    assert v1.connections == 1  # a reset stream does not cost the connection


@on_loop
async def test_h2c_timeout_is_504_and_cancels_only_that_upstream_stream():
    slow = lambda n, r: H2Reply(delay=1.0) if n == 1 else GRPC_OK  # noqa: E731
    async with H2Backend(slow) as v1, RunningSidecar(payment_state({"timeoutMs": 100})) as web:
        started = time.monotonic()
        [timed_out] = await calls(web, v1.port)
        elapsed = time.monotonic() - started
        [after] = await calls(web, v1.port)
        await until(lambda: v1.client_resets)

    assert (timed_out.status, timed_out.body) == (504, b"upstream request timeout")
    assert elapsed < 0.5 and after.status == 200
    assert [code for _, code in v1.client_resets] == [8]  # CANCEL
    assert v1.connections == 1
    assert web.log_lines()[0]["response_flags"] == "UT"


@on_loop
async def test_h2c_circuit_breaker_overflow_is_refused_at_once():
    async with H2Backend(lambda n, r: H2Reply(delay=0.2)) as v1, \
            RunningSidecar(payment_state({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1})) as web:
        answers = await calls(web, v1.port, 3)

    assert sorted(a.status for a in answers) == [200, 200, 503]
    refused = next(a for a in answers if a.status == 503)
    assert refused.header("x-meshcli-circuit") == "open"
    assert len(v1.requests) == 2


@on_loop
async def test_h2c_faults_abort_with_a_status_or_reset_only_that_stream():
    async with H2Backend(lambda n, r: GRPC_OK) as v1, \
            RunningSidecar(payment_state([
                {"name": "reset", "match": [{"headers": [{"name": "x-reset", "kind": "present"}]}],
                 "fault": {"abort": {"reset": True}}},
                {"name": "abort", "fault": {"abort": {"status": 503}}}])) as web:
        app = await app_connection(web, v1.port)
        aborted = await app.request(f"payment:{v1.port}", body=CALL)
        reset = await app.request(f"payment:{v1.port}", body=CALL, headers=(("x-reset", "1"),))
        again = await app.request(f"payment:{v1.port}", body=CALL)  # the connection lives on
        await app.close()

    assert (aborted.status, aborted.header(FAULT_HEADER)) == (503, "abort")
    assert reset.reset is not None and reset.status == 0
    assert again.status == 503
    assert v1.requests == []
    assert [e["response_flags"] for e in web.log_lines()] == ["FI", "FI", "FI"]


@on_loop
async def test_h2c_is_mirrored_over_h2c():
    state = payment_state([{"name": "default", "split": [{"version": "v1", "weight": 100}],
                            "mirror": {"version": "v2", "percent": 100}}], (("v1", V1_HOST), ("v2", V2_HOST)))
    async with H2Backend(lambda n, r: GRPC_OK) as v1, H2Backend(host=V2_HOST, port=v1.port) as v2, \
            RunningSidecar(state) as web:
        [answer] = await calls(web, v1.port)
        await until(lambda: v2.requests)

    assert answer.status == 200
    [copy] = v2.requests
    assert copy.header(":authority") == f"payment-shadow:{v1.port}" and copy.body == CALL
    assert web.stats()["mirrored"][0]["count"] == 1


@on_loop
async def test_inbound_h2c_reaches_the_app_without_the_source_header():
    async with H2Backend(lambda n, r: GRPC_OK) as app, RunningSidecar(payment_state(identity=PAYMENT)) as sidecar:
        client = await app_connection(sidecar, app.port, V1_HOST, inbound=True)
        answer = await client.request(f"payment:{app.port}", body=CALL, headers=(
            ("content-type", "application/grpc"), (SOURCE_HEADER, "web-v1")))
        await client.close()

    assert answer.status == 200
    assert app.requests[0].header(SOURCE_HEADER) is None
    entry = sidecar.log_lines()[0]
    assert (entry["direction"], entry["source"]) == (INBOUND, "web-v1")
