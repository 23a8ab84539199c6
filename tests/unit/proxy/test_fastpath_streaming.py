"""fastpath.http1 streams: answers piece by piece as they arrive, large bodies both ways
through flat memory, back-pressure from a slow reader up to the upstream, and answers an
upstream gives while (or instead of) reading a streamed request body.

Memory is Python's own (tracemalloc): the proxy, the backend and the client share this
process, and the backend and client only reuse one 1 MiB block or drop what they read,
so the peak is what the proxy holds.
"""

import asyncio
import socket
import tracemalloc

import pytest

from sidecar_kit import BLOCK, RawServer, RunningSidecar, read_head, read_request, read_response, request, run

MiB = 1 << 20
LARGE = 200 * MiB
MEMORY_BOUND = 30 * MiB
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


class traced:
    """tracemalloc's peak over a block, in bytes."""

    def __enter__(self):
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc):
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


async def send_generated(writer, size: int, chunked: bool = False) -> None:
    left = size
    while left:
        piece = BLOCK if left >= len(BLOCK) else BLOCK[:left]
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        left -= len(piece)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")


@LOOPS
def test_the_first_piece_of_a_trickling_answer_arrives_long_before_the_last(loop):
    async def backend(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(10):
            writer.write(b"5\r\npiece\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            sent = asyncio.get_running_loop().time()
            writer.write(request())
            answer = await read_response(reader)
            writer.close()
        assert answer.body == b"piece" * 10 and answer.framing == "chunked"
        first, last = answer.arrivals[0] - sent, answer.arrivals[-1] - sent
        assert last >= 0.15  # the backend took 10 x 20 ms
        assert first < last - 0.1  # the first piece was not held back for the rest

    run(scenario, loop)


@pytest.mark.parametrize("chunked, loop", [(False, "asyncio"), (True, "asyncio"), (False, "uvloop")],
                         ids=["content-length", "chunked", "content-length-uvloop"])
def test_a_large_download_passes_through_flat_memory(chunked, loop):
    async def backend(reader, writer):
        await read_request(reader)
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % LARGE
        writer.write(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % framing)
        await send_generated(writer, LARGE, chunked)
        await reader.read()

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(request(target="/download"))
            with traced() as memory:
                answer = await read_response(reader, keep=False)
            writer.close()
        assert (answer.status, answer.size) == (200, LARGE)
        assert answer.framing == ("chunked" if chunked else "length")
        assert memory.peak < MEMORY_BOUND, f"{memory.peak / MiB:.1f} MiB held for a {LARGE // MiB} MiB body"

    run(scenario, loop)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_upload_streams_through_flat_memory(chunked):
    async def backend(reader, writer):
        message = await read_request(reader, keep=False)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(message.size)), message.size))
        await reader.read()

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % LARGE
            with traced() as memory:
                writer.write(b"POST /upload HTTP/1.1\r\nHost: backend\r\n%s\r\n\r\n" % framing)
                await send_generated(writer, LARGE, chunked)
                answer = await read_response(reader)
            writer.close()
        assert (answer.status, answer.body) == (200, str(LARGE).encode())
        assert memory.peak < MEMORY_BOUND, f"{memory.peak / MiB:.1f} MiB held for a {LARGE // MiB} MiB body"

    run(scenario)


def test_a_streamed_chunked_upload_counts_its_bytes():
    async def backend(reader, writer):
        message = await read_request(reader, keep=False)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(message.size)), message.size))

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"POST /upload HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n")
            await send_generated(writer, 3 * 1000 + 7, chunked=True)
            answer = await read_response(reader)
            writer.close()
            [line] = mesh.log_lines()
        assert (answer.status, answer.body) == (200, b"3007")
        assert line["request_bytes"] == 3007  # what went up, not 0 for want of a Content-Length

    run(scenario)


def test_a_slow_reader_holds_the_upstream_back_instead_of_filling_the_proxy():
    sent = [0]

    async def backend(reader, writer):
        await read_request(reader)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE)
        for _ in range(LARGE // len(BLOCK)):
            writer.write(BLOCK)
            await writer.drain()
            sent[0] += len(BLOCK)
        await reader.read()

    async def scenario():
        async with RawServer(backend) as server, RunningSidecar(destination=server.address) as mesh:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: a small window
            sock.connect(("127.0.0.1", mesh.outbound_port))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, limit=64 << 10)
            writer.write(request(target="/download"))
            await read_head(reader)
            with traced() as memory:
                read = len(await reader.readexactly(MiB))
                await asyncio.sleep(0.5)  # the caller reads nothing for a while: 200 MiB would pass meanwhile
                stalled_at = sent[0]
                await asyncio.sleep(0.2)
                still = sent[0]
                while piece := await reader.read(MiB):  # then it reads again: all of it arrives
                    read += len(piece)
                    if read == LARGE:
                        break
            writer.close()
        # what the backend got rid of while the caller read nothing: socket buffers, a little in the proxy
        assert stalled_at - MiB < 40 * MiB
        assert still - stalled_at < 8 * MiB  # it was really held back (kernel buffers may still grow a little)
        assert read == LARGE
        assert memory.peak < MEMORY_BOUND

    run(scenario)


async def upload(writer, size: int) -> None:
    """A streamed upload that stops quietly when the proxy stops taking it."""
    writer.write(b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: %d\r\n\r\n" % size)
    try:
        await send_generated(writer, size)
    except ConnectionError:
        pass


def test_an_answer_the_upstream_gives_before_reading_the_body_reaches_the_caller():
    async def refuses_early(reader, writer):
        await read_head(reader)  # the body is not read at all
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
        await writer.drain()
        await asyncio.sleep(0.3)

    async def scenario():
        async with RawServer(refuses_early) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            sending = asyncio.ensure_future(upload(writer, 8 * MiB))
            answer = await asyncio.wait_for(read_response(reader), 3)
            sending.cancel()
            writer.close()
        assert (answer.status, answer.body) == (413, b"too large")

    run(scenario)


def test_an_upstream_that_answers_while_it_reads_the_body_is_not_deadlocked():
    size = 16 * MiB

    async def echoes_as_it_reads(reader, writer):
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        start, headers = await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        left = int(dict(headers)["content-length"])
        while left:
            data = await reader.read(1 << 16)
            left -= len(data)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()  # a well-behaved server: it waits for its answer to be taken
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async def scenario():
        async with RawServer(echoes_as_it_reads) as server, RunningSidecar(destination=server.address) as mesh:
            reader, writer = await mesh.connect()
            sending = asyncio.ensure_future(upload(writer, size))
            try:
                answer = await asyncio.wait_for(read_response(reader, keep=False), 3)
            finally:
                sending.cancel()
                writer.close()
        assert (answer.status, answer.size) == (200, size)

    run(scenario)
