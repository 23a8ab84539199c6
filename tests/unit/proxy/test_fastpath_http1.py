"""fastpath.http1: the HTTP/1.1 proxy of the fast path, through a whole sidecar on loopback.

Framing as the caller sees it byte by byte (Content-Length passed through, chunked and
close-delimited answers re-framed, bodyless answers, 100-continue, pipelining, keep-alive
with one upstream connection), bad requests, a refused upstream, the source header over
one hop through two sidecars, upgrades, a caller leaving while it waits (or in the middle
of its upload), and retries only before any answer byte went out.
"""

import asyncio

import pytest
from prometheus_client import generate_latest

from http_backends import Backend, fail_first
from meshproxy.fastpath.http1 import BUFFER_LIMIT
from sidecar_kit import (RawServer, RunningSidecar, answer_once, at_eof, exchange, free_port, keep_alive_server,
                         payment_state, read_head, read_request, read_response, request, response, run)


def echo_target(message) -> bytes:
    return response(body=message.target.encode())


# -- framing -----------------------------------------------------------------------------

@pytest.mark.parametrize("framing, version, expected", [
    ("length", "1.1", "length"),
    ("chunked", "1.1", "chunked"),
    ("close", "1.1", "chunked"),  # close-delimited, re-chunked: the caller's connection stays usable
    ("close", "1.0", "close"),  # an HTTP/1.0 caller reads to the end of the connection
    ("length", "1.0", "length"),
    ("chunked", "1.0", "close"),
])
def test_answers_reach_the_caller_with_its_own_framing(framing, version, expected):
    body = b"0123456789" * 1000
    backend = answer_once(response(body=body, framing=framing, headers=(("x-answer", "1"),)),
                          linger=0 if framing == "close" else None)

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request(version=version))
            answer = await read_response(reader)
            closes = await at_eof(reader, 0.5)
            writer.close()
        assert (answer.status, answer.body, answer.framing) == (200, body, expected)
        assert answer.header("x-answer") == "1"
        assert answer.header("content-length") == (str(len(body)) if expected == "length" else None)
        assert answer.start.startswith(f"HTTP/{version} ")
        # HTTP/1.0 callers do not keep connections alive; HTTP/1.1 ones do, whatever the upstream did
        assert closes == (version == "1.0")
        assert (answer.header("connection") == "close") == (version == "1.0")

    run(scenario)


def test_head_keeps_the_content_length_and_sends_no_body():
    log = []

    def reply(message):
        if message.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nx-head: yes\r\n\r\n"
        return response(body=b"after head")

    async def scenario():
        async with RawServer(keep_alive_server(reply, log)) as server, \
                RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request("HEAD", "/big"))
            head = await read_response(reader, "HEAD")
            writer.write(request("GET", "/next"))  # would be read as the HEAD's body if any body came
            after = await read_response(reader)
            writer.close()
        assert (head.status, head.header("content-length"), head.header("x-head"), head.body) == \
               (200, "1234", "yes", b"")
        assert head.header("transfer-encoding") is None
        assert after.body == b"after head"
        assert [m.method for m in log] == ["HEAD", "GET"]
        assert server.connections == 1

    run(scenario)


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses_are_not_given_a_body(status):
    def reply(message):
        if message.target == "/empty":
            return b"HTTP/1.1 %d X\r\netag: \"v1\"\r\n\r\n" % status
        return response(body=b"second")

    async def scenario():
        async with RawServer(keep_alive_server(reply)) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request(target="/empty"))
            start, headers = await read_head(reader)
            writer.write(request(target="/next"))
            after = await read_response(reader)
            writer.close()
        assert start.split(" ")[1] == str(status)
        names = [n for n, _ in headers]
        assert "transfer-encoding" not in names and ("etag", '"v1"') in headers
        assert after.body == b"second"  # nothing (no "0\r\n\r\n") stood between the two answers

    run(scenario)


def test_expect_100_continue_is_answered_by_the_proxy_before_the_body_is_sent():
    log = []

    async def scenario():
        async with RawServer(keep_alive_server(lambda m: response(body=b"got " + m.body), log)) as server, \
                RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            async with asyncio.timeout(2):  # the caller sends its body only once invited
                interim, _ = await read_head(reader)
            writer.write(b"hello")
            answer = await read_response(reader)
            writer.close()
        assert interim.startswith("HTTP/1.1 100")
        assert (answer.status, answer.body) == (200, b"got hello")
        [seen] = log
        assert seen.header("expect") is None  # the proxy answered it; the upstream gets the body at once
        assert seen.body == b"hello"

    run(scenario)


def test_pipelined_requests_are_answered_in_order():
    async def reply(message):
        if message.target == "/1":
            await asyncio.sleep(0.1)  # the first is the slowest
        return response(body=message.target.encode() + b":" + message.body)

    async def scenario():
        async with RawServer(keep_alive_server(reply)) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request(target="/1") + request("POST", "/2", body=b"two") + request(target="/3"))
            answers = [await read_response(reader) for _ in range(3)]
            writer.close()
        assert [a.body for a in answers] == [b"/1:", b"/2:two", b"/3:"]

    run(scenario)


def test_keep_alive_and_connection_close_callers_share_one_upstream_connection():
    async def scenario():
        async with RawServer(keep_alive_server(echo_target)) as server, \
                RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            kept = []
            for i in range(3):
                writer.write(request(target=f"/kept/{i}"))
                kept.append(await read_response(reader))
            assert not await at_eof(reader, 0.1)  # a keep-alive caller's connection stays open
            writer.close()
            closing = []
            for i in range(3):
                reader, writer = await mesh.connect()
                writer.write(request(target=f"/closed/{i}", headers=(("Connection", "close"),)))
                closing.append((await read_response(reader), await at_eof(reader)))
                writer.close()
            connections = mesh.upstream_connections()
            metrics = generate_latest(mesh.sidecar.telemetry.registry).decode()
        assert [a.body for a in kept] == [b"/kept/0", b"/kept/1", b"/kept/2"]
        assert all(a.header("connection") is None for a in kept)
        assert [(a.body, a.header("connection"), eof) for a, eof in closing] == \
               [(f"/closed/{i}".encode(), "close", True) for i in range(3)]
        assert server.connections == 1  # four client connections, one upstream connection
        assert connections == {f"127.0.0.1:{server.port}": 1}
        assert f'meshcli_upstream_connections_opened_total{{destination="127.0.0.1:{server.port}"}} 1.0' in metrics

    run(scenario)


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: backend\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: twelve\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
], ids=["header-without-colon", "content-length-not-a-number", "bad-chunk-size"])
def test_a_bad_request_gets_400_and_the_connection_is_closed(bad):
    async def scenario():
        async with Backend() as server, RunningSidecar(destination=("127.0.0.1", server.port)) as mesh:
            reader, writer = await mesh.connect()
            writer.write(bad)
            answer = await read_response(reader)
            closed = await at_eof(reader)
            writer.close()
        assert answer.status == 400
        assert answer.header("connection") == "close" and closed
        assert server.requests == []

    run(scenario)


def test_the_source_header_is_added_outbound_to_mesh_services_and_popped_inbound():
    async def scenario():
        async with Backend() as server:
            async with RunningSidecar(payment_state(), destination=("10.0.0.9", server.port)) as mesh:
                await exchange(mesh.outbound_port, request(host=f"payment:{server.port}"))
                mesh.destination = ("127.0.0.1", server.port)
                await exchange(mesh.outbound_port, request(host="elsewhere.example"))  # not a mesh service
                await exchange(mesh.inbound_port, request(host="web:80", headers=(("x-meshcli-source", "orders-v1"),)))
                log = mesh.log_lines()
        to_mesh, to_elsewhere, inbound = server.requests
        assert to_mesh.headers.get("x-meshcli-source") == "web-v1"
        assert to_mesh.headers["host"] == f"payment:{server.port}"  # the app's Host, to the version's address
        assert "x-meshcli-source" not in to_elsewhere.headers
        assert "x-meshcli-source" not in inbound.headers
        assert [(e["direction"], e["source"], e["status"]) for e in log] == \
               [("outbound", "web-v1", 200), ("outbound", "web-v1", 200), ("inbound", "orders-v1", 200)]

    run(scenario)


def test_an_upstream_that_refuses_the_connection_gets_503_uf():
    async def scenario():
        async with RunningSidecar(destination=("127.0.0.1", free_port())) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request())
            refused = await read_response(reader)
            writer.write(request(target="/again"))  # the caller's connection is still good
            again = await read_response(reader)
            writer.close()
            log = mesh.log_lines()
        assert (refused.status, again.status) == (503, 503)
        assert b"connection failure" in refused.body
        assert [(e["status"], e["response_flags"]) for e in log] == [(503, "UF"), (503, "UF")]

    run(scenario)


def test_one_hop_through_two_sidecars_names_the_caller_and_not_what_the_app_claims():
    async def scenario():
        async with Backend() as app, RunningSidecar(destination=("127.0.0.1", app.port)) as server_side:
            # the client's sidecar sends payment's calls to the server's inbound listener
            async with RunningSidecar(payment_state(),
                                      destination=("10.0.0.9", server_side.inbound_port)) as client_side:
                answer = await exchange(client_side.outbound_port, request(
                    host="payment", headers=(("x-meshcli-source", "spoofed-v9"),)))
            inbound = server_side.log_lines()
        assert answer.status == 200
        [seen] = app.requests
        assert "x-meshcli-source" not in seen.headers and seen.headers["host"] == "payment"
        assert [(e["direction"], e["source"]) for e in inbound] == [("inbound", "web-v1")]

    run(scenario)


# -- upgrades --------------------------------------------------------------------------------

async def websocket_like(reader, writer):
    """101, a greeting in the same segment, then every piece echoed upper-cased until EOF."""
    message = await read_request(reader)
    assert message.header("upgrade") == "websocket"
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello")
    while data := await reader.read(65536):
        writer.write(data.upper())
    writer.write(b"|bye")
    writer.write_eof()


UPGRADE = request(target="/ws", headers=(("Connection", "Upgrade"), ("Upgrade", "websocket")))


def test_an_upgrade_gets_101_and_then_bytes_flow_both_ways():
    async def scenario():
        async with RawServer(websocket_like) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(UPGRADE)
            start, headers = await read_head(reader)
            greeting = await reader.readexactly(5)
            writer.write(b"ping")
            echoed = await reader.readexactly(4)
            writer.write(b"\x00binary\xff")
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 2)
            writer.close()
        assert start.startswith("HTTP/1.1 101")
        assert ("upgrade", "websocket") in headers and ("connection", "Upgrade") in headers
        assert (greeting, echoed, rest) == (b"hello", b"PING", b"\x00BINARY\xff|bye")

    run(scenario)


def test_bytes_sent_right_after_an_upgrade_request_are_not_lost():
    # Downstream.closed() reads them into its stash while the upgrade waits for its 101
    async def slow_websocket(reader, writer):
        await asyncio.sleep(0.2)  # the caller speaks before the 101 arrives
        await websocket_like(reader, writer)

    async def scenario():
        async with RawServer(slow_websocket) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(UPGRADE)
            await asyncio.sleep(0.05)
            writer.write(b"early")
            start, _ = await read_head(reader)
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 2)
            writer.close()
        assert start.startswith("HTTP/1.1 101")
        assert rest == b"helloEARLY|bye"

    run(scenario)


# -- a caller that leaves ----------------------------------------------------------------

@pytest.mark.parametrize("phase", [
    "headers",
    "body",
])
def test_a_caller_that_leaves_frees_its_circuit_breaker_slot_and_its_upstream_connection_at_once(phase):
    ended = {}

    async def backend(reader, writer):
        message = await read_request(reader)
        if message.target == "/slow":
            if phase == "body":  # the head and a first piece, then nothing for a while
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            start = asyncio.get_running_loop().time()
            # wait for 4 s unless the proxy closes this connection first
            if await at_eof(reader, 4.0):
                ended["after"] = asyncio.get_running_loop().time() - start
                return
        writer.write(response(body=b"fast"))
        await writer.drain()
        await reader.read()

    async def scenario():
        async with RawServer(backend) as server, \
                RunningSidecar(payment_state(circuitBreaker={"maxConnections": 1}),
                               destination=("127.0.0.1", server.port)) as mesh:
            host = f"payment:{server.port}"
            loop = asyncio.get_running_loop()
            slow_reader, slow_writer = await mesh.connect()
            slow_writer.write(request(target="/slow", host=host))
            if phase == "body":
                await read_head(slow_reader)
                assert await slow_reader.readuntil(b"first\r\n")
            await asyncio.sleep(0.2)
            slow_writer.close()  # gives up while the upstream is slow
            started = loop.time()
            answer = await asyncio.wait_for(exchange(mesh.outbound_port, request(target="/fast", host=host)), 6)
            waited = loop.time() - started
            await asyncio.sleep(0.1)
            log = mesh.log_lines()
        assert answer.body == b"fast"
        assert waited < 2.0  # not the 3.8 s the slow upstream would have held the only slot
        assert ended["after"] < 2.0  # the abandoned upstream connection was closed
        assert server.connections == 2
        if phase == "headers":
            assert [(e["path"], e["response_flags"]) for e in log] == [("/slow", "DC"), ("/fast", "-")]

    run(scenario)


@pytest.mark.parametrize("flagged", [
    False,
    True,
], ids=["slot-and-connection", "access-log"])
def test_a_caller_that_leaves_in_the_middle_of_a_streamed_upload_frees_its_slot(flagged):
    async def scenario():
        async with RawServer(keep_alive_server(lambda m: response(body=b"%d" % m.size), keep=False)) as server, \
                RunningSidecar(payment_state(circuitBreaker={"maxConnections": 1}),
                               destination=("127.0.0.1", server.port)) as mesh:
            host = f"payment:{server.port}"
            reader, writer = await mesh.connect()
            writer.write(request("PUT", "/upload", host=host, headers=(("Content-Length", str(8 * BUFFER_LIMIT)),)))
            writer.write(b"x" * BUFFER_LIMIT)  # an eighth of it, then the caller is gone
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            answer = await asyncio.wait_for(exchange(mesh.outbound_port, request(target="/next", host=host)), 2)
            await asyncio.sleep(0.1)
            closed, [upload, _] = server.closed, mesh.log_lines()
        assert (answer.status, answer.body) == (200, b"0")
        assert server.connections == 2 and closed == 1  # the half-sent upload's connection was closed
        if flagged:
            assert "DC" in upload["response_flags"]

    run(scenario)


# -- retries -------------------------------------------------------------------------------

RETRIES = {"routes": [{"name": "main", "retries": {"attempts": 3, "retryOn": ["5xx", "reset"], "backoffMs": 1}}]}


def test_a_failure_before_any_answer_byte_is_retried():
    async def scenario():
        async with Backend(fail_first(2)) as server, \
                RunningSidecar(payment_state(**RETRIES), destination=("127.0.0.1", server.port)) as mesh:
            answer = await exchange(mesh.outbound_port, request(host=f"payment:{server.port}"))
            [entry] = mesh.log_lines()
        assert (answer.status, answer.body) == (200, b"ok")
        assert len(server.requests) == 3 and entry["attempts"] == 3

    run(scenario)


def test_an_answer_that_breaks_after_its_first_bytes_went_out_is_not_retried():
    backend = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial", linger=0.05)  # 993 short

    async def scenario():
        async with RawServer(backend) as server, \
                RunningSidecar(payment_state(**RETRIES), destination=("127.0.0.1", server.port)) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request(host=f"payment:{server.port}"))
            start, headers = await read_head(reader)
            received = await asyncio.wait_for(reader.read(), 2)  # then the proxy closes: it cannot say more
            writer.close()
            [entry] = mesh.log_lines()
        assert start.startswith("HTTP/1.1 200") and ("content-length", "1000") in headers
        assert received == b"partial"
        assert server.connections == 1  # no second try
        assert entry["attempts"] == 1 and "UPE" in entry["response_flags"]

    run(scenario)


@pytest.mark.parametrize("size, chunked, tries", [
    (BUFFER_LIMIT, False, 4),  # buffered: retried
    (BUFFER_LIMIT + 1, False, 1),  # larger than BUFFER_LIMIT: streamed, tried once
    (1024, True, 1),  # chunked: streamed, tried once
])
def test_a_streamed_request_body_is_not_retried(size, chunked, tries):
    log = []

    async def scenario():
        async with RawServer(keep_alive_server(lambda m: response(503, b"busy"), log, keep=False)) as server, \
                RunningSidecar(payment_state(**RETRIES), destination=("127.0.0.1", server.port)) as mesh:
            reader, writer = await mesh.connect()
            if chunked:
                writer.write(b"PUT /doc HTTP/1.1\r\nHost: payment:%d\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n0\r\n\r\n" % (server.port, size, b"x" * size))
            else:
                writer.write(request("PUT", "/doc", host=f"payment:{server.port}", body=b"x" * size))
            answer = await read_response(reader)
            writer.close()
        assert answer.status == 503
        assert [m.size for m in log] == [size] * tries  # each try carried the whole body

    run(scenario)
