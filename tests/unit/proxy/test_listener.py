"""The fast path's edges on real sockets (what test_fastpath_listener.py and
test_fastpath_http1.py leave out): the handover in both directions, connections that were
not redirected or cannot be connected, a failing connection beside healthy ones, and the
requests or answers HttpProxy must cut short itself."""

import logging


from http_backends import Backend
from meshproxy.exchange import INBOUND, OUTBOUND
from meshproxy.fastpath import http1
from sidecar_kit import (NOBODY_HOST, V1_HOST, EchoServer, RawServer, RunningSidecar, on_loop, partial_answer,
                         payment_state, read_response, request, tcp_exchange, until)
from test_sniff import client_hello


@on_loop
async def test_tls_the_app_started_is_handed_over_to_mitmproxy_as_it_came():
    hello = client_hello()
    async with EchoServer() as stand_in, RunningSidecar(payment_state()) as sidecar:
        sidecar.mitmproxy.target = (V1_HOST, stand_in.port)  # what mitmproxy would see through the tunnel
        sidecar.to(443)
        received, _, error, _ = await tcp_exchange(V1_HOST, sidecar.outbound_port, hello, len(hello))
        sidecar.to(8443)
        await tcp_exchange(V1_HOST, sidecar.inbound_port, hello, len(hello))

    assert (received, error) == (hello, None)
    assert stand_in.received == hello + hello  # the bytes already read are replayed first
    assert sidecar.mitmproxy.handovers == [(OUTBOUND, ("10.0.0.9", 443)), (INBOUND, ("10.0.0.9", 8443))]


@on_loop
async def test_a_connection_that_was_not_redirected_is_closed():
    async with RunningSidecar(payment_state()) as sidecar:
        def not_redirected(sock):
            raise OSError("no SO_ORIGINAL_DST")
        sidecar.listener.destination_of = not_redirected
        received, took, error, _ = await tcp_exchange(V1_HOST, sidecar.outbound_port, b"GET / HTTP/1.1\r\n\r\n", 1)

    assert received == b"" and took < 0.5


@on_loop
async def test_raw_tcp_to_nobody_is_reset_and_logged():
    async with RunningSidecar(payment_state()) as sidecar:
        sidecar.to(9, NOBODY_HOST)
        received, _, error, _ = await tcp_exchange(V1_HOST, sidecar.outbound_port, b"\x00\x01", 1)
        await until(lambda: sidecar.log_lines())

    assert received == b"" and isinstance(error, ConnectionResetError)
    [entry] = sidecar.log_lines()
    assert entry["kind"] == "tcp" and entry["error"].startswith("cannot connect")


@on_loop
async def test_one_connections_failure_never_reaches_the_listener(caplog):
    async with EchoServer() as echo, RunningSidecar(payment_state()) as sidecar:
        async def broken(direction, destination):
            raise ConnectionError("mitmproxy refused the handover")
        sidecar.mitmproxy.connect = broken
        sidecar.to(443)
        with caplog.at_level(logging.ERROR, "meshproxy.listener"):
            await tcp_exchange(V1_HOST, sidecar.outbound_port, client_hello(), 1)
        sidecar.to(echo.port, V1_HOST)
        received, _, _, _ = await tcp_exchange(V1_HOST, sidecar.outbound_port, b"\x00still here", 11)

    assert received == b"\x00still here"
    assert any("failed" in r.getMessage() for r in caplog.records)


@on_loop
async def test_listening_until_stopped():
    sidecar = RunningSidecar(payment_state())
    assert not sidecar.listener.listening()
    async with sidecar:
        assert sidecar.listener.listening()
        assert sidecar.sidecar.ready()  # listening, and a config is loaded
    assert not sidecar.listener.listening()


def get(port: int, path: str = "/pay") -> bytes:
    return request("GET", path, f"payment:{port}")


@on_loop
async def test_a_target_http11_cannot_carry_is_400():
    async with Backend() as v1, RunningSidecar(payment_state()) as web:
        reader, writer = await web.to(v1.port).connect()
        writer.write(get(v1.port, "/caf\u00e9"))
        reply = await read_response(reader, timeout=5, partial=True)
        writer.close()

    assert reply.status == 400 and v1.requests == []


@on_loop
async def test_an_answer_that_stalls_is_cut_after_the_stream_idle_timeout(monkeypatch):
    monkeypatch.setattr(http1, "STREAM_IDLE_TIMEOUT", 0.05)

    async with RawServer(partial_answer(stall=1.0)) as server, RunningSidecar(payment_state()) as web:
        reader, writer = await web.to(server.port).connect()
        writer.write(get(server.port))
        reply = await read_response(reader, timeout=1, partial=True)
        writer.close()
        await until(lambda: web.log_lines())

    assert (reply.body, reply.complete) == (b"only this", False)
    [entry] = web.log_lines()
    assert "UPE" in entry["response_flags"]
    assert entry["error"] == "stream idle timeout"
