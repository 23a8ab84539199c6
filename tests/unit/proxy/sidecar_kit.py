"""Shared scaffolding of the sidecar's unit tests: mesh configs, Exchanges for the policies,
a real sidecar on loopback, loopback servers and clients that read and write HTTP/1.x byte
by byte, an h2c client, TLS for a backend, and mitmproxy test flows as the handover
delivers them.

Versions live on 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux); every
server of one test shares a port, since a request keeps the port the app called.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import io
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.config_watcher import InlineConfig
from meshproxy.exchange import INBOUND, OUTBOUND, Exchange
from meshproxy.fastpath import handover
from meshproxy.fastpath.handover import HANDOVER_INBOUND_PORT, HANDOVER_OUTBOUND_PORT
from meshproxy.sidecar import Sidecar

WEB = Identity("shop", "web-v1", "web", "v1")
PAYMENT = Identity("shop", "payment-v1", "payment", "v1")
V1_HOST, V2_HOST, NOBODY_HOST = "127.0.0.1", "127.0.0.2", "127.0.0.3"
ORIGINAL_IP = "10.0.0.9"  # where the app connected to: the fast path never dials it for a mesh service
BLOCK = bytes(range(256)) * 4096  # 1 MiB, sent again and again for large transfers


def run(scenario: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    """Run `scenario()` in a fresh event loop: asyncio's, or uvloop (the sidecar's in production)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


def on_loop(test):
    """Run an `async def` test in a fresh event loop (parametrize and fixtures still work)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return run(lambda: test(*args, **kwargs))
    return wrapper


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def until(condition, timeout: float = 2.0) -> bool:
    """Wait for `condition()` (polling), at most `timeout` seconds; whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.002)
    return True


# -- configs ------------------------------------------------------------------------------

def mesh_state(services: dict | None = None, faults=(), identity: Identity = WEB, version: str = "abc") -> MeshState:
    """A MeshState with sidecar.json's `services` (bodies as in the file) applied."""
    state = MeshState(identity)
    state.apply(parse(services or {}, faults, version))
    return state


def parse(services: dict, faults=(), version: str = "abc") -> config.SidecarConfig:
    return config.parse(json.dumps({"schema": 2, "version": version, "services": services, "faults": list(faults)}))


def payment(routes=None, versions=(("v1", V1_HOST),), **service) -> dict:
    """The body of service `payment`; `routes` a list of routes, or one route's dict."""
    body = {"versions": [{"name": n, "host": h} for n, h in versions], **service}
    if routes is not None:
        body["routes"] = routes if isinstance(routes, list) else [{"name": "main", **routes}]
    return body


def payment_state(routes=None, versions=(("v1", V1_HOST),), faults=(), identity: Identity = WEB,
                  **service) -> MeshState:
    return mesh_state({"payment": payment(routes, versions, **service)}, faults, identity)


def runtime_fault(http_fault=None, tcp_fault=None, source=None, until=None, fault_id="f-1a2b") -> dict:
    """A `meshcli fault` entry of sidecar.json."""
    return {"id": fault_id, "service": "payment", "source": source, "http": http_fault, "tcp": tcp_fault,
            "until": until}


# -- Exchanges for the policies -------------------------------------------------------------

def outbound(router, method: str = "GET", authority: str = "payment:8080", path: str = "/pay",
             headers: dict | None = None) -> tuple[Exchange, dict]:
    """An outbound Exchange as the fast path makes it at the request headers, routed by
    `router`; also the headers routing added."""
    exchange = Exchange(OUTBOUND, method, authority, path)
    added: dict = {}
    router.outbound(exchange, headers or {}, added.__setitem__)
    return exchange, added


def inbound(router, source: str | None = "web-v1", authority: str = "payment:8080") -> Exchange:
    exchange = Exchange(INBOUND, "GET", authority, "/pay")
    router.inbound(exchange, source)
    return exchange


# -- a real sidecar on loopback --------------------------------------------------------------

def logged_sidecar(state: MeshState) -> tuple[Sidecar, io.StringIO]:
    """A Sidecar on `state` (no config file to read or watch), its access log kept in memory."""
    sidecar = Sidecar(state, watcher=InlineConfig())
    log = io.StringIO()
    sidecar.access_log.stream = log
    return sidecar, log


def log_lines(log: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


class FakeMitmproxy:
    """Stands in for handover.Mitmproxy: records the handovers and connects them to `target`
    (a test server) instead of a real mitmproxy."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None
        self.handovers: list[tuple[str, tuple[str, int]]] = []
        self.handed_over = 0

    async def connect(self, direction: str, destination: tuple[str, int]):
        self.handovers.append((direction, destination))
        self.handed_over += 1
        return await asyncio.open_connection(*self.target)

    def stop(self) -> None:
        pass


def use_private_handover_ports(monkeypatch, tmp_path) -> None:
    """A real mitmproxy on ports of this test's own, with its CA in tmp_path: tests run in parallel."""
    monkeypatch.setattr(handover, "HANDOVER_OUTBOUND_PORT", free_port())
    monkeypatch.setattr(handover, "HANDOVER_INBOUND_PORT", free_port())
    monkeypatch.setenv("MESH_MITMPROXY_DIR", str(tmp_path / "mitmproxy"))


class RunningSidecar:
    """A real meshproxy.sidecar.Sidecar (its policies, pools, HttpProxy, H2Proxy and Listener
    as it wires them) started on loopback ports, its config `state` given inline (an empty
    mesh by default). There is no iptables here: the original destination of every accepted
    connection is `destination` (set by the test, or with to()). What the listener hands
    over goes to a FakeMitmproxy, or with `real_mitmproxy` to the sidecar's own in-process
    mitmproxy (see use_private_handover_ports); either is `mitmproxy`."""

    def __init__(self, state: MeshState | None = None, host: str = "127.0.0.1", outbound_port: int = 0,
                 inbound_port: int = 0, destination: tuple[str, int] | None = None,
                 real_mitmproxy: bool = False) -> None:
        self.sidecar, self.log = logged_sidecar(state if state is not None else mesh_state())
        self.mitmproxy = self.sidecar.mitmproxy if real_mitmproxy else FakeMitmproxy()
        self.sidecar.listener.mitmproxy = self.mitmproxy
        self.sidecar.listener.destination_of = lambda sock: self.destination
        self.destination = destination or (ORIGINAL_IP, 8080)
        self.host, self.outbound_port, self.inbound_port = host, outbound_port, inbound_port

    def __getattr__(self, name):  # the sidecar's parts: router, resilience, telemetry, pool, ...
        return getattr(self.sidecar, name)

    async def __aenter__(self) -> RunningSidecar:
        await self.sidecar.start(host=self.host, outbound_port=self.outbound_port, inbound_port=self.inbound_port)
        await self.sidecar.tcp_faults.addresses.refresh()  # TCP faults known before the first connection
        self.outbound_port, self.inbound_port = (s.sockets[0].getsockname()[1] for s in self.sidecar.listener.servers)
        return self

    async def __aexit__(self, *exc) -> None:
        self.sidecar.stop()
        running = self.sidecar.mitmproxy._running
        if running is not None:
            await asyncio.wait((running,), timeout=5)
        await asyncio.sleep(0)

    def to(self, port: int, ip: str = ORIGINAL_IP) -> RunningSidecar:
        """The app connects to ip:port (redirected to this listener)."""
        self.destination = (ip, port)
        return self

    async def connect(self, inbound: bool = False, **kwargs) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the outbound (or inbound) listener; `kwargs` for open_connection (ssl=...)."""
        return await asyncio.open_connection(self.host, self.inbound_port if inbound else self.outbound_port,
                                             **kwargs)

    async def call(self, port: int, method: str = "GET", path: str = "/pay", host: str | None = None,
                   headers: tuple = (), body: bytes = b"", direction: str = OUTBOUND, ip: str = ORIGINAL_IP
                   ) -> Message:
        """One request on a new connection, as the app (or a calling sidecar) sends it to ip:port."""
        self.to(port, ip)
        listen = self.outbound_port if direction == OUTBOUND else self.inbound_port
        return await http_call(self.host, listen, method, path, host or f"payment:{port}", headers, body)

    def stats(self) -> dict:
        return self.sidecar.telemetry.stats()

    def log_lines(self) -> list[dict]:
        return log_lines(self.log)

    def upstream_connections(self) -> dict[str, int]:
        return {row["destination"]: row["opened"] for row in self.stats()["upstream_connections"]}


# -- loopback servers ------------------------------------------------------------------------

class LoopbackServer:
    """The start and stop of the tests' servers (this RawServer, http_backends.Backend,
    h2_backends.H2Backend): `_serve(reader, writer)` runs per accepted connection, which is
    counted and closed after; on exit the tasks in `_tasks` are cancelled and the
    connections still open are closed."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):  # kept-alive connections: their handlers end on EOF
            writer.close()
        await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer(LoopbackServer):
    """`handler(reader, writer)` for each accepted connection, for answers http_backends.Backend
    cannot script (trickling, chunked, close-delimited, 101, broken, server-first protocols,
    TLS); counts connections and their ends (`closed`: how many handlers returned)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, ssl_context)
        self.handler = handler
        self.closed = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away
        except asyncio.CancelledError:  # the server stops: end quietly (a cancelled handler task is logged)
            pass
        finally:
            self.closed += 1
            self._tasks.discard(task)


class EchoServer(RawServer):
    """Sends back whatever it receives; `received` is everything it got."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(self._echo, host, port)
        self.received = b""

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.received += data
            writer.write(data)
            await writer.drain()


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


def partial_answer(body: bytes = b"only this", stall: float = 0.0) -> Handler:
    """A handler answering one request with 100 bytes announced but only `body` sent, then
    closing - or, with `stall`, saying nothing more for that long."""
    return answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + body, linger=stall)


# -- HTTP/1.x, byte by byte ------------------------------------------------------------

@dataclass
class Message:
    """A request or a response as read off the wire."""

    start: str  # the request line or the status line ("" if nothing came)
    headers: list[tuple[str, str]]  # names lower case, in order
    body: bytes = b""
    framing: str = "none"  # "length", "chunked", "close" or "none"
    size: int = 0  # body bytes (also when they were counted, not kept)
    arrivals: list[float] = field(default_factory=list)  # loop.time() of each body piece (chunked only)
    complete: bool = False  # read to its end (not cut short by the peer's close)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1]) if self.start else 0

    @property
    def version(self) -> str:
        return self.start.split(" ", 1)[0].removeprefix("HTTP/")

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
    1xx, 204, 304); counted, not kept, unless `keep`. Cut short, it raises
    IncompleteReadError, `message` holding what came."""
    loop = asyncio.get_running_loop()
    pieces = []

    def take(data: bytes) -> None:
        message.size += len(data)
        if keep:
            pieces.append(data)

    length = message.header("content-length")
    try:
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
        message.complete = True
    finally:
        message.body = b"".join(pieces)
    return message


async def read_request(reader: asyncio.StreamReader, keep: bool = True) -> Message:
    start, headers = await read_head(reader)
    return await read_body(reader, Message(start, headers), keep)


async def read_response(reader: asyncio.StreamReader, method: str = "GET", keep: bool = True,
                        timeout: float | None = None, partial: bool = False) -> Message:
    """The next final response (1xx ones are skipped), within `timeout` seconds. One cut
    short raises IncompleteReadError, or with `partial` comes back as far as it came
    (`complete` False; status 0 if no head came). A reset raises ConnectionResetError."""
    message = Message("", [])
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = Message(*await read_head(reader))
                if not 100 <= message.status < 200 or message.status == 101:
                    break
            bodyless = method == "HEAD" or message.status in (101, 204, 304)
            return await read_body(reader, message, keep, bodyless)
    except asyncio.IncompleteReadError:
        if not partial:
            raise
        return message


def request(method: str = "GET", target: str = "/", host: str | None = "backend", headers: tuple = (),
            body: bytes = b"", version: str = "1.1") -> bytes:
    """A request's bytes: no Host header if `host` is None; Content-Length for a `body`
    unless `headers` frame it."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
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


async def exchange(port: int, data: bytes, method: str = "GET", ip: str = "127.0.0.1", **reading) -> Message:
    """One request (`data`) on a connection of its own; `reading` for read_response."""
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        writer.write(data)
        return await read_response(reader, method, **reading)
    finally:
        writer.close()


async def http_call(ip: str, port: int, method: str = "GET", path: str = "/pay", host: str | None = "payment",
                    headers: tuple = (), body: bytes = b"", timeout: float = 5.0) -> Message:
    """One request as an app sends it, and what came back of the answer (`complete` says whether all)."""
    return await exchange(port, request(method, path, host, headers, body), method, ip, timeout=timeout,
                          partial=True)


async def at_eof(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """Whether the peer closes the connection (sending nothing more) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- raw TCP ---------------------------------------------------------------------------------

async def tcp_exchange(ip: str, port: int, send: bytes, expect_bytes: int, timeout: float = 2.0
                       ) -> tuple[bytes, float, BaseException | None, list[float]]:
    """Send `send`, read until `expect_bytes` came back, EOF, an error or `timeout`:
    (received, seconds, error, when each piece arrived)."""
    reader, writer = await asyncio.open_connection(ip, port)
    received, error, arrivals = b"", None, []
    started = time.monotonic()
    writer.write(send)
    try:
        while len(received) < expect_bytes:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            received += chunk
            arrivals.append(time.monotonic() - started)
    except (OSError, asyncio.TimeoutError) as exc:
        error = exc
    took = time.monotonic() - started
    writer.close()
    return received, took, error, arrivals


# -- mitmproxy flows as the handover delivers them -------------------------------------------

def handover_mode(direction: str = OUTBOUND):
    """The proxy mode of a flow handed over to mitmproxy in `direction` (addons/flows.direction_of)."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    port = HANDOVER_INBOUND_PORT if direction == INBOUND else HANDOVER_OUTBOUND_PORT
    return ProxyMode.parse(f"regular@127.0.0.1:{port}")


def flow_to(port: int = 8080, host_header: str | None = "payment:{port}", direction: str = OUTBOUND,
            headers: tuple = (), content: bytes = b"", **request):
    """An HTTP flow as mitmproxy reads it inside a handover tunnel: request.host is the
    original destination IP."""
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    fields = ((b"Host", host_header.format(port=port).encode()),) if host_header else ()
    req = tutils.treq(host=ORIGINAL_IP, port=port, content=content, headers=http.Headers(fields + headers),
                      **request)
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = handover_mode(direction)
    return flow


def h2_flow_to(port: int, method: bytes = b"POST", path: bytes = b"/grpc.Pay/Charge", content: bytes = b"",
               headers: tuple = ((b"content-type", b"application/grpc"), (b"te", b"trailers"))):
    """An HTTP/2 request as mitmproxy reads it from an app speaking h2c."""
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    req = tutils.treq(host=ORIGINAL_IP, port=port, method=method, path=path, authority=b"payment:%d" % port,
                      http_version=b"HTTP/2.0", content=content, headers=http.Headers(headers))
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = handover_mode(OUTBOUND)
    return flow


class Adapters:
    """The mitmproxy adapters of a real Sidecar (addons(sidecar)), by class name; call()
    runs a flow through the request hooks as mitmproxy would (inside taddons.context())."""

    def __init__(self, state: MeshState) -> None:
        from meshproxy.addons import addons

        self.sidecar, self.log = logged_sidecar(state)
        self.all = addons(self.sidecar)
        by_name = {type(a).__name__: a for a in self.all}
        self.routing, self.faults = by_name["Routing"], by_name["Faults"]
        self.mirroring, self.resilience = by_name["Mirroring"], by_name["Resilience"]
        self.telemetry = by_name["Telemetry"]

    async def call(self, flow, record: bool = True):
        self.routing.requestheaders(flow)
        await self.faults.request(flow)
        self.mirroring.request(flow)
        await self.resilience.request(flow)
        if record:
            if flow.response is not None and flow.error is None:
                self.routing.response(flow)
                self.telemetry.response(flow)
            else:
                self.routing.error(flow)
                self.telemetry.error(flow)
        return flow

    def log_lines(self) -> list[dict]:
        return log_lines(self.log)


def exchange_of(flow) -> Exchange:
    from meshproxy.addons.flows import exchange_of as of

    return of(flow)


# -- an app speaking h2c (HTTP/2 with prior knowledge) ------------------------------------------

@dataclass
class H2Answer:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None  # the error code of an RST_STREAM, if the stream was reset

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class H2Client:
    """One h2c connection of an app; request() runs one stream of it (many may overlap)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self._streams: dict[int, tuple[H2Answer, asyncio.Future]] = {}
        self._flush()
        self._task = asyncio.ensure_future(self._read())

    def _flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def _end(self, stream_id: int) -> None:
        answer, done = self._streams.pop(stream_id, (None, None))
        if done is not None and not done.done():
            done.set_result(answer)

    async def _read(self) -> None:
        import h2.events

        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    entry = self._streams.get(getattr(event, "stream_id", None) or 0)
                    if isinstance(event, h2.events.ResponseReceived) and entry:
                        entry[0].status = int(dict(event.headers)[":status"])
                        entry[0].headers = [(n, v) for n, v in event.headers if not n.startswith(":")]
                    elif isinstance(event, h2.events.DataReceived):
                        if entry:
                            entry[0].body += event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived) and entry:
                        entry[0].trailers = list(event.headers)
                    elif isinstance(event, h2.events.StreamReset) and entry:
                        entry[0].reset = event.error_code
                        self._end(event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._end(event.stream_id)
                self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            for stream_id in list(self._streams):
                self._end(stream_id)

    async def request(self, authority: str, method: str = "POST", path: str = "/grpc.Pay/Charge",
                      headers: tuple = (("content-type", "application/grpc"), ("te", "trailers")),
                      body: bytes = b"", timeout: float = 5.0) -> H2Answer:
        stream_id = self.conn.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        self._streams[stream_id] = (H2Answer(), done)
        self.conn.send_headers(stream_id, [(":method", method), (":scheme", "http"), (":path", path),
                                           (":authority", authority), *headers], end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        self._flush()
        return await asyncio.wait_for(done, timeout)

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


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
