"""streams.Stream keeps the asyncio stream semantics the data path relies on, on real
loopback sockets, on asyncio's loop and on uvloop (the sidecar's)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshproxy import streams
from meshproxy.streams import LIMIT, Stream
from sidecar_kit import run

LOOPS = ["asyncio", "uvloop"]


def on_both_loops(check):
    """A test of `check(stream, reader, peer)`: a Stream connected to a plain asyncio server
    (`reader`, `peer`: the server's side), on asyncio's loop and on uvloop; all closed after."""
    @pytest.mark.parametrize("loop", LOOPS)
    def test(loop):
        async def scenario():
            accepted: asyncio.Future = asyncio.get_running_loop().create_future()
            server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
            stream, same = await streams.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            assert stream is same  # one object is both the reader and the writer
            reader, peer = await accepted
            try:
                await check(stream, reader, peer)
            finally:
                stream.transport.abort()
                peer.transport.abort()
                server.close()

        run(scenario, loop)
    return test


@on_both_loops
async def test_read_returns_what_arrived_at_most_n_bytes_then_the_rest(stream, reader, peer):
    peer.write(b"hello world")
    await peer.drain()
    assert await stream.read(5) == b"hello"
    assert await stream.read(100) == b" world"
    peer.write(b"a")
    peer.write(b"b")  # two pieces may be queued: one read takes both
    await asyncio.sleep(0.05)
    assert await stream.read(100) == b"ab"


@on_both_loops
async def test_eof_reads_empty_and_half_closes_only(stream, reader, peer):
    peer.write(b"last")
    peer.write_eof()
    assert await stream.read(100) == b"last"
    assert await stream.read(100) == b""
    assert stream.at_eof()
    stream.write(b"still talking")  # the peer only stopped sending
    await stream.drain()
    assert await reader.readexactly(13) == b"still talking"
    stream.close()
    await asyncio.wait_for(stream.wait_closed(), 2)


@on_both_loops
async def test_readexactly_raises_at_an_early_end(stream, reader, peer):
    peer.write(b"abc")
    peer.write_eof()
    with pytest.raises(asyncio.IncompleteReadError) as caught:
        await stream.readexactly(5)
    assert caught.value.partial == b"abc"


@on_both_loops
async def test_a_reset_raises_on_the_next_read_and_drain(stream, reader, peer):
    peer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.transport.abort()  # RST
    with pytest.raises(ConnectionError):
        for _ in range(50):  # the reset may take a moment to arrive
            await stream.read(100)
            await asyncio.sleep(0.02)
    with pytest.raises(ConnectionError):
        await stream.drain()


@on_both_loops
async def test_a_full_buffer_pauses_reading_until_it_is_read(stream, reader, peer):
    for _ in range(6):
        peer.write(b"x" * LIMIT)
    await asyncio.sleep(0.1)
    assert stream._paused_reading  # past twice the limit: the transport stopped reading
    received = 0
    while received < 6 * LIMIT:
        received += len(await stream.read(LIMIT))
    assert not stream._paused_reading


@on_both_loops
async def test_drain_waits_while_the_peer_does_not_read(stream, reader, peer):
    stream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    stream.transport.set_write_buffer_limits(high=1024)
    size = 1 << 24  # 16 MiB: more than the socket buffers and the peer's reader hold
    stream.write(b"y" * size)
    drained = asyncio.ensure_future(stream.drain())
    await asyncio.sleep(0.1)
    assert not drained.done()  # the peer's reader stopped reading: its buffer is full
    assert len(await reader.readexactly(size)) == size
    await asyncio.wait_for(drained, 5)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_side_stream_runs_its_callback_with_itself_as_reader_and_writer(loop):
    async def scenario():
        seen = asyncio.get_running_loop().create_future()

        async def on_connected(reader, writer):
            seen.set_result(reader is writer)
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.get_running_loop().create_server(lambda: Stream(on_connected), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"ping")
        assert await reader.read() == b"ping"
        assert await seen
        writer.close()
        server.close()

    run(scenario, loop)
