"""upstream.Pool: HTTP/1.1 exchanges with keep-alive, against real loopback servers."""

import asyncio

import pytest

from http_backends import Backend, Reply
from meshproxy import upstream


def run(scenario) -> None:
    asyncio.run(scenario())


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


def test_a_reused_connection_that_drops_the_request_is_retried_on_a_new_one():
    async def scenario():
        pool = upstream.Pool()
        async with Backend() as server:
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            # the server will close this idle connection right as we reuse it
            [conn] = pool._idle[("127.0.0.1", server.port)]
            conn.usable = lambda: True
            conn.reader.feed_eof()
            answer = await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
        pool.close()
        assert answer.status == 200
        assert server.connections == 2

    run(scenario)


def test_a_request_h11_cannot_write_costs_no_connection():
    async def scenario():
        pool = upstream.Pool()
        async with Backend() as server:
            await pool.request("127.0.0.1", server.port, "GET", "/", headers(server.port), b"")
            with pytest.raises(upstream.Unsendable):  # mitmproxy accepts a raw UTF-8 path, h11 does not
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
