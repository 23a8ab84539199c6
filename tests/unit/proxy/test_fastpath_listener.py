"""fastpath.listener: what each accepted connection speaks decides its path.

HTTP/1.1 goes to the HTTP proxy; a client that stays silent (the server speaks first) and
opaque TCP are relayed raw, half-closes included; TLS the app started is handed over to
the in-process mitmproxy, while h2c stays on the fast path (fastpath.http2); a connection to a service with a TCP fault is relayed
raw with its toxic whatever it speaks. The basic paths run on asyncio and on uvloop (the
sidecar's loop in production).
"""

import asyncio
import hashlib

import h2.config
import h2.connection
import h2.events
import pytest

from h2_backends import H2Backend
from h2_backends import Reply as H2Reply
from meshproxy.fastpath import listener
from sidecar_kit import (EchoServer, RawServer, RunningSidecar, at_eof, exchange, keep_alive_server, payment_state,
                         request, response, run, self_signed, use_private_handover_ports)

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
FAULTED = "127.0.0.2"  # the address of the service with a TCP fault (all of 127/8 is loopback)


@LOOPS
def test_http1_is_detected_and_proxied_request_by_request(loop):
    log = []

    async def scenario():
        async with RawServer(keep_alive_server(lambda m: response(body=m.target.encode()), log)) as server, \
                RunningSidecar(destination=server.address) as mesh:
            answer = await exchange(mesh.outbound_port, request(
                target="/detected", headers=(("Connection", "keep-alive, x-private"), ("x-private", "1"))))
            entries = mesh.log_lines()
        assert (answer.status, answer.body) == (200, b"/detected")
        [seen] = log
        assert seen.header("x-private") is None  # parsed and rebuilt, not relayed: hop-by-hop headers are gone
        assert [(e["kind"], e["path"]) for e in entries] == [("http", "/detected")]

    run(scenario, loop)


def test_a_silent_client_is_relayed_raw_after_the_detection_timeout():
    async def banner_first(reader, writer):
        writer.write(b"220 mail.test ESMTP\r\n")
        line = await reader.readline()
        writer.write(b"250 " + line)
        await reader.read()

    async def scenario():
        async with RawServer(banner_first) as server, RunningSidecar(destination=server.address) as mesh:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reader, writer = await mesh.connect()
            banner = await asyncio.wait_for(reader.readline(), 2)
            waited = loop.time() - started
            writer.write(b"EHLO client\r\n")
            reply = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            await asyncio.sleep(0.05)
            entries = mesh.log_lines()
        assert (banner, reply) == (b"220 mail.test ESMTP\r\n", b"250 EHLO client\r\n")
        assert listener.DETECT_TIMEOUT * 0.9 <= waited < 1.5  # nothing was connected before the timeout
        assert [e["kind"] for e in entries] == ["tcp"]

    run(scenario)


@LOOPS
def test_opaque_tcp_is_relayed_both_ways_with_half_closes(loop):
    payload = bytes(range(256)) * 4096 + b"\x00\xff"

    async def digest_after_eof(reader, writer):
        received = await reader.read()  # to the client's half-close
        writer.write(hashlib.sha256(received).digest() + b"%d" % len(received))
        writer.write_eof()

    async def scenario():
        async with RawServer(digest_after_eof) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"\x16\x00binary, not TLS" + payload)
            writer.write_eof()  # the client is done sending, but still reads
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            stats = mesh.sidecar.telemetry.stats()["tcp"]
        expected = b"\x16\x00binary, not TLS" + payload
        assert answer == hashlib.sha256(expected).digest() + b"%d" % len(expected)
        received = {row["metric"]: row["value"] for row in stats}
        assert received["istio_tcp_received_bytes_total"] == len(expected)
        assert received["istio_tcp_sent_bytes_total"] == len(answer)

    run(scenario, loop)


def test_a_client_that_closes_at_once_costs_no_upstream_connection():
    async def scenario():
        async with RawServer(keep_alive_server(lambda m: response())) as server, \
                RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.close()
            await asyncio.sleep(0.3)
        assert server.connections == 0

    run(scenario)


# -- handed over to mitmproxy ------------------------------------------------------------

def test_tls_started_by_the_app_is_handed_over_and_passes_untouched(tmp_path, monkeypatch):
    use_private_handover_ports(monkeypatch, tmp_path)
    server_context, client_context = self_signed(tmp_path)

    async def tls_echo(reader, writer):
        data = await reader.readexactly(4)
        writer.write(b"pong:" + data)
        await writer.drain()

    async def scenario():
        async with RawServer(tls_echo, ssl_context=server_context) as server, \
                RunningSidecar(destination=server.address, real_mitmproxy=True) as mesh:
            reader, writer = await asyncio.wait_for(
                mesh.connect(ssl=client_context, server_hostname="backend.test"), 30)  # mitmproxy starts first
            certificate = writer.get_extra_info("peercert")
            writer.write(b"ping")
            answer = await asyncio.wait_for(reader.readexactly(9), 5)
            closed = await at_eof(reader)  # the server's close came through too
            writer.close()
            await asyncio.sleep(0.2)  # the relays wind down before the loop ends
            handed_over = mesh.mitmproxy.handed_over
        # the backend's own certificate: mitmproxy relayed the TLS bytes, it did not intercept them
        assert dict(pair[0] for pair in certificate["subject"])["commonName"] == "backend.test"
        assert answer == b"pong:ping" and closed
        assert handed_over == 1

    run(scenario)


def test_h2c_with_prior_knowledge_is_answered_on_the_fast_path(tmp_path, monkeypatch):
    use_private_handover_ports(monkeypatch, tmp_path)  # should it be handed over after all

    async def scenario():
        async with H2Backend(lambda n, r: H2Reply(200, b"over h2", headers=[("x-h2", "yes")])) as server, \
                RunningSidecar(destination=("127.0.0.1", server.port), real_mitmproxy=True) as mesh:
            reader, writer = await mesh.connect()
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", f"backend:{server.port}"),
                                  (":path", "/h2")], end_stream=True)
            writer.write(conn.data_to_send())
            headers, body, ended = {}, b"", False
            async with asyncio.timeout(5):
                while not ended:
                    data = await reader.read(65536)
                    assert data, "the connection closed before the answer"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            headers = dict(event.headers)
                        elif isinstance(event, h2.events.DataReceived):
                            body += event.data
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, h2.events.StreamEnded):
                            ended = True
                    writer.write(conn.data_to_send())
            writer.close()
            handed_over, master = mesh.sidecar.mitmproxy.handed_over, mesh.sidecar.mitmproxy.master
            entries = mesh.log_lines()
        assert (headers[":status"], headers["x-h2"], body) == ("200", "yes", b"over h2")
        [seen] = server.requests
        assert seen.header(":path") == "/h2"
        assert (handed_over, master) == (0, None)  # fastpath.http2, since 59a54d9: mitmproxy never started
        assert [(e["protocol"], e["path"], e["status"]) for e in entries] == [("HTTP/2.0", "/h2", 200)]

    run(scenario)


# -- TCP faults ----------------------------------------------------------------------------

def faulted(fault: dict):
    return payment_state(versions=(("v1", FAULTED),), tcpFault=fault)


class Recorder:
    """A server that sends `banner` at once, then records what it reads (and when) until EOF."""

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.reads: list[tuple[float, bytes]] = []

    async def __call__(self, reader, writer):
        writer.write(self.banner)
        while data := await reader.read(65536):
            self.reads.append((asyncio.get_running_loop().time(), data))

    @property
    def received(self) -> bytes:
        return b"".join(data for _, data in self.reads)


def flags(mesh: RunningSidecar) -> list[str]:
    return [e["response_flags"] for e in mesh.log_lines() if e["kind"] == "tcp"]


@LOOPS
def test_reset_resets_the_callers_connection_before_anything_is_connected(loop):
    async def scenario():
        async with EchoServer(FAULTED) as server, \
                RunningSidecar(faulted({"kind": "reset"}), destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request())
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 2)
            writer.close()
            await asyncio.sleep(0.05)
            entries = flags(mesh)
        assert server.connections == 0
        assert entries == ["FI"]

    run(scenario, loop)


def test_blackhole_swallows_the_data_both_ways():
    recorder = Recorder(banner=b"welcome")

    async def scenario():
        async with RawServer(recorder, FAULTED) as server, \
                RunningSidecar(faulted({"kind": "blackhole"}), destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"ping")
            closed = await at_eof(reader, 0.4)  # nothing comes back, and the connection stays open
            writer.close()
            await asyncio.sleep(0.05)
        assert not closed
        assert server.connections == 1 and recorder.received == b""

    run(scenario)


HTTP_GET = b"GET / HTTP/1.1\r\nHost: payment\r\n\r\n"


def test_latency_delays_every_piece_each_way():
    async def scenario():
        async with EchoServer(FAULTED) as server, \
                RunningSidecar(faulted({"kind": "latency", "latencyMs": 100}), destination=server.address) as mesh:
            loop = asyncio.get_running_loop()
            reader, writer = await mesh.connect()
            started = loop.time()
            writer.write(HTTP_GET)  # HTTP too: relayed raw, as it came
            echoed = await asyncio.wait_for(reader.readexactly(len(HTTP_GET)), 3)
            round_trip = loop.time() - started
            writer.close()
            await asyncio.sleep(0.05)
            entries = flags(mesh)
        assert echoed == HTTP_GET  # no source header: not parsed as HTTP
        assert 0.19 <= round_trip < 2.0
        assert entries == ["DI"]

    run(scenario)


def test_limit_data_closes_the_connection_after_so_many_bytes():
    async def scenario():
        async with RawServer(Recorder(banner=bytes(range(100))), FAULTED) as server, \
                RunningSidecar(faulted({"kind": "limit-data", "bytes": 10}), destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            received = await asyncio.wait_for(reader.read(), 2)  # then EOF
            writer.close()
        assert received == bytes(range(10))

    run(scenario)


def test_slicer_sends_small_slices_apart():
    recorder = Recorder()

    async def scenario():
        async with RawServer(recorder, FAULTED) as server, \
                RunningSidecar(faulted({"kind": "slicer", "bytes": 10, "latencyMs": 20}),
                               destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            started = asyncio.get_running_loop().time()
            writer.write(bytes(100))
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 3)
            writer.close()
        sizes = [len(data) for _, data in recorder.reads]
        assert recorder.received == bytes(100)
        assert max(sizes) <= 10 and len(sizes) >= 10
        assert recorder.reads[-1][0] - started >= 0.15  # 9 pauses of 20 ms

    run(scenario)


def test_bandwidth_throttles_the_transfer():
    recorder = Recorder()
    size = 30_000

    async def scenario():
        async with RawServer(recorder, FAULTED) as server, \
                RunningSidecar(faulted({"kind": "bandwidth", "rateBytesPerSecond": 100_000}),
                               destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            started = asyncio.get_running_loop().time()
            writer.write(bytes(size))
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 3)
            writer.close()
        assert len(recorder.received) == size
        assert recorder.reads[-1][0] - started >= 0.25  # 30 kB at 100 kB/s: 0.3 s

    run(scenario)
