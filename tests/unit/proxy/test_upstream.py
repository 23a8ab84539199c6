"""upstream.Pool: HTTP/1.1 exchanges with keep-alive, against real loopback servers."""

import asyncio

import pytest

from http_backends import Backend, Reply
from meshproxy import upstream
from sidecar_kit import RawServer, partial_answer, run


def headers(port: int) -> list:
    return upstream.request_headers([(b"Host", b"ignored")], f"payment:{port}", b"", "GET")


def test_connections_are_kept_alive_and_reused():
    async def scenario():
        pool = upstream.Pool()
        async with Backend(lambda n, r: Reply(body=b"answer %d" % n)) as server:
            answers = [await pool.request("127.0.0.1", server.port, "GET", "/x", headers(server.port), b"")
                       for _ in range(3)]
            assert server.connections == 1
        pool.close()
        assert [a.body for a in answers] == [b"answer 1", b"answer 2", b"answer 3"]
        assert server.requests[0].headers["host"] == f"payment:{server.port}"

    run(scenario)


def test_a_kept_alive_connection_is_not_reused_once_the_mesh_changes_its_security():
    async def scenario():
        mtls_now = [True]
        opened_secure = []

        def secure(host, port):  # stands in for mesh mTLS (meshproxy.mtls.MeshTls.opener)
            opened_secure.append((host, port))
            return asyncio.open_connection(host, port)

        pool = upstream.Pool(secure=secure, secures=lambda host: mtls_now[0])
        async with Backend(lambda n, r: Reply(body=b"answer %d" % n)) as server:
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            assert (server.connections, len(opened_secure)) == (1, 1)  # kept alive, one mTLS connection
            mtls_now[0] = False  # a reload: DISABLE
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            assert (server.connections, len(opened_secure)) == (2, 1)  # a new, plaintext connection
        pool.close()

    run(scenario)


def test_concurrent_requests_use_separate_connections():
    async def scenario():
        pool = upstream.Pool()
        async with Backend(lambda n, r: Reply(delay=0.05)) as server:
            await asyncio.gather(*(pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
                                   for _ in range(3)))
            assert server.connections == 3
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            assert server.connections == 3  # back in the pool, reused
        pool.close()

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def scenario():
        pool = upstream.Pool()
        async with Backend(lambda n, r: Reply(headers=[("connection", "close")]) if n == 1 else Reply()) as server:
            first = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            await asyncio.sleep(0.05)
            second = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert (first.status, second.status) == (200, 200)
        assert server.connections == 2

    run(scenario)


def test_a_reused_connection_that_drops_the_request_is_retried_on_a_new_one(monkeypatch):
    async def scenario():
        pool = upstream.Pool()
        async with Backend() as server:
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            # the server will close this idle connection right as we reuse it
            [conn] = pool._idle[("127.0.0.1", server.port, False)]
            monkeypatch.setattr(upstream.Connection, "usable", lambda self: True)
            conn.reader.eof_received()  # the FIN arriving
            answer = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert answer.status == 200
        assert server.connections == 2

    run(scenario)


def test_a_request_http11_cannot_carry_costs_no_connection():
    async def scenario():
        pool = upstream.Pool()
        async with Backend() as server:
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            with pytest.raises(upstream.Unsendable):  # mitmproxy accepts a raw UTF-8 path, HTTP/1.1 does not
                await pool.request("127.0.0.1", server.port, "GET", "/caf\u00e9", headers(server.port), b"")
            answer = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert answer.status == 200
        assert (server.connections, pool.opened, len(server.requests)) == (1, 1, 2)

    run(scenario)


def test_connect_failure_and_reset_are_told_apart():
    async def scenario():
        pool = upstream.Pool()
        async with Backend(lambda n, r: Reply(reset=True)) as server:
            with pytest.raises(upstream.Reset):
                await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        with pytest.raises(upstream.ConnectFailure):
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")

    run(scenario)


def test_a_cancelled_exchange_closes_its_connection():
    async def scenario():
        pool = upstream.Pool()
        async with Backend(lambda n, r: Reply(delay=1.0) if n == 1 else Reply()) as server:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            answer = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert answer.status == 200
        assert server.connections == 2

    run(scenario)


def test_max_requests_per_connection():
    async def scenario():
        pool = upstream.Pool()
        async with Backend() as server:
            for _ in range(4):
                await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"", 1)
        pool.close()
        assert server.connections == 4

    run(scenario)


def test_request_headers():
    fields = [(b"Host", b"payment:8080"), (b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"), (b"TE", b"trailers"),
              (b"Content-Length", b"99"), (b"Expect", b"100-continue"), (b"X-Trace", b"abc")]

    assert upstream.request_headers(fields, "payment-shadow:8080", b"body", "POST") == [
        (b"host", b"payment-shadow:8080"), (b"X-Trace", b"abc"), (b"content-length", b"4")]
    assert upstream.request_headers([], "payment", b"", "GET") == [(b"host", b"payment")]


# -- streaming: Pool.open() answers at the headers ------------------------------------------

async def read_head(reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# (asyncio's TimeoutError is an OSError: an idle timeout once came out as Reset("connection reset: "))
@pytest.mark.parametrize(("stall", "error"), [(0.0, upstream.Reset), (1.0, TimeoutError)],
                         ids=["cut-short", "idle-timeout"])
def test_a_body_that_stops_short_is_a_reset_or_an_idle_timeout(stall, error):
    async def scenario():
        pool = upstream.Pool()
        async with RawServer(partial_answer(stall=stall)) as server:
            answer = await pool.open("127.0.0.1", server.port, "GET", "/", headers(server.port))
            got = []
            with pytest.raises(error):
                async for piece in answer.chunks(idle_timeout=0.05):
                    got.append(piece)
            assert got == [b"only this"]
            assert not pool._idle[("127.0.0.1", server.port, False)]
        pool.close()

    run(scenario)


def test_100_continue_is_skipped_and_head_has_no_body():
    async def scenario():
        async def serve(reader, writer):
            while True:
                head = await read_head(reader)
                await reader.readexactly(1 if head.startswith(b"POST") else 0)
                if head.startswith(b"HEAD"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

        pool = upstream.Pool()
        async with RawServer(serve) as server:
            created = await pool.request("127.0.0.1", server.port, "POST", "/", headers(server.port), b"x")
            head = await pool.open("127.0.0.1", server.port, "HEAD", "/", headers(server.port))
            assert head.complete and await head.read() == b""
            again = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert (created.status, created.body, again.status) == (201, b"ok", 201)
        assert server.connections == 1  # HEAD's Content-Length described no body on the wire

    run(scenario)


@pytest.mark.parametrize(("length", "framing", "wire"), [
    (None, b"transfer-encoding: chunked", b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    (5, b"content-length: 5", b"abcde"),
])
def test_a_streamed_request_body_is_framed_by_what_is_known(length, framing, wire):
    async def scenario():
        received = []

        async def serve(reader, writer):
            head = await read_head(reader)
            received.append(head)
            received.append(await reader.readexactly(len(wire)))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

        async def body():
            yield b"abc"
            await asyncio.sleep(0.01)
            yield b"de"

        pool = upstream.Pool()
        async with RawServer(serve) as server:
            answer = await pool.open("127.0.0.1", server.port, "POST", "/up", headers(server.port), None, body(),
                                     length)
        pool.close()
        assert answer.status == 200
        assert framing in received[0].lower() and received[1] == wire

    run(scenario)


def test_every_new_connection_is_reported():
    async def scenario():
        opened = []
        pool = upstream.Pool(on_connect=lambda host, port: opened.append((host, port)))
        async with Backend(lambda n, r: Reply(delay=0.02)) as server:
            await asyncio.gather(*(pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
                                   for _ in range(2)))
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert opened == [("127.0.0.1", server.port)] * 2 and pool.opened == 2

    run(scenario)


def test_a_body_that_came_with_its_head_is_taken_whole_and_what_follows_it_spoils_the_connection():
    async def scenario():
        async def serve(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # one segment: head and body
            await writer.drain()
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")  # and more
            await writer.drain()
            await reader.read()

        pool = upstream.Pool()
        async with RawServer(serve) as server:
            key = ("127.0.0.1", server.port, False)
            answer = await pool.open("127.0.0.1", server.port, "GET", "/", headers(server.port))
            assert answer.body_at_hand() == b"ok"  # read with the head, in the same piece
            assert len(pool._idle[key]) == 1  # ended and back in the pool, with no read of chunks()
            second = await pool.open("127.0.0.1", server.port, "GET", "/", headers(server.port))
            assert second.body_at_hand() == b"ok"
            assert not pool._idle[key]  # bytes after the answer: never reused
        pool.close()

    run(scenario)
