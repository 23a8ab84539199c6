"""Faults: HTTP delays/aborts after Routing, and TCP faults on whole connections.

HTTP and most TCP cases run the hooks on mitmproxy's test flows; the cases that need a
real socket (an RST, slices written between hooks, a close after the truncated data)
run a real mitmproxy in this process in front of an echo server.
"""

import asyncio
import json
import socket
import time

import pytest
from mitmproxy import connection, http, options, tcp
from mitmproxy.addons import core, proxyserver
from mitmproxy.master import Master
from mitmproxy.proxy import layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from meshproxy import config
from meshproxy.addons import faults as faults_module, routing
from meshproxy.addons.faults import Faults
from meshproxy.addons.protocol import ProtocolDetection
from meshproxy.config import Identity, MeshState
from meshproxy.sampling import Shares

from test_protocol import make_nextlayer, receive  # noqa: E402 - the same NextLayer builder

PAYMENT_IP = "10.0.0.9"


def mesh(runtime=(), route_fault=None, tcp_fault=None, timeout_ms=None, host=PAYMENT_IP) -> MeshState:
    route = {"name": "default"}
    if route_fault:
        route["fault"] = route_fault
    if timeout_ms:
        route["timeoutMs"] = timeout_ms
    service = {"versions": [{"name": "v1", "host": host}], "routes": [route]}
    if tcp_fault:
        service["tcpFault"] = tcp_fault
    state = MeshState(Identity("shop", "web-v1", "web", "v1"))
    state.apply(config.parse(json.dumps({"schema": 2, "version": "abc", "services": {"payment": service},
                                         "faults": list(runtime)})))
    return state


def runtime(http_fault=None, tcp_fault=None, source=None, until=None, fault_id="f-1a2b") -> dict:
    return {"id": fault_id, "service": "payment", "source": source, "http": http_fault, "tcp": tcp_fault,
            "until": until}


def routed_flow(state: MeshState, deadline_in: float | None = None, direction="outbound") -> http.HTTPFlow:
    """A flow as Routing leaves it for Faults."""
    flow = tflow.tflow(req=tutils.treq(host="payment-v1", port=8080))
    service = state.config.services["payment"]
    flow.metadata.update({
        routing.META_DIRECTION: direction, routing.META_SERVICE_CONFIG: service,
        routing.META_ROUTE: service.routes[-1], routing.META_FLAGS: [],
        routing.META_DEADLINE: routing.now() + deadline_in if deadline_in is not None else None})
    return flow


def request(addon: Faults, flow: http.HTTPFlow) -> float:
    """Run the request hook; return how long it took."""
    async def go():
        with taddons.context(addon):
            started = time.monotonic()
            await addon.request(flow)
            return time.monotonic() - started
    return asyncio.run(go())


@pytest.fixture
def dice(monkeypatch):
    """Fix the percent sampling: dice(True) makes every percentage under 100 pick, dice(False) none."""
    def set_roll(hit: bool) -> None:
        monkeypatch.setattr(Shares, "pick", lambda self, setting, percent: percent >= 100 or (hit and percent > 0))
    return set_roll


# -- HTTP ----------------------------------------------------------------------------------

def test_delay_applies_to_its_percent_of_requests(dice):
    state = mesh(route_fault={"delay": {"ms": 100, "percent": 50}})
    dice(True)  # picked: delayed
    delayed = routed_flow(state)
    assert request(Faults(state), delayed) >= 0.09
    assert delayed.response is None and delayed.metadata[routing.META_FLAGS] == ["DI"]

    dice(False)  # not picked: not delayed
    spared = routed_flow(state)
    assert request(Faults(state), spared) < 0.05
    assert spared.metadata[routing.META_FLAGS] == []


def test_abort_percent_hits_exactly_that_share_of_requests():
    state = mesh(route_fault={"abort": {"status": 503, "percent": 30}})
    addon = Faults(state)
    flows = [routed_flow(state) for _ in range(200)]
    for flow in flows:
        request(addon, flow)
    aborted = [flow.response is not None for flow in flows]
    assert sum(aborted[:100]) == 30 and sum(aborted[100:]) == 30
    assert aborted[:100] != aborted[100:]  # in a random order each time


def test_delay_never_runs_past_the_deadline():
    state = mesh(route_fault={"delay": {"ms": 5000}})
    flow = routed_flow(state, deadline_in=0.1)

    took = request(Faults(state), flow)

    assert 0.08 <= took < 1
    assert flow.response.status_code == 504
    assert flow.response.content == b"upstream request timeout"
    assert flow.metadata[routing.META_FLAGS] == ["DI", "UT"]


def test_abort_answers_with_its_status():
    state = mesh(route_fault={"abort": {"status": 503}})
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response.status_code == 503
    assert flow.response.content == b"fault filter abort"
    assert flow.response.headers["x-meshcli-fault"] == "abort"
    assert flow.metadata[routing.META_FLAGS] == ["FI"]


def test_abort_reset_kills_the_flow():
    state = mesh(route_fault={"abort": {"reset": True}})
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response is None
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
    assert flow.metadata[routing.META_FLAGS] == ["FI"]


def test_abort_after_delay_and_abort_percent(dice):
    state = mesh(route_fault={"delay": {"ms": 10}, "abort": {"status": 500, "percent": 20}})
    dice(True)
    flow = routed_flow(state)
    request(Faults(state), flow)
    assert flow.response.status_code == 500 and flow.metadata[routing.META_FLAGS] == ["DI", "FI"]

    dice(False)
    flow = routed_flow(state)
    request(Faults(state), flow)
    assert flow.response is None and flow.metadata[routing.META_FLAGS] == ["DI"]


def test_runtime_fault_beats_the_route_fault():
    state = mesh(route_fault={"abort": {"status": 500}}, runtime=[runtime({"abort": {"status": 503}})])
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response.status_code == 503


def test_expired_runtime_fault_is_ignored():
    expired = runtime({"abort": {"status": 503}}, until=time.time() - 1)
    state = mesh(route_fault={"abort": {"status": 500}}, runtime=[expired])
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response.status_code == 500  # the mesh file's fault is back


def test_runtime_fault_for_another_source_is_ignored():
    state = mesh(runtime=[runtime({"abort": {"status": 503}}, source="orders")])
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response is None and flow.metadata[routing.META_FLAGS] == []


def test_runtime_fault_for_this_source_applies():
    state = mesh(runtime=[runtime({"abort": {"status": 503}}, source="web")])
    flow = routed_flow(state)

    request(Faults(state), flow)

    assert flow.response.status_code == 503


def test_inbound_and_unrouted_flows_are_left_alone():
    state = mesh(route_fault={"abort": {"status": 503}})
    inbound = routed_flow(state, direction="inbound")
    outside = tflow.tflow()
    outside.metadata[routing.META_DIRECTION] = "outbound"  # leaving the mesh: no service config

    request(Faults(state), inbound)
    request(Faults(state), outside)

    assert inbound.response is None and outside.response is None


# -- TCP: which connections get a fault -------------------------------------------------------

@pytest.fixture
def resolved(monkeypatch):
    """Name resolution as Docker's DNS would answer: payment-v1 -> PAYMENT_IP."""
    table = {"payment-v1": PAYMENT_IP, "payment": PAYMENT_IP}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def tcp_faults(state: MeshState) -> Faults:
    addon = Faults(state)
    asyncio.run(addon.addresses.refresh())
    return addon


def outbound_context(ip=PAYMENT_IP, port=15001) -> Context:
    client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.3", port),
                               proxy_mode=ProxyMode.parse(f"transparent@{port}"))
    context = Context(client, options.Options())
    context.server.address = (ip, 8080)
    return context


def test_ip_addresses_map_to_faulted_services_only(resolved):
    state = mesh(tcp_fault={"kind": "reset"}, host="payment-v1")

    addon = tcp_faults(state)

    assert addon.addresses.service_at(PAYMENT_IP) == "payment"
    assert addon.addresses.service_at("10.0.0.77") is None
    # without a TCP fault nothing is resolved at all
    quiet = tcp_faults(mesh(host="payment-v1"))
    assert quiet.addresses.service_at(PAYMENT_IP) is None


def test_connection_to_a_faulted_service_gets_its_fault(resolved):
    state = mesh(runtime=[runtime(tcp_fault={"kind": "blackhole"})], tcp_fault={"kind": "reset"},
                 host="payment-v1")
    addon = tcp_faults(state)

    fault = addon.tcp_fault_for(outbound_context())

    assert fault.kind == "blackhole"  # the runtime fault beats the mesh file's
    assert addon.tcp_fault_for(outbound_context(ip="10.0.0.77")) is None
    assert addon.tcp_fault_for(outbound_context(port=routing.INBOUND_PORT)) is None  # client side only


def test_tcp_percent_is_sampled_once_per_connection(resolved, dice):
    addon = tcp_faults(mesh(tcp_fault={"kind": "reset", "percent": 50}, host="payment-v1"))
    spared, hit = outbound_context(), outbound_context()

    dice(False)
    assert addon.tcp_fault_for(spared) is None
    dice(True)
    assert addon.tcp_fault_for(spared) is None  # decided already
    assert addon.tcp_fault_for(hit).kind == "reset"

    addon.client_disconnected(hit.client)
    assert hit.client.id not in addon._tcp_decisions


def test_a_tcp_fault_makes_http_traffic_raw_tcp(resolved):
    addon = tcp_faults(mesh(tcp_fault={"kind": "latency", "latencyMs": 10}, host="payment-v1"))
    nextlayer = make_nextlayer()
    receive(nextlayer, b"GET / HTTP/1.1\r\nHost: payment:8080\r\n\r\n")

    ProtocolDetection(addon.tcp_fault_for).next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.TCPLayer)


# -- TCP: what a fault does to the data -------------------------------------------------------

def tcp_flow(addon: Faults, *messages: tuple[bool, bytes]):
    """A TCP flow through `addon`'s tcp_start and one tcp_message per (from_client, data)."""
    flow = tflow.ttcpflow()
    flow.messages = []
    flow.client_conn.proxy_mode = ProxyMode.parse("transparent@15001")
    flow.server_conn.address = (PAYMENT_IP, 8080)
    flow.metadata.clear()
    context = Context(flow.client_conn, options.Options())
    context.server = flow.server_conn
    addon.tcp_fault_for(context)
    sent, times = [], []

    async def go():
        with taddons.context(addon):
            addon.tcp_start(flow)
            started = time.monotonic()
            for from_client, data in messages:
                flow.messages.append(tcp.TCPMessage(from_client, data))
                await addon.tcp_message(flow)
                sent.append(flow.messages[-1].content)
                times.append(time.monotonic() - started)
    asyncio.run(go())
    return flow, sent, times


def test_latency_delays_every_message(resolved):
    addon = tcp_faults(mesh(tcp_fault={"kind": "latency", "latencyMs": 50}, host="payment-v1"))

    flow, sent, times = tcp_flow(addon, (True, b"ping"), (False, b"pong"))

    assert sent == [b"ping", b"pong"]
    assert times[0] >= 0.045 and times[1] >= 0.095
    assert flow.metadata[routing.META_FLAGS] == ["DI"]


def test_bandwidth_paces_data(resolved):
    addon = tcp_faults(mesh(tcp_fault={"kind": "bandwidth", "rateBytesPerSecond": 10_000}, host="payment-v1"))

    _, sent, times = tcp_flow(addon, (False, b"x" * 1000))

    assert sent == [b"x" * 1000] and times[0] >= 0.095


def test_blackhole_passes_nothing(resolved):
    addon = tcp_faults(mesh(tcp_fault={"kind": "blackhole"}, host="payment-v1"))

    flow, sent, _ = tcp_flow(addon, (True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n"))

    assert sent == [b"", b""]
    assert flow.metadata[routing.META_FLAGS] == ["FI"]


def test_limit_data_truncates_then_closes(resolved, monkeypatch):
    closed = []
    monkeypatch.setattr(faults_module, "_close_connection", closed.append)
    addon = tcp_faults(mesh(tcp_fault={"kind": "limit-data", "bytes": 10}, host="payment-v1"))

    flow, sent, _ = tcp_flow(addon, (True, b"123456"), (False, b"abcdefgh"))

    assert sent == [b"123456", b"abcd"]
    assert closed == [flow.client_conn]


def test_connections_without_a_fault_are_untouched(resolved):
    addon = tcp_faults(mesh(host="payment-v1"))

    flow, sent, times = tcp_flow(addon, (True, b"ping"))

    assert sent == [b"ping"] and times[0] < 0.05
    assert routing.META_FLAGS not in flow.metadata


# -- TCP: through a real proxy ----------------------------------------------------------------

async def _echo(reader, writer):
    while data := await reader.read(65535):
        writer.write(data)
        await writer.drain()
    writer.close()


def through_proxy(tcp_fault: dict, send: bytes, expect_bytes: int) -> tuple[bytes, float, BaseException | None]:
    """Send `send` to an echo server through a real mitmproxy with our addons; read until
    `expect_bytes` came back, EOF, or an error. (data, seconds, error)."""
    async def go():
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = echo.sockets[0].getsockname()[1]
        state = mesh(tcp_fault=tcp_fault, host="127.0.0.1")
        opts = options.Options()
        master = Master(opts)
        addon = Faults(state)
        master.addons.add(core.Core(), proxyserver.Proxyserver(), ProtocolDetection(addon.tcp_fault_for), addon)
        opts.update(mode=[f"reverse:tcp://127.0.0.1:{port}@127.0.0.1:0"])
        running = asyncio.create_task(master.run())
        ps = master.addons.get("proxyserver")
        for _ in range(250):
            if ps.listen_addrs() and addon.addresses.service_at("127.0.0.1"):
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection(*ps.listen_addrs()[0][:2])
        received, error = b"", None
        started = time.monotonic()
        writer.write(send)
        try:
            while len(received) < expect_bytes:
                chunk = await asyncio.wait_for(reader.read(65535), 5)
                if not chunk:
                    break
                received += chunk
        except (OSError, asyncio.TimeoutError) as exc:
            error = exc
        took = time.monotonic() - started
        writer.close()
        echo.close()
        await asyncio.sleep(0.1)  # let the proxy and the echo server see the close
        master.shutdown()
        await running
        return received, took, error
    return asyncio.run(go())


def test_reset_is_a_real_rst():
    received, _, error = through_proxy({"kind": "reset"}, b"hello", 5)

    assert received == b""
    assert isinstance(error, ConnectionResetError)


def test_limit_data_delivers_the_truncated_data_then_closes():
    received, _, error = through_proxy({"kind": "limit-data", "bytes": 30}, b"x" * 22, 22)

    # 22 bytes reach the echo server; 8 of its 22 come back, then the connection closes (EOF)
    assert received == b"x" * 8 and error is None


def test_slicer_sends_the_data_in_slices_apart():
    received, took, error = through_proxy({"kind": "slicer", "bytes": 5, "latencyMs": 40}, b"y" * 12, 12)

    # 12 bytes -> slices of 5, 5 and 2 bytes with 2 pauses between (the echo answers each slice at once)
    assert received == b"y" * 12 and error is None
    assert took >= 0.075
