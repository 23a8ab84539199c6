"""Faults: HTTP delays/aborts after routing, and TCP faults (toxics) on whole connections.

policy/faults.py directly (HttpFaults.apply on Exchanges, TcpFaults.for_connection, Toxic
on chunks), then on the wire through the fast path (a real Listener in front of real
backends and an echo server), then through the mitmproxy adapter.
"""

import asyncio
import socket
import time

import pytest
from mitmproxy.test import taddons

from http_backends import Backend
from meshproxy.config import TcpFault
from meshproxy.exchange import FAULT_HEADER
from meshproxy.policy import faults as faults_module
from meshproxy.policy.faults import RESET, HttpFaults, TcpFaults, Toxic
from meshproxy.policy.routing import Router
from meshproxy.sampling import Shares
from sidecar_kit import (ORIGINAL_IP, V1_HOST, Adapters, EchoServer, RunningSidecar, exchange_of, flow_to, http_call,
                         inbound, on_loop, outbound, payment_state, runtime_fault, tcp_exchange, until)

PAYMENT_IP = "10.0.0.9"
FAULT_ABORT = b"fault filter abort"


def mesh(runtime=(), route_fault=None, tcp_fault=None, timeout_ms=None, host=V1_HOST):
    route = {"name": "default"}
    if route_fault:
        route["fault"] = route_fault
    if timeout_ms:
        route["timeoutMs"] = timeout_ms
    service = {"tcpFault": tcp_fault} if tcp_fault else {}
    return payment_state([route], (("v1", host),), runtime, **service)


@pytest.fixture
def dice(monkeypatch):
    """Fix the percent sampling: dice(True) makes every percentage under 100 pick, dice(False) none."""
    def set_roll(hit: bool) -> None:
        monkeypatch.setattr(Shares, "pick", lambda self, setting, percent: percent >= 100 or (hit and percent > 0))
    return set_roll


class Http:
    """Router + HttpFaults on one state, as the sidecar wires them."""

    def __init__(self, state) -> None:
        self.state = state
        self.router = Router(state)
        self.faults = HttpFaults(state)

    async def apply(self, **request):
        exchange, _ = outbound(self.router, **request)
        started = time.monotonic()
        verdict = await self.faults.apply(exchange)
        return exchange, verdict, time.monotonic() - started


# -- HTTP, the policy ----------------------------------------------------------------------------

@on_loop
async def test_delay_applies_to_its_percent_of_requests(dice):
    http = Http(mesh(route_fault={"delay": {"ms": 60, "percent": 50}}))
    dice(True)  # picked: delayed
    exchange, verdict, took = await http.apply()
    assert (verdict, exchange.flags) == (None, ["DI"]) and took >= 0.055

    dice(False)  # not picked: not delayed
    exchange, verdict, took = await http.apply()
    assert (verdict, exchange.flags) == (None, []) and took < 0.03


@on_loop
async def test_abort_percent_hits_exactly_that_share_of_requests():
    http = Http(mesh(route_fault={"abort": {"status": 503, "percent": 30}}))

    aborted = [(await http.apply())[1] is not None for _ in range(200)]

    assert sum(aborted[:100]) == 30 and sum(aborted[100:]) == 30
    assert aborted[:100] != aborted[100:]  # in a random order each time


@on_loop
async def test_a_new_config_starts_a_fresh_share():
    state = mesh(route_fault={"abort": {"status": 503, "percent": 50}})
    http = Http(state)
    first = [(await http.apply())[1] is not None for _ in range(30)]

    state.apply(mesh(route_fault={"abort": {"status": 503, "percent": 50}}).config)
    again = [(await http.apply())[1] is not None for _ in range(100)]

    assert sum(again) == 50  # a whole bag of 100 from the reload on, whatever the first 30 took
    assert 0 < sum(first) < 30


@on_loop
async def test_delay_never_runs_past_the_deadline():
    http = Http(mesh(route_fault={"delay": {"ms": 5000}}, timeout_ms=80))

    exchange, verdict, took = await http.apply()

    assert 0.07 <= took < 0.5
    assert (verdict.status, verdict.body, verdict.flag) == (504, b"upstream request timeout", "UT")
    assert exchange.flags == ["DI"]


@on_loop
async def test_abort_answers_with_its_status():
    exchange, verdict, _ = await Http(mesh(route_fault={"abort": {"status": 418}})).apply()

    assert (verdict.status, verdict.body, verdict.flag) == (418, FAULT_ABORT, "FI")
    assert dict(verdict.headers) == {FAULT_HEADER: "abort"}


@on_loop
async def test_abort_reset_resets():
    exchange, verdict, _ = await Http(mesh(route_fault={"abort": {"reset": True}})).apply()

    assert verdict is RESET and exchange.flags == ["FI"]


@on_loop
async def test_abort_after_delay_and_abort_percent(dice):
    http = Http(mesh(route_fault={"delay": {"ms": 10}, "abort": {"status": 500, "percent": 20}}))
    dice(True)
    exchange, verdict, _ = await http.apply()
    assert (verdict.status, exchange.flags) == (500, ["DI"])  # FI comes with the reply

    dice(False)
    exchange, verdict, _ = await http.apply()
    assert (verdict, exchange.flags) == (None, ["DI"])


@pytest.mark.parametrize(("runtime", "status"), [
    ([runtime_fault({"abort": {"status": 503}})], 503),  # a runtime fault beats the route's
    ([runtime_fault({"abort": {"status": 503}}, until=time.time() - 1)], 500),  # expired: the mesh file's is back
    ([runtime_fault({"abort": {"status": 503}}, source="orders")], 500),  # for another caller
    ([runtime_fault({"abort": {"status": 503}}, source="web")], 503),  # for this caller
    ([runtime_fault(tcp_fault={"kind": "reset"})], 500),  # a TCP fault is not an HTTP one
])
@on_loop
async def test_runtime_faults(runtime, status):
    _, verdict, _ = await Http(mesh(runtime, route_fault={"abort": {"status": 500}})).apply()

    assert verdict.status == status


@on_loop
async def test_runtime_fault_for_another_source_without_a_route_fault():
    exchange, verdict, _ = await Http(mesh([runtime_fault({"abort": {"status": 503}}, source="orders")])).apply()

    assert (verdict, exchange.flags) == (None, [])


@on_loop
async def test_inbound_and_unrouted_exchanges_are_left_alone():
    http = Http(mesh(route_fault={"abort": {"status": 503}}))
    outside, _ = outbound(http.router, authority="example.com")

    assert await http.faults.apply(inbound(http.router)) is None
    assert await http.faults.apply(outside) is None


# -- TCP, the policy -----------------------------------------------------------------------------

@pytest.fixture
def resolved(monkeypatch):
    """Name resolution as Docker's DNS would answer: payment-v1 and payment -> PAYMENT_IP."""
    table = {"payment-v1": PAYMENT_IP, "payment": PAYMENT_IP}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


async def tcp_faults(state) -> TcpFaults:
    faults = TcpFaults(state)
    await faults.addresses.refresh()
    return faults


@on_loop
async def test_ip_addresses_map_to_faulted_services_only(resolved):
    faults = await tcp_faults(mesh(tcp_fault={"kind": "reset"}, host="payment-v1"))

    assert faults.addresses.service_at(PAYMENT_IP) == "payment"
    assert faults.addresses.service_at("10.0.0.77") is None
    # without a TCP fault nothing is resolved at all
    quiet = await tcp_faults(mesh(host="payment-v1"))
    assert quiet.addresses.service_at(PAYMENT_IP) is None


@on_loop
async def test_connection_to_a_faulted_service_gets_its_fault(resolved):
    faults = await tcp_faults(mesh([runtime_fault(tcp_fault={"kind": "blackhole"})], tcp_fault={"kind": "reset"},
                                   host="payment-v1"))

    service, fault = faults.for_connection(PAYMENT_IP)

    assert (service, fault.kind) == ("payment", "blackhole")  # the runtime fault beats the mesh file's
    assert faults.for_connection("10.0.0.77") is None


@on_loop
async def test_a_runtime_tcp_fault_for_another_source_is_ignored(resolved):
    faults = await tcp_faults(mesh([runtime_fault(tcp_fault={"kind": "reset"}, source="orders")],
                                   host="payment-v1"))

    assert faults.for_connection(PAYMENT_IP) is None


@on_loop
async def test_tcp_percent_picks_an_exact_share_of_connections(resolved):
    faults = await tcp_faults(mesh(tcp_fault={"kind": "reset", "percent": 25}, host="payment-v1"))

    picked = [faults.for_connection(PAYMENT_IP) is not None for _ in range(100)]

    assert sum(picked) == 25


# -- TCP: what a toxic does to the data ------------------------------------------------------------

async def through_toxic(fault: TcpFault, *chunks: bytes):
    """Relay `chunks` through a Toxic: (what was sent on, when, relay()'s answers, the toxic)."""
    toxic = Toxic(fault)
    sent, times, answers = [], [], []
    started = time.monotonic()

    async def send(data: bytes) -> None:
        sent.append(data)
        times.append(time.monotonic() - started)

    for chunk in chunks:
        answers.append(await toxic.relay(chunk, send))
    return sent, times, answers, toxic


@on_loop
async def test_toxic_latency_delays_every_chunk():
    sent, times, answers, toxic = await through_toxic(TcpFault("latency", latency=0.03), b"ping", b"pong")

    assert (sent, answers, toxic.flag) == ([b"ping", b"pong"], [True, True], "DI")
    assert times[0] >= 0.028 and times[1] >= 0.058


@on_loop
async def test_toxic_latency_jitter_varies_each_delay_within_its_bounds(monkeypatch):
    draws = iter([-0.03, 0.02])  # the jitter's extremes (and a draw below zero: no negative sleep)
    asked = []

    class Dice:
        @staticmethod
        def uniform(low, high):
            asked.append((low, high))
            return next(draws)

    monkeypatch.setattr(faults_module, "random", Dice)
    sent, times, _, _ = await through_toxic(TcpFault("latency", latency=0.02, jitter=0.03), b"a", b"b")

    assert asked == [(-0.03, 0.03)] * 2
    assert sent == [b"a", b"b"]
    assert times[0] < 0.015 and times[1] - times[0] >= 0.038  # 0 s, then 40 ms


@on_loop
async def test_toxic_bandwidth_paces_data():
    sent, times, _, toxic = await through_toxic(TcpFault("bandwidth", rate=20_000), b"x" * 1000)

    assert sent == [b"x" * 1000] and times[0] >= 0.048 and toxic.flag == "DI"


@on_loop
async def test_toxic_blackhole_passes_nothing():
    sent, _, answers, toxic = await through_toxic(TcpFault("blackhole"), b"GET / HTTP/1.1\r\n\r\n", b"more")

    assert (sent, answers, toxic.flag) == ([], [True, True], "FI")  # swallowed, the connection stays


@on_loop
async def test_toxic_limit_data_truncates_then_closes():
    sent, _, answers, toxic = await through_toxic(TcpFault("limit-data", bytes=10), b"123456", b"abcdefgh", b"z")

    assert sent == [b"123456", b"abcd"]
    assert answers == [True, False, False]  # closed once the limit is reached
    assert toxic.flag == "FI"


@on_loop
async def test_toxic_slicer_sends_slices_apart():
    sent, times, _, toxic = await through_toxic(TcpFault("slicer", bytes=5, latency=0.02), b"y" * 12)

    assert sent == [b"yyyyy", b"yyyyy", b"yy"]
    assert times[1] - times[0] >= 0.018 and times[2] - times[1] >= 0.018
    assert toxic.flag == "DI"


@pytest.mark.parametrize(("fault", "expected"), [
    (TcpFault("reset"), "reset"),
    (TcpFault("limit-data", bytes=0), "close"),
    (TcpFault("limit-data", bytes=1), None),
    (TcpFault("latency", latency=0.1), None),
    (TcpFault("blackhole"), None),
])
def test_toxic_at_start(fault, expected):
    assert Toxic(fault).at_start() == expected


# -- TCP on the wire, through the fast path -------------------------------------------------------

async def through_listener(tcp_fault: dict, send: bytes, expect_bytes: int, timeout: float = 2.0):
    """Send `send` to an echo server through a real Listener whose sidecar has `tcp_fault`
    on the service living at 127.0.0.1: (received, seconds, error, arrivals, echo, sidecar)."""
    async with EchoServer() as echo:
        async with RunningSidecar(mesh(tcp_fault=tcp_fault)) as sidecar:
            sidecar.to(echo.port, "127.0.0.1")
            result = await tcp_exchange("127.0.0.1", sidecar.outbound_port, send, expect_bytes, timeout)
            await until(lambda: sidecar.log_lines(), timeout=1.0)  # the relay saw the close and logged it
    return (*result, echo, sidecar)


@on_loop
async def test_reset_is_a_real_rst():
    received, _, error, _, echo, sidecar = await through_listener({"kind": "reset"}, b"hello", 5)

    assert received == b"" and isinstance(error, ConnectionResetError)
    assert echo.connections == 0  # nothing was connected upstream
    assert sidecar.log_lines()[-1]["response_flags"] == "FI"


@on_loop
async def test_limit_data_delivers_the_truncated_data_then_closes():
    received, _, error, _, echo, _ = await through_listener({"kind": "limit-data", "bytes": 30}, b"x" * 22, 22)

    # 22 bytes reach the echo server; 8 of its 22 come back, then the connection closes (EOF)
    assert (received, error, echo.received) == (b"x" * 8, None, b"x" * 22)


@on_loop
async def test_limit_data_zero_closes_at_once():
    # (a client that sent bytes first would see an RST: Linux resets a socket closed with unread data)
    received, took, error, _, echo, _ = await through_listener({"kind": "limit-data", "bytes": 0}, b"", 1)

    assert (received, error, echo.connections) == (b"", None, 0) and took < 0.5


@on_loop
async def test_slicer_sends_the_data_in_slices_apart():
    received, took, error, arrivals, _, _ = await through_listener(
        {"kind": "slicer", "bytes": 5, "latencyMs": 30}, b"y" * 12, 12)

    # 12 bytes -> slices of 5, 5 and 2 bytes with 2 pauses between, both ways
    assert received == b"y" * 12 and error is None
    assert took >= 0.055 and len(arrivals) >= 2


@on_loop
async def test_latency_delays_both_directions():
    received, took, error, _, _, sidecar = await through_listener({"kind": "latency", "latencyMs": 40}, b"ping", 4)

    assert (received, error) == (b"ping", None)
    assert took >= 0.075  # 40 ms to the server, 40 ms back
    assert sidecar.log_lines()[-1]["response_flags"] == "DI"


@on_loop
async def test_bandwidth_paces_data_on_the_wire():
    received, took, _, _, _, _ = await through_listener({"kind": "bandwidth", "rateBytesPerSecond": 20_000},
                                                        b"x" * 1000, 1000)

    assert received == b"x" * 1000 and took >= 0.095  # 50 ms each way


@on_loop
async def test_blackhole_passes_nothing_and_keeps_the_connection():
    received, took, error, _, echo, _ = await through_listener({"kind": "blackhole"}, b"hello", 5, timeout=0.15)

    assert received == b"" and isinstance(error, asyncio.TimeoutError)  # no answer, no close
    assert echo.received == b""


@on_loop
async def test_a_tcp_fault_makes_http_traffic_raw_tcp():
    request = b"GET /pay HTTP/1.1\r\nHost: payment:8080\r\n\r\n"

    received, _, _, _, echo, sidecar = await through_listener({"kind": "latency", "latencyMs": 5}, request,
                                                              len(request))

    assert echo.received == request  # relayed byte for byte: no HTTP proxying, no mesh headers
    assert received == request
    assert [e["kind"] for e in sidecar.log_lines()] == ["tcp"]


@on_loop
async def test_without_a_tcp_fault_the_relay_is_untouched():
    received, took, error, _, _, sidecar = await through_listener(None, b"\x00\x01binary", 8)

    assert (received, error) == (b"\x00\x01binary", None)
    assert sidecar.log_lines()[-1]["response_flags"] == "-"


@on_loop
async def test_tcp_faults_are_client_side_only():
    async with EchoServer() as echo:
        async with RunningSidecar(mesh(tcp_fault={"kind": "reset"})) as sidecar:
            sidecar.to(echo.port, "127.0.0.1")
            received, _, error, _ = await tcp_exchange("127.0.0.1", sidecar.inbound_port, b"\x00hello", 6)

    assert (received, error) == (b"\x00hello", None)


# -- HTTP on the wire, through the fast path -------------------------------------------------------

@on_loop
async def test_http_abort_on_the_wire():
    async with Backend() as v1, RunningSidecar(mesh(route_fault={"abort": {"status": 503}})) as web:
        reply = await web.call(v1.port)

    assert (reply.status, reply.body, reply.header(FAULT_HEADER)) == (503, FAULT_ABORT, "abort")
    assert v1.requests == []
    assert (web.log_lines()[0]["response_flags"], web.log_lines()[0]["attempts"]) == ("FI", 0)


@on_loop
async def test_http_abort_reset_resets_the_callers_connection():
    async with Backend() as v1, RunningSidecar(mesh(route_fault={"abort": {"reset": True}})) as web:
        with pytest.raises(ConnectionResetError):
            await web.call(v1.port)
        await until(lambda: web.log_lines())

    assert v1.requests == []
    assert (web.log_lines()[0]["status"], web.log_lines()[0]["response_flags"]) == (0, "FI")


@on_loop
async def test_http_delay_then_forwarded_and_delay_past_the_deadline():
    async with Backend() as v1, RunningSidecar(mesh(route_fault={"delay": {"ms": 50}})) as web:
        started = time.monotonic()
        delayed = await web.call(v1.port)
        took = time.monotonic() - started
    async with Backend() as v1_late, RunningSidecar(mesh(route_fault={"delay": {"ms": 5000}}, timeout_ms=60)) as late:
        started = time.monotonic()
        timed_out = await late.call(v1_late.port)
        late_took = time.monotonic() - started

    assert (delayed.status, web.log_lines()[0]["response_flags"]) == (200, "DI") and took >= 0.045
    assert (timed_out.status, timed_out.body) == (504, b"upstream request timeout")
    assert late.log_lines()[0]["response_flags"] == "DI,UT" and late_took < 0.5
    assert v1_late.requests == []


@on_loop
async def test_http_faults_spare_calls_outside_the_mesh():
    async with Backend() as elsewhere, RunningSidecar(mesh(route_fault={"abort": {"status": 503}})) as web:
        web.to(elsewhere.port, "127.0.0.1")
        reply = await http_call("127.0.0.1", web.outbound_port, host="example.com")

    assert reply.status == 200 and len(elsewhere.requests) == 1


# -- through the mitmproxy adapter -------------------------------------------------------------

async def adapter_request(state, **flow_options):
    adapters = Adapters(state)
    flow = flow_to(**flow_options)
    with taddons.context():
        started = time.monotonic()
        adapters.routing.requestheaders(flow)  # the route's deadline starts here
        await adapters.faults.request(flow)
    assert adapters.faults.faults is adapters.sidecar.http_faults  # the fast path's instance
    return flow, time.monotonic() - started


@on_loop
async def test_adapter_abort_answers_with_its_status():
    flow, _ = await adapter_request(mesh(route_fault={"abort": {"status": 503}}))

    assert (flow.response.status_code, flow.response.content) == (503, FAULT_ABORT)
    assert flow.response.headers[FAULT_HEADER] == "abort"
    assert exchange_of(flow).flags == ["FI"]


@on_loop
async def test_adapter_abort_reset_kills_the_flow():
    flow, _ = await adapter_request(mesh(route_fault={"abort": {"reset": True}}))

    assert flow.response is None
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    assert exchange_of(flow).flags == ["FI"]


@on_loop
async def test_adapter_delay_never_runs_past_the_deadline():
    flow, took = await adapter_request(mesh(route_fault={"delay": {"ms": 5000}}, timeout_ms=60))

    assert 0.05 <= took < 0.5
    assert (flow.response.status_code, flow.response.content) == (504, b"upstream request timeout")
    assert exchange_of(flow).flags == ["DI", "UT"]


@on_loop
async def test_adapter_leaves_inbound_and_outside_flows_alone():
    state = mesh(route_fault={"abort": {"status": 503}})
    inbound_flow, _ = await adapter_request(state, direction="inbound")
    outside, _ = await adapter_request(state, host_header="example.com")

    assert inbound_flow.response is None and outside.response is None
    assert outside.request.host == ORIGINAL_IP
