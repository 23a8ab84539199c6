"""Shared scaffolding of the sidecar's unit tests: mesh configs, Exchanges for the policies,
a real sidecar's fast path on loopback, a small HTTP/1.1 client, an echo server, and
mitmproxy test flows as the handover delivers them.

Versions live on 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux); every
server of one test shares a port, since a request keeps the port the app called.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import time
from dataclasses import dataclass, field

import httptools

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.exchange import INBOUND, OUTBOUND, Exchange
from meshproxy.fastpath.handover import HANDOVER_INBOUND_PORT, HANDOVER_OUTBOUND_PORT
from meshproxy.sidecar import Sidecar

WEB = Identity("shop", "web-v1", "web", "v1")
PAYMENT = Identity("shop", "payment-v1", "payment", "v1")
V1_HOST, V2_HOST, NOBODY_HOST = "127.0.0.1", "127.0.0.2", "127.0.0.3"
ORIGINAL_IP = "10.0.0.9"  # where the app connected to: the fast path never dials it for a mesh service


def on_loop(test):
    """Run an `async def` test in a fresh event loop (parametrize and fixtures still work)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return wrapper


# -- configs ------------------------------------------------------------------------------

def mesh_state(services: dict, faults=(), identity: Identity = WEB, version: str = "abc") -> MeshState:
    """A MeshState with sidecar.json's `services` (bodies as in the file) applied."""
    state = MeshState(identity)
    state.apply(parse(services, faults, version))
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


# -- a sidecar's fast path on loopback --------------------------------------------------------

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


class FastPath:
    """A real meshproxy.sidecar.Sidecar (its policies, pool, HttpProxy and Listener as it
    wires them) listening on loopback ports. There is no iptables here: the original
    destination of every connection is `destination` (set by the test)."""

    def __init__(self, state: MeshState, host: str = "127.0.0.1", outbound_port: int = 0, inbound_port: int = 0,
                 destination: tuple[str, int] | None = None) -> None:
        self.sidecar = Sidecar(state)
        self.log = io.StringIO()
        self.sidecar.telemetry.access_log = self.log
        self.mitmproxy = FakeMitmproxy()
        self.sidecar.listener.mitmproxy = self.mitmproxy
        self.sidecar.listener.destination_of = lambda sock: self.destination
        self.destination = destination or (ORIGINAL_IP, 8080)
        self.host, self.outbound_port, self.inbound_port = host, outbound_port, inbound_port

    def __getattr__(self, name):  # the sidecar's parts: router, resilience, telemetry, pool, ...
        return getattr(self.sidecar, name)

    async def __aenter__(self) -> FastPath:
        await self.sidecar.listener.start(self.host, self.outbound_port, self.inbound_port)
        self.outbound_port, self.inbound_port = (s.sockets[0].getsockname()[1] for s in self.sidecar.listener.servers)
        return self

    async def __aexit__(self, *exc) -> None:
        self.sidecar.listener.stop()
        self.sidecar.mirroring.stop()
        self.sidecar.pool.close()
        await asyncio.sleep(0)

    def to(self, port: int, ip: str = ORIGINAL_IP) -> FastPath:
        """The app connects to ip:port (redirected to this listener)."""
        self.destination = (ip, port)
        return self

    async def call(self, port: int, method: str = "GET", path: str = "/pay", host: str | None = None,
                   headers: tuple = (), body: bytes = b"", direction: str = OUTBOUND, ip: str = ORIGINAL_IP
                   ) -> HttpReply:
        """One request on a new connection, as the app (or a calling sidecar) sends it to ip:port."""
        self.to(port, ip)
        listen = self.outbound_port if direction == OUTBOUND else self.inbound_port
        return await http_call(self.host, listen, method, path, host or f"payment:{port}", headers, body)

    def stats(self) -> dict:
        return self.sidecar.telemetry.stats()

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


# -- a small HTTP/1.1 client ---------------------------------------------------------------

@dataclass
class HttpReply:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    version: str = ""
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (when, piece) as the body arrived

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


class _ReplyParser:
    def __init__(self, head_only: bool = False) -> None:
        self.reply = HttpReply()
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.started = time.monotonic()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.reply.headers.append((name.decode(), value.decode()))

    def on_headers_complete(self) -> None:
        self.reply.status = self.parser.get_status_code()
        self.reply.version = self.parser.get_http_version()
        if self.head_only:
            self.reply.complete = True

    def on_body(self, body: bytes) -> None:
        self.reply.body += body
        self.reply.chunks.append((time.monotonic() - self.started, body))

    def on_message_complete(self) -> None:
        self.reply.complete = True


async def read_reply(reader: asyncio.StreamReader, head_only: bool = False, timeout: float = 5.0) -> HttpReply:
    """One response from `reader` (to its end, or to EOF: `complete` says which). A reset
    before any byte raises ConnectionResetError."""
    parsing = _ReplyParser(head_only)
    async with asyncio.timeout(timeout):
        while not parsing.reply.complete:
            data = await reader.read(65536)
            if not data:
                try:
                    parsing.parser.feed_data(b"")
                except httptools.HttpParserError:
                    pass
                break
            parsing.parser.feed_data(data)
    return parsing.reply


def encode_request(method: str, path: str, host: str | None, headers: tuple = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def http_call(ip: str, port: int, method: str = "GET", path: str = "/pay", host: str | None = "payment",
                    headers: tuple = (), body: bytes = b"", timeout: float = 5.0) -> HttpReply:
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        writer.write(encode_request(method, path, host, headers, body))
        return await read_reply(reader, head_only=method == "HEAD", timeout=timeout)
    finally:
        writer.close()


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

        self.sidecar = Sidecar(state)
        self.log = io.StringIO()
        self.sidecar.telemetry.access_log = self.log
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
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def exchange_of(flow) -> Exchange:
    from meshproxy.addons.flows import exchange_of as of

    return of(flow)


class RawServer:
    """A loopback server running `handler(reader, writer)` per connection, for answers
    http_backends.Backend cannot script (streamed, close-delimited, 101, broken...)."""

    def __init__(self, handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler, self.host, self.port = handler, host, port
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> RawServer:
        async def serve(reader, writer):
            self.connections += 1
            self._tasks.add(asyncio.current_task())
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # the test is over, or the client went away
            finally:
                self._tasks.discard(asyncio.current_task())
                writer.close()

        self._server = await asyncio.start_server(serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)


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


def partial_answer(body: bytes = b"only this", stall: float = 0.0):
    """A RawServer handler answering one request with 100 bytes announced but only `body`
    sent, then closing - or, with `stall`, saying nothing more for that long."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + body)
        await writer.drain()
        await asyncio.sleep(stall)
    return serve


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

    @classmethod
    async def open(cls, ip: str, port: int) -> H2Client:
        return cls(*await asyncio.open_connection(ip, port))

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


async def until(condition, timeout: float = 2.0) -> bool:
    """Wait for `condition()` (polling), at most `timeout` seconds; whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.002)
    return True
