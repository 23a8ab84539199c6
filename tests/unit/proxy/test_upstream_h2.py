"""upstream_h2.Pool: HTTP/2 cleartext exchanges, multiplexed, against real loopback h2 servers."""

import asyncio

import h2.errors
import pytest

from h2_backends import H2Backend, Reply
from meshproxy import upstream, upstream_h2


def run(scenario) -> None:
    asyncio.run(scenario())


def headers(port: int, body: bytes = b"", method: str = "GET") -> list:
    return upstream_h2.request_headers([(b"x-trace", b"abc")], f"payment:{port}", body, method)


async def get(pool: upstream_h2.Pool, server: H2Backend, path: str = "/x", **options) -> upstream.Response:
    return await pool.request("127.0.0.1", server.port, "GET", path, headers(server.port), b"", **options)


def test_an_exchange_sends_the_pseudo_headers_and_keeps_http2():
    async def scenario():
        pool = upstream_h2.Pool()
        reply = Reply(201, b"made", headers=[("x-answer", "42"), ("set-cookie", "a=1"), ("set-cookie", "b=2")])
        async with H2Backend(lambda n, r: reply) as server:
            answer = await pool.request("127.0.0.1", server.port, "POST", "/grpc.Svc/Call?q=1",
                                        headers(server.port, b"order", "POST"), b"order")
        pool.close()
        [request] = server.requests
        assert request.headers == [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.Svc/Call?q=1"),
                                   (":authority", f"payment:{server.port}"), ("x-trace", "abc"),
                                   ("content-length", "5")]
        assert request.body == b"order"
        assert (answer.status, answer.body, answer.http_version) == (201, b"made", b"HTTP/2.0")
        assert answer.headers == [(b"x-answer", b"42"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
        assert answer.trailers == []

    run(scenario)


def test_trailers_reach_the_caller():
    async def scenario():
        pool = upstream_h2.Pool()
        reply = Reply(body=b"\x00\x00\x00\x00\x02hi", headers=[("content-type", "application/grpc")],
                      trailers=[("grpc-status", "0"), ("grpc-message", "fine")])
        async with H2Backend(lambda n, r: reply) as server:
            answer = await get(pool, server)
        pool.close()
        assert answer.body == b"\x00\x00\x00\x00\x02hi"
        assert answer.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"fine")]

    run(scenario)


def test_concurrent_streams_share_one_connection():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(body=r.header(":path").encode(), delay=0.05)) as server:
            answers = await asyncio.gather(*(get(pool, server, f"/{i}") for i in range(20)))
            await get(pool, server)
        pool.close()
        assert [a.body for a in answers] == [f"/{i}".encode() for i in range(20)]
        assert (server.connections, pool.opened) == (1, 1)

    run(scenario)


def test_the_servers_max_concurrent_streams_is_respected_with_more_connections():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(delay=0.05), max_concurrent_streams=2) as server:
            answers = await asyncio.gather(*(get(pool, server) for _ in range(5)))
        pool.close()
        assert [a.status for a in answers] == [200] * 5
        assert server.connections == 3

    run(scenario)


def test_max_requests_per_connection_counts_streams():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend() as server:
            for _ in range(5):
                await get(pool, server, max_requests_per_connection=2)
        pool.close()
        assert server.connections == 3

    run(scenario)


def test_a_stream_the_server_resets_is_a_reset_and_the_connection_lives_on():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(reset=True) if n == 1 else Reply()) as server:
            with pytest.raises(upstream.Reset) as failure:
                await get(pool, server)
            answer = await get(pool, server)
        pool.close()
        assert not isinstance(failure.value, upstream_h2.Refused)
        assert answer.status == 200
        assert server.connections == 1

    run(scenario)


def test_goaway_after_an_answer_sends_the_next_request_on_a_new_connection():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(goaway="after") if n == 1 else Reply()) as server:
            first = await get(pool, server)
            await asyncio.sleep(0.05)
            second = await get(pool, server)
        pool.close()
        assert (first.status, second.status) == (200, 200)
        assert server.connections == 2

    run(scenario)


def test_a_stream_refused_by_goaway_is_sent_again_on_a_new_connection():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(goaway="refuse") if n == 2 else Reply()) as server:
            await get(pool, server)
            answer = await get(pool, server)  # stream 3: the GOAWAY says only stream 1 was processed
        pool.close()
        assert answer.status == 200
        assert (server.connections, len(server.requests)) == (2, 3)

    run(scenario)


def test_a_goaway_covering_an_unanswered_stream_is_a_reset():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(goaway="abort") if n == 1 else Reply()) as server:
            with pytest.raises(upstream.Reset) as failure:
                await get(pool, server)
            answer = await get(pool, server)
        pool.close()
        assert not isinstance(failure.value, upstream_h2.Refused)  # it was processed: not sent again
        assert answer.status == 200
        assert (server.connections, len(server.requests)) == (2, 2)

    run(scenario)


def test_a_timeout_cancels_only_its_own_stream():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend(lambda n, r: Reply(delay=1.0) if r.header(":path") == "/slow" else Reply(delay=0.1)) \
                as server:
            async def slow():
                async with asyncio.timeout(0.05):
                    await get(pool, server, "/slow")

            gave_up, answer = await asyncio.gather(slow(), get(pool, server, "/fast"), return_exceptions=True)
            await asyncio.sleep(0.05)
            after = await get(pool, server, "/fast")
        pool.close()
        assert isinstance(gave_up, TimeoutError)
        assert (answer.status, after.status) == (200, 200)
        assert server.client_resets == [(1, h2.errors.ErrorCodes.CANCEL)]
        assert server.connections == 1

    run(scenario)


def test_connect_failure():
    async def scenario():
        pool = upstream_h2.Pool()
        async with H2Backend() as server:
            port = server.port
        with pytest.raises(upstream.ConnectFailure):
            await pool.request("127.0.0.1", port, "GET", "/", headers(port), b"")

    run(scenario)


def test_a_server_that_does_not_speak_http2_is_a_connect_failure():
    async def scenario():
        async def http1(reader, writer):
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(http1, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(upstream.ConnectFailure):
            await upstream_h2.Pool().request("127.0.0.1", port, "GET", "/", headers(port), b"")
        server.close()

    run(scenario)


def test_a_server_that_never_sends_its_settings_is_a_connect_failure_in_time(monkeypatch):
    monkeypatch.setattr(upstream_h2, "CONNECT_TIMEOUT", 0.1)

    async def scenario():
        async def silent(reader, writer):
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = upstream_h2.Pool()
        failures = await asyncio.gather(*(pool.request("127.0.0.1", port, "GET", "/", headers(port), b"")
                                          for _ in range(3)), return_exceptions=True)
        server.close()
        assert [type(f) for f in failures] == [upstream.ConnectFailure] * 3
        assert pool.opened == 1  # the three waited for the same connect

    run(scenario)


def test_big_bodies_both_ways_follow_flow_control():
    async def scenario():
        pool = upstream_h2.Pool()
        upload = bytes(range(256)) * 1024  # 256 KiB, four times the initial window
        async with H2Backend(lambda n, r: Reply(body=r.body[::-1] * 2)) as server:
            answers = await asyncio.gather(*(
                pool.request("127.0.0.1", server.port, "POST", "/", headers(server.port, upload, "POST"), upload)
                for _ in range(3)))
        pool.close()
        assert [request.body == upload for request in server.requests] == [True] * 3
        assert [a.body == upload[::-1] * 2 for a in answers] == [True] * 3
        assert server.connections == 1

    run(scenario)


def test_request_headers():
    fields = [(b"Host", b"payment:8080"), (b"Keep-Alive", b"5"), (b"Cookie", b"a=1"), (b"TE", b"trailers"),
              (b"Content-Length", b"99"), (b"Expect", b"100-continue"), (b"X-Trace", b"abc"), (b"cookie", b"b=2")]

    assert upstream_h2.request_headers(fields, "payment-shadow:8080", b"body", "POST") == [
        (b":authority", b"payment-shadow:8080"), (b"cookie", b"a=1"), (b"te", b"trailers"), (b"x-trace", b"abc"),
        (b"cookie", b"b=2"), (b"content-length", b"4")]
    assert upstream_h2.request_headers([(b"te", b"gzip")], "payment", b"", "GET") == [(b":authority", b"payment")]
