"""upstream.Pool as the fast path uses it: answers at their headers with the body streamed
after, connections pooled across the app's connections and replaced when the server
drops them, a broken reused connection retried only when that cannot do harm, and
max requests per connection - directly and through a whole sidecar."""

import asyncio

import pytest

from meshproxy import upstream
from sidecar_kit import (RawServer, RunningSidecar, answer_once, exchange, keep_alive_server, payment_state,
                         read_request, read_response, request, response, run)

HOST = [(b"host", b"backend")]


def test_open_returns_at_the_headers_and_chunks_follow_as_they_arrive():
    release = asyncio.Event()

    async def backend(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\n\r\n5\r\nfirst\r\n")
        await release.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await reader.read()

    async def scenario():
        opened = []
        pool = upstream.Pool(on_connect=lambda host, port: opened.append((host, port)))
        async with RawServer(backend) as server:
            answer = await asyncio.wait_for(pool.open(*server.address, "GET", "/", HOST), 2)
            chunks = answer.chunks()
            first = await asyncio.wait_for(chunks.__anext__(), 2)  # before the backend sent the rest
            release.set()
            rest = [chunk async for chunk in chunks]
            idle = list(pool._idle[(*server.address, False)])
        pool.close()
        assert (answer.status, answer.length, answer.complete) == (200, None, True)
        assert (b"x-a", b"1") in answer.headers and all(n.lower() != b"transfer-encoding" for n, _ in answer.headers)
        assert (first, b"".join(rest)) == (b"first", b"last")
        assert len(idle) == 1  # back in the pool once the body was read to its end
        assert opened == [server.address]

    run(scenario)


def test_a_close_delimited_body_ends_with_the_connection_which_is_not_pooled():
    async def scenario():
        pool = upstream.Pool()
        async with RawServer(answer_once(b"HTTP/1.1 200 OK\r\n\r\nto the end", linger=0)) as server:
            answer = await pool.open(*server.address, "GET", "/", HOST)
            body = await answer.read()
            idle = list(pool._idle[(*server.address, False)])
        pool.close()
        assert (answer.length, answer.keep_alive, body, idle) == (None, False, b"to the end", [])

    run(scenario)


def test_a_discarded_answer_closes_its_connection():
    async def scenario():
        pool = upstream.Pool()
        # the server holds the connection until the proxy closes it
        async with RawServer(answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")) as server:
            answer = await pool.open(*server.address, "GET", "/", HOST)
            answer.discard()
            await asyncio.sleep(0.2)
            closed, idle = server.closed, list(pool._idle[(*server.address, False)])
        pool.close()
        assert (answer.length, closed, idle) == (100, 1, [])

    run(scenario)


# -- through a sidecar --------------------------------------------------------------------

def test_an_idle_connection_the_server_closed_is_replaced():
    backend = answer_once(response(body=b"answer"), linger=0.05)  # then the server's own idle timeout closes it

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            first = await exchange(mesh.outbound_port, request())
            await asyncio.sleep(0.2)
            second = await exchange(mesh.outbound_port, request())
            connections = mesh.upstream_connections()
        assert (first.status, second.status, second.body) == (200, 200, b"answer")
        assert server.connections == 2
        assert connections == {f"127.0.0.1:{server.port}": 2}

    run(scenario)


@pytest.mark.parametrize("method, size, status, seen", [
    ("GET", 0, 200, 2),  # idempotent, whole: once more on a new connection
    ("PUT", 100, 200, 2),
    ("POST", 100, 503, 1),  # not idempotent: never sent twice
    ("PUT", 2 << 20, 503, 1),  # streamed: cannot be sent again
])
def test_a_reused_connection_that_breaks_before_answering_is_retried_only_when_harmless(method, size, status, seen):
    log = []

    async def backend(reader, writer):
        served = 0
        while True:
            try:
                message = await read_request(reader, keep=False)
            except asyncio.IncompleteReadError:
                return
            log.append(message.method)
            if served == 1:  # the server gives up this connection just as it is reused
                writer.transport.abort()
                return
            served += 1
            writer.write(response(body=b"fine"))

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            await exchange(mesh.outbound_port, request())
            del log[:]
            answer = await exchange(mesh.outbound_port, request(method, body=b"x" * size))
        assert answer.status == status
        assert log == [method] * seen

    run(scenario)


def test_max_requests_per_connection_is_honoured():
    served = []

    async def backend(reader, writer):
        served.append(0)
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            served[-1] += 1
            writer.write(response())

    async def scenario():
        async with RawServer(backend) as server, \
                RunningSidecar(payment_state(circuitBreaker={"maxRequestsPerConnection": 2}),
                               destination=("127.0.0.1", server.port)) as mesh:
            reader, writer = await mesh.connect()
            for _ in range(5):
                writer.write(request(host=f"payment:{server.port}"))
                assert (await read_response(reader)).status == 200
            writer.close()
            await asyncio.sleep(0.1)
            closed = server.closed
        assert served == [2, 2, 1]
        assert closed == 2  # the proxy closed each connection that had served its two

    run(scenario)


@pytest.fixture
def short_idle_timeout(monkeypatch):
    monkeypatch.setattr(upstream, "IDLE_TIMEOUT", 0.2)


def always_ok() -> RawServer:
    return RawServer(keep_alive_server(lambda message: response()))


def test_an_expired_idle_connection_is_not_reused(short_idle_timeout):
    async def scenario():
        async with always_ok() as server, RunningSidecar(destination=server.address) as mesh:
            await exchange(mesh.outbound_port, request())
            await exchange(mesh.outbound_port, request())
            await asyncio.sleep(0.3)
            await exchange(mesh.outbound_port, request())
        assert server.connections == 2

    run(scenario)


def test_an_idle_connection_is_closed_after_the_idle_timeout(short_idle_timeout):
    async def scenario():
        async with always_ok() as server, RunningSidecar(destination=server.address) as mesh:
            await exchange(mesh.outbound_port, request())
            await asyncio.sleep(1.0)
            closed = server.closed
        assert closed == 1

    run(scenario)
