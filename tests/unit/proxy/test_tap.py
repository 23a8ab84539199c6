"""Tap and tracing on the wire: two real sidecars on loopback, a tap on the client side,
spans exported over OTLP/HTTP to meshcli's own receiver (meshcli/trace.py)."""

import asyncio
import dataclasses
import json
import threading

from http_backends import Backend
from meshproxy import admin
from meshproxy.config import REDACTED, MeshState, Telemetry, Tracing
from meshproxy.exchange import Exchange
from meshproxy.policy.tap import Tap
from sidecar_kit import PAYMENT, V1_HOST, WEB, RunningSidecar, on_loop, payment_state

from meshcli.trace import Receiver

SECRETS = (("Authorization", "Bearer secret"), ("Cookie", "a=secret"), ("X-Api-Key", "secret"))


def with_telemetry(state: MeshState, telemetry: Telemetry) -> MeshState:
    state.apply(dataclasses.replace(state.config, telemetry=telemetry))
    return state


@on_loop
async def test_one_request_two_hops_one_trace_and_a_redacted_tap():
    receiver = Receiver("127.0.0.1", 0, settle=0.3)
    telemetry = Telemetry(("x-api-key",), Tracing(f"http://127.0.0.1:{receiver.port}/v1/traces", 100.0))
    try:
        async with Backend() as app, \
                RunningSidecar(with_telemetry(payment_state(identity=PAYMENT), telemetry), V1_HOST,
                               inbound_port=0) as payment_side, \
                RunningSidecar(with_telemetry(payment_state(), telemetry)) as web:
            reader = web.tap.open()
            payment_side.to(app.port, V1_HOST)
            # The client sidecar sends to payment-v1 (V1_HOST) on the port called: the server sidecar's inbound.
            reply = await web.call(payment_side.inbound_port, headers=SECRETS)
            assert reply.status == 200
            [record] = [web.tap.record(exchange) for exchange in reader.take(1.0)]
            web.tap.close(reader)
        traces = await asyncio.to_thread(lambda: list(receiver.traces(count=1, seconds=5)))
    finally:
        receiver.close()

    assert (record["direction"], record["destination"], record["version"], record["status"]) == (
        "outbound", "payment", "v1", 200)
    assert {name: record["headers"][name] for name in ("authorization", "cookie", "x-api-key")} == dict.fromkeys(
        ("authorization", "cookie", "x-api-key"), REDACTED)
    assert "secret" not in json.dumps(record)
    assert not web.tap.active
    [trace] = traces
    client, server = [span for _, span in trace.tree()]
    assert (client.kind, client.workload, server.kind, server.workload) == ("client", "web-v1", "server", "payment-v1")
    assert client.parent_id == "" and server.parent_id == client.span_id
    traceparent = app.requests[0].headers["traceparent"]
    assert traceparent == f"00-{trace.trace_id}-{server.span_id}-01"  # the app's calls are the server span's children
    assert "secret" not in json.dumps(trace.to_json())


def finished(path: str = "/pay") -> Exchange:
    exchange = Exchange("inbound", "GET", "payment:8080", path)
    exchange.status, exchange.ended = 200, exchange.started + 0.001
    return exchange


def test_the_tap_stream_is_json_lines_with_a_heartbeat_and_losses():
    tap = Tap(MeshState(WEB))
    lines = admin.tap_lines(tap, max_rps=1200)
    first = []
    reading = threading.Thread(target=lambda: first.append(next(lines)))
    reading.start()
    reading.join(3)
    assert first == [b"\n"] and tap.active  # nothing happened: a heartbeat
    [reader] = tap.readers
    for i in range(reader.exchanges.maxlen + 5):
        reader.offer(finished(f"/{i}"), second=7)
    chunk = next(lines).decode().splitlines()
    assert json.loads(chunk[0])["path"] == "/5" and json.loads(chunk[-1]) == {"dropped": 5, "overRate": 0}
    lines.close()
    assert not tap.active and tap.readers == ()


def test_a_reader_takes_at_most_max_rps_per_second():
    reader = Tap(MeshState(WEB)).open(max_rps=3)
    for second in (10, 10, 10, 10, 10, 11):
        reader.offer(finished(), second)
    assert (len(reader.take(0)), reader.over_rate) == (4, 2)
