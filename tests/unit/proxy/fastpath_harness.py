"""A whole sidecar's fast path on loopback, and the small raw servers and clients its tests need.

`RunningSidecar` starts `meshproxy.sidecar.Sidecar` on ephemeral ports of 127.0.0.1 with a
mesh config given inline; since there is no iptables on loopback, every accepted connection
"was meant for" `RunningSidecar.destination` (the test sets it). `RawServer` runs one
coroutine per accepted connection, for answers http_backends.Backend cannot give
(trickling, chunked, close-delimited, upgrades, server-first protocols, TLS). The HTTP
helpers read and write messages byte-exactly, so a test sees the framing the proxy chose.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import io
import json
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.fastpath import handover
from meshproxy.sidecar import Sidecar

WEB = Identity("shop", "web-v1", "web", "v1")
BLOCK = bytes(range(256)) * 4096  # 1 MiB, sent again and again for large transfers


def run(scenario: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mesh_state(services: dict | None = None, faults: list | None = None) -> MeshState:
    state = MeshState(WEB)
    state.apply(config.parse(json.dumps({"schema": 2, "version": "t1", "services": services or {},
                                         "faults": faults or []})))
    return state


def payment(port_host: str = "127.0.0.1", **service) -> dict:
    """A mesh service `payment` with one version at `port_host`, plus `service` fields."""
    return {"payment": {"versions": [{"name": "v1", "host": port_host}], **service}}


class _NoWatcher:
    """The config is given inline: nothing to read or watch."""

    def read(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class RunningSidecar:
    def __init__(self, services: dict | None = None, destination: tuple[str, int] = ("127.0.0.1", 9),
                 faults: list | None = None) -> None:
        self.state = mesh_state(services, faults)
        self.destination = destination
        self.sidecar = Sidecar(self.state, watcher=_NoWatcher())
        self.log = io.StringIO()
        self.sidecar.telemetry.access_log = self.log
        self.sidecar.listener.destination_of = lambda sock: self.destination

    async def __aenter__(self) -> RunningSidecar:
        await self.sidecar.start(host="127.0.0.1", outbound_port=0, inbound_port=0)
        await self.sidecar.tcp_faults.addresses.refresh()  # TCP faults known before the first connection
        return self

    async def __aexit__(self, *exc) -> None:
        self.sidecar.stop()
        running = self.sidecar.mitmproxy._running
        if running is not None:
            await asyncio.wait((running,), timeout=5)
        await asyncio.sleep(0)

    @property
    def outbound_port(self) -> int:
        return self.sidecar.listener.servers[0].sockets[0].getsockname()[1]

    @property
    def inbound_port(self) -> int:
        return self.sidecar.listener.servers[1].sockets[0].getsockname()[1]

    async def connect(self, inbound: bool = False, **kwargs) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.inbound_port if inbound else self.outbound_port,
                                             **kwargs)

    def access_log(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def upstream_connections(self) -> dict[str, int]:
        return {row["destination"]: row["opened"] for row in self.sidecar.telemetry.stats()["upstream_connections"]}


def use_private_handover_ports(monkeypatch, tmp_path) -> None:
    """mitmproxy on ports of this test's own, with its CA in tmp_path: tests run in parallel."""
    monkeypatch.setattr(handover, "HANDOVER_OUTBOUND_PORT", free_port())
    monkeypatch.setattr(handover, "HANDOVER_INBOUND_PORT", free_port())
    monkeypatch.setenv("MESH_MITMPROXY_DIR", str(tmp_path / "mitmproxy"))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """`handler(reader, writer)` for each accepted connection; counts connections and their
    ends (`closed`: how many handlers returned)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler, self.host, self.port, self.ssl_context = handler, host, port, ssl_context
        self.connections = 0
        self.closed = 0
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # the server stops: end quietly (a cancelled handler task is logged)
            pass
        finally:
            self.closed += 1
            self._tasks.discard(task)
            writer.close()


# -- HTTP/1.x, byte by byte ------------------------------------------------------------

@dataclass
class Message:
    """A request or a response as read off the wire."""

    start: str  # the request line or the status line
    headers: list[tuple[str, str]]  # names lower case, in order
    body: bytes = b""
    framing: str = "none"  # "length", "chunked", "close" or "none"
    size: int = 0  # body bytes (also when they were counted, not kept)
    arrivals: list[float] = field(default_factory=list)  # loop.time() of each body piece (chunked only)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1])

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.start.split(" ", 2)[1]


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


async def _read_exactly(reader: asyncio.StreamReader, size: int, take: Callable[[bytes], None]) -> None:
    while size:
        data = await reader.read(min(size, 1 << 16))
        if not data:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(data)
        take(data)


async def read_body(reader: asyncio.StreamReader, message: Message, keep: bool = True,
                    bodyless: bool = False) -> Message:
    """The body as `message`'s headers frame it (for a response, pass bodyless for HEAD,
    1xx, 204, 304); counted, not kept, unless `keep`."""
    loop = asyncio.get_running_loop()
    pieces = []

    def take(data: bytes) -> None:
        message.size += len(data)
        if keep:
            pieces.append(data)

    length = message.header("content-length")
    if bodyless:
        pass
    elif "chunked" in (message.header("transfer-encoding") or ""):
        message.framing = "chunked"
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await _read_exactly(reader, size, take)
            message.arrivals.append(loop.time())
            assert await reader.readexactly(2) == b"\r\n"
    elif length is not None:
        message.framing = "length"
        await _read_exactly(reader, int(length), take)
    elif message.start.startswith("HTTP/"):  # a response without framing: to the end of the connection
        message.framing = "close"
        while data := await reader.read(1 << 16):
            take(data)
    message.body = b"".join(pieces)
    return message


async def read_request(reader: asyncio.StreamReader, keep: bool = True) -> Message:
    start, headers = await read_head(reader)
    return await read_body(reader, Message(start, headers), keep)


async def read_response(reader: asyncio.StreamReader, method: str = "GET", keep: bool = True) -> Message:
    """The next final response (1xx ones are skipped)."""
    while True:
        start, headers = await read_head(reader)
        message = Message(start, headers)
        if not 100 <= message.status < 200 or message.status == 101:
            break
    bodyless = method == "HEAD" or message.status in (101, 204, 304)
    return await read_body(reader, message, keep, bodyless)


def request(method: str = "GET", target: str = "/", host: str = "backend", headers: tuple = (),
            body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(status: int = 200, body: bytes = b"ok", headers: tuple = (), framing: str = "length") -> bytes:
    lines = [f"HTTP/1.1 {status} X", *(f"{n}: {v}" for n, v in headers)]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(port: int, data: bytes, method: str = "GET") -> Message:
    """One request on a connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await read_response(reader, method)
    finally:
        writer.close()


async def at_eof(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """Whether the peer closes the connection (sending nothing more) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def keep_alive_server(reply: Callable[[Message], bytes | Awaitable[bytes]], log: list | None = None,
                      keep: bool = True) -> Handler:
    """A handler answering every request of a connection with `reply(request)` (a
    coroutine function may take its time); request bodies are kept if `keep`."""
    async def serve(reader, writer):
        while True:
            try:
                message = await read_request(reader, keep)
            except asyncio.IncompleteReadError:
                return
            if log is not None:
                log.append(message)
            answer = reply(message)
            writer.write(await answer if inspect.isawaitable(answer) else answer)
            await writer.drain()
    return serve


def answer_once(raw: bytes, linger: float | None = None) -> Handler:
    """A handler that reads one request and writes `raw`; then it closes after `linger`
    seconds, or (None) once the peer closed."""
    async def serve(reader, writer):
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        if linger is None:
            await reader.read()
        else:
            await asyncio.sleep(linger)
    return serve


# -- TLS ---------------------------------------------------------------------------------

def self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only that server's throwaway certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("backend.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "backend.crt", tmp_path / "backend.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
