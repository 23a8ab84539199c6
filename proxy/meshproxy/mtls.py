"""Mesh mTLS: this sidecar's workload identity, and TLS 1.3 between sidecars.

Design. Sidecars speak mTLS to each other on a port of their own, MTLS_PORT (15008, as
Istio's HBONE port), inside the pod's range that iptables never intercepts. So mesh mTLS
is never confused with TLS an app starts itself on its own ports (that stays with
mitmproxy, see fastpath/handover.py), nothing sniffs ClientHellos, and the event loop's
own TLS does the work. The client side's sidecar dials <destination host>:15008, offers
one ALPN protocol saying what follows (h2, http/1.1, or meshcli-tcp for raw TCP), checks
the server's certificate against the mesh roots and its DNS SAN (the workload it meant to
reach), then sends the two-byte port the app dialled. The server side's sidecar requires a
client certificate from the mesh roots with a SPIFFE ID of this trust domain, and hands
the decrypted connection to the listener like any inbound one, with the caller's identity
(exchange.Peer) and the protocol ALPN named. The HTTP pools (upstream.py, upstream_h2.py)
ask `opener()` once per new connection: mTLS rides on their pooled, kept-alive connections,
so an app that opens a connection per request does not cause a handshake per request.

Modes, per destination service: DISABLE callers' sidecars send plaintext; PERMISSIVE (the
default) callers' sidecars originate mTLS and plaintext is accepted too; STRICT plaintext
is refused, except from the gateway addresses of the pod's networks: that is where Docker's
published ports (docker-proxy) and the host itself come from, and they are outside the mesh.

Identity files (IDENTITY_DIR, meshcli/ca.py writes them atomically) are checked every
RELOAD_SECONDS; a changed certificate or root set builds new contexts, which new
connections use at once (the server switches context in its SNI callback), while
established connections carry on with the one they were authenticated with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import struct
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from meshproxy import streams
from meshproxy.config import (ENV_IDENTITY_DIR, IDENTITY_DIR, IDENTITY_FILE, MTLS_PORT, TRUST_FILE, MeshState,
                              MtlsMode, SecurityPolicy, SidecarConfig, spiffe_id)
from meshproxy.exchange import INBOUND, Peer
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.authz import FLAG, Authorization
from meshproxy.policy.telemetry import Telemetry
from meshproxy.upstream import Streams

logger = logging.getLogger("meshproxy.mtls")

ALPN_HTTP1 = "http/1.1"
ALPN_H2 = "h2"
ALPN_TCP = "meshcli-tcp"
KIND_OF_ALPN = {ALPN_HTTP1: "http1", ALPN_H2: "h2c", ALPN_TCP: "tcp"}  # as listener.serve() names them
RELOAD_SECONDS = 1.0
HANDSHAKE_TIMEOUT = 5.0
PORT_PREAMBLE = struct.Struct("!H")


def principal_of(peercert: dict | None) -> str:
    """The SPIFFE ID (first URI SAN) of a certificate as ssl's getpeercert() gives it."""
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind == "URI":
            return value
    return ""


def _fingerprints(pem: str) -> list[str]:
    """SHA-256 of each certificate's DER in a PEM text (meshcli/ca.py's fingerprint())."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    found, at = [], pem.find(begin)
    while at >= 0:
        stop = pem.index(end, at) + len(end)
        found.append(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[at:stop])).hexdigest())
        at = pem.find(begin, stop)
    return found


def _context(purpose: ssl.Purpose, identity: Path, roots: str, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=roots)
    context.load_cert_chain(identity)
    context.set_alpn_protocols(alpn)
    return context


@dataclass(frozen=True)
class Credentials:
    """What the identity files held when last loaded, as ready-made contexts."""

    server: ssl.SSLContext
    clients: dict[str, ssl.SSLContext]  # by ALPN protocol
    fingerprint: str  # of the leaf
    roots: tuple[str, ...]  # fingerprints
    stamp: tuple  # the files' (mtime, size): what tells a change

    @classmethod
    def load(cls, directory: Path, stamp: tuple) -> Credentials:
        identity, roots = directory / IDENTITY_FILE, (directory / TRUST_FILE).read_text(encoding="ascii")
        server = _context(ssl.Purpose.CLIENT_AUTH, identity, roots, list(KIND_OF_ALPN))
        clients = {alpn: _context(ssl.Purpose.SERVER_AUTH, identity, roots, [alpn]) for alpn in KIND_OF_ALPN}
        return cls(server, clients, _fingerprints(identity.read_text(encoding="ascii"))[0],
                   tuple(_fingerprints(roots)), stamp)


def network_gateways(route_table: str = "/proc/net/route") -> frozenset[str]:
    """The gateway addresses of this network namespace's networks: the default route's, and
    for each connected subnet its first address (where Docker puts a network's gateway)."""
    found = set()
    try:
        lines = Path(route_table).read_text().splitlines()[1:]
    except OSError:
        return frozenset()
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] == "lo":
            continue
        destination, gateway, mask = (int(fields[i], 16) for i in (1, 2, 7))
        if gateway:
            found.add(socket.inet_ntoa(struct.pack("<I", gateway)))
        elif mask:
            network = struct.unpack(">I", struct.pack("<I", destination))[0]
            found.add(socket.inet_ntoa(struct.pack(">I", network + 1)))
    return frozenset(found)


FRAME = struct.Struct("!I")


class FramedReader:
    """Raw TCP inside mesh mTLS is framed (4-byte length, then the bytes): a TLS stream cannot
    half-close, and protocols whose client ends its request with a FIN need it passed on.
    A frame of length 0 is that FIN."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.left = 0  # bytes of the current frame not read yet
        self.ended = False

    async def read(self, size: int = -1) -> bytes:
        try:
            while not self.left:
                if self.ended:
                    return b""
                self.left, = FRAME.unpack(await self.reader.readexactly(FRAME.size))
                self.ended = not self.left
            data = await self.reader.read(min(self.left, size if size > 0 else self.left))
        except asyncio.IncompleteReadError:
            return b""
        self.left -= len(data)
        return data

    def at_eof(self) -> bool:
        return self.ended or self.reader.at_eof()


class FramedWriter:
    """The writing side of FramedReader's framing; the rest is the TLS stream's own."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport

    def write(self, data: bytes) -> None:
        if data:
            self.writer.write(FRAME.pack(len(data)) + data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.writer.write(FRAME.pack(0))

    def __getattr__(self, name: str):  # drain, close, is_closing, get_extra_info, wait_closed
        return getattr(self.writer, name)


def framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[FramedReader, FramedWriter]:
    return FramedReader(reader), FramedWriter(writer)


class MeshTls:
    """The identity, the client side's choice of mTLS, and the server side's admission rules."""

    def __init__(self, state: MeshState, authz: Authorization, telemetry: Telemetry, access_log: AccessLog,
                 directory: Path | None = None) -> None:
        self.state, self.authz, self.telemetry, self.access_log = state, authz, telemetry, access_log
        self.directory = directory or Path(os.environ.get(ENV_IDENTITY_DIR, IDENTITY_DIR))
        self.credentials: Credentials | None = None
        self.error: str | None = None
        self._failed_stamp: tuple | None = None
        self.gateways = network_gateways()
        self._modes: dict[str, tuple[str, str]] = {}  # host -> (service, mode), callers' side
        self._own_mode = MtlsMode.PERMISSIVE.value
        self._plaintext: weakref.WeakSet = weakref.WeakSet()  # writers of admitted plaintext callers
        self._tasks: list[asyncio.Task] = []
        self.on_credentials: list[Callable[[Credentials], None]] = []
        state.subscribe(self._on_config)

    # -- identity files -------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the identity files if they changed; True when new credentials are in use."""
        try:
            stamp = tuple((s.st_mtime_ns, s.st_size) for s in
                          ((self.directory / name).stat() for name in (IDENTITY_FILE, TRUST_FILE)))
        except OSError as exc:
            if self.credentials is None:
                self.error = f"no identity: {exc}"
            return False
        if stamp in (self._failed_stamp, self.credentials.stamp if self.credentials else None):
            return False
        try:
            credentials = Credentials.load(self.directory, stamp)
        except (OSError, ValueError, ssl.SSLError) as exc:  # half-written by hand, or a key of another cert
            self.error = f"cannot load {self.directory}: {exc}"
            self._failed_stamp = stamp  # logged once per change of the files
            logger.error("%s; keeping the previous identity", self.error)
            return False
        first = self.credentials is None
        self.credentials, self.error = credentials, None
        logger.info("%s identity %s (roots %s)", "loaded" if first else "renewed", credentials.fingerprint[:16],
                    ", ".join(fp[:16] for fp in credentials.roots))
        for listener in self.on_credentials:
            listener(credentials)
        return True

    async def start(self) -> None:
        self.reload()
        self._tasks = [asyncio.create_task(self._every(RELOAD_SECONDS, self.reload))]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    @staticmethod
    async def _every(seconds: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                work()
            except Exception:  # never let one bad round end the loop
                logger.exception("reloading the identity failed")

    def _on_config(self, config: SidecarConfig) -> None:
        modes = {}
        for service in config.services.values():
            for host in (service.name, *(v.host for v in service.versions)):
                modes.setdefault(host, (service.name, service.mtls))
        self._modes = modes
        own = config.services.get(self.state.identity.service)
        was = self._own_mode
        self._own_mode = own.mtls if own is not None else MtlsMode.PERMISSIVE.value
        if self._own_mode == MtlsMode.STRICT and was != MtlsMode.STRICT:
            self.revoke_plaintext()

    def revoke_plaintext(self) -> None:
        """STRICT now: the plaintext callers admitted before must not go on either. As Envoy
        drains the connections of a changed listener, each ends after the exchange it is in
        the middle of (HTTP/1), or at once (idle, raw TCP, h2c, an upgraded connection)."""
        revoked = 0
        for writer in list(self._plaintext):
            if writer.is_closing():
                continue
            revoked += 1
            protocol = writer.transport.get_protocol()
            if getattr(protocol, "busy", False):
                protocol.revoked = True
            else:
                writer.close()
        self._plaintext.clear()
        if revoked:
            logger.info("STRICT: closing %d plaintext connection(s) admitted before", revoked)

    # -- the client side ------------------------------------------------------------------
    def secures(self, host: str) -> bool:
        """Whether calls to a version's `host` go over mesh mTLS: it has a sidecar, its mode
        is not DISABLE, and this sidecar has its identity."""
        target = self._modes.get(host)
        return target is not None and target[1] != MtlsMode.DISABLE and self.credentials is not None

    def _workload_at(self, ip: str) -> str | None:
        """The mesh workload (other than this one) at `ip` whose calls get mTLS: raw TCP
        carries an IP only. The map is telemetry's, which names TCP peers from it."""
        host = self.telemetry.addresses.service_at(ip)
        if host is None or host == self.state.identity.workload:
            return None
        target = self._modes.get(host)
        return host if target is not None and target[1] != MtlsMode.DISABLE else None

    def secures_tcp(self, ip: str) -> bool:
        """Whether a raw TCP connection to `ip` goes over mesh mTLS (a mesh workload's IP)."""
        return self.credentials is not None and self._workload_at(ip) is not None

    def opener(self, alpn: str) -> Callable[[str, int], Awaitable[Streams] | None]:
        """For an upstream pool: (host, port) -> an mTLS connection's coroutine, or None
        (plaintext) when the destination has no sidecar or its mode is DISABLE."""
        def open_for(host: str, port: int) -> Awaitable[Streams] | None:
            return self._connect(host, port, alpn) if self.secures(host) else None
        return open_for

    def open_tcp(self, destination: tuple[str, int]) -> Awaitable[Streams] | None:
        """For a raw TCP connection to an IP: mTLS when that IP is a mesh workload's (framed)."""
        if not self.secures_tcp(destination[0]):
            return None
        return self._connect(self._workload_at(destination[0]), destination[1], ALPN_TCP, framed)

    async def _connect(self, host: str, port: int, alpn: str, wrap=None) -> Streams:
        credentials = self.credentials
        reader, writer = await streams.open_connection(host, MTLS_PORT, ssl=credentials.clients[alpn],
                                                       server_hostname=host, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        writer.write(PORT_PREAMBLE.pack(port))
        return wrap(reader, writer) if wrap is not None else (reader, writer)

    # -- the server side ------------------------------------------------------------------
    def plaintext_peer(self, writer: asyncio.StreamWriter, destination: tuple[str, int]) -> Peer | None:
        """A plaintext caller of the app: its Peer (no identity), or None when STRICT refuses it."""
        address = (writer.get_extra_info("peername") or ("",))[0]
        if self._own_mode == MtlsMode.STRICT and address not in self.gateways:
            logger.info("STRICT: refused a plaintext connection from %s to port %d", address, destination[1])
            self._refused(destination, f"plaintext from {address} refused (STRICT)", "-", None)
            return None
        if address not in self.gateways:  # what STRICT still admits is never revoked
            self._plaintext.add(writer)
        return Peer("", SecurityPolicy.NONE.value, destination[1], address)

    def allows_connection(self, peer: Peer, destination: tuple[str, int]) -> bool:
        """Authorization of a raw TCP (or handed-over) connection; a denial is counted and logged."""
        decision = self.authz.check_connection(peer.principal, peer.port)
        if decision.allowed:
            return True
        self._refused(destination, decision.reason, FLAG, peer)
        self.telemetry.authz_denied(decision)
        return False

    def _refused(self, destination: tuple[str, int], reason: str, flags: str, peer: Peer | None) -> None:
        """Count and log an inbound connection refused before it reached the app."""
        target = "%s:%d" % destination
        security = peer.security_policy if peer is not None else SecurityPolicy.NONE.value
        labels = self.telemetry.tcp_labels(INBOUND, target, security, peer_ip=peer.address if peer is not None else None)
        self.telemetry.tcp_opened(labels)
        self.telemetry.tcp_closed(labels)
        self.access_log.tcp(INBOUND, target, time.time(), 0, 0, reason, flags,
                            peer.principal if peer is not None else "", security)

    def status(self) -> dict:
        """For /config_dump: what meshcli status, certs and ca rotate read."""
        credentials = self.credentials
        return {"mode": self._own_mode, "fingerprint": credentials.fingerprint if credentials else None,
                "roots": list(credentials.roots) if credentials else [], "error": self.error,
                "principal": spiffe_id(self.state.config.trust_domain,
                                       self.state.config.project or self.state.identity.project,
                                       self.state.identity.service)}


SIDECAR_PORTS = range(15000, 15100)  # pod.sh never intercepts them: the sidecar's, as in Istio


class MtlsServer:
    """Terminates mesh mTLS on MTLS_PORT and passes each connection to the listener."""

    def __init__(self, tls: MeshTls, serve, protocol_factory) -> None:
        self.tls = tls
        self.serve = serve  # listener.Listener.serve
        self.protocol_factory = protocol_factory  # (accept) -> the listener's protocol for a caller
        self.server: asyncio.base_events.Server | None = None
        tls.on_credentials.append(self._on_credentials)

    async def start(self, host: str = "0.0.0.0", port: int = MTLS_PORT) -> None:
        self._host, self._port = host, port
        if self.tls.credentials is not None:
            await self._listen(self.tls.credentials)

    def _on_credentials(self, credentials: Credentials) -> None:
        if self.server is None and hasattr(self, "_port"):
            asyncio.ensure_future(self._listen(credentials))

    async def _listen(self, credentials: Credentials) -> None:
        loop = asyncio.get_running_loop()
        context = credentials.server
        context.sni_callback = self._current_context

        self.server = await loop.create_server(lambda: self.protocol_factory(self._accept), self._host, self._port,
                                               ssl=context, reuse_address=True,
                                               backlog=1024, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)

    def _current_context(self, ssl_object, server_name, context) -> None:
        """Each handshake takes the newest credentials (renewed certificate, rotated roots)."""
        current = self.tls.credentials.server
        if current is not context:
            current.sni_callback = self._current_context
            ssl_object.context = current
        return None

    def listening(self) -> bool:
        return self.server is not None and self.server.is_serving()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            principal = principal_of(ssl_object.getpeercert())
            config = self.tls.state.config
            if not principal.startswith(f"spiffe://{config.trust_domain}/"):
                logger.warning("refused an mTLS caller without an identity of trust domain %s: %r",
                               config.trust_domain, principal)
                return
            kind = KIND_OF_ALPN.get(ssl_object.selected_alpn_protocol() or "")
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    port, = PORT_PREAMBLE.unpack(await reader.readexactly(PORT_PREAMBLE.size))
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            if port in SIDECAR_PORTS:  # the sidecar's own ports (admin, listeners): never an app's
                logger.warning("refused an mTLS caller %s asking for the sidecar's port %d", principal, port)
                return
            local = writer.get_extra_info("sockname")[0]
            address = (writer.get_extra_info("peername") or ("",))[0]
            peer = Peer(principal, SecurityPolicy.MUTUAL_TLS.value, port, address)
            if kind == "tcp":
                reader, writer = framed(reader, writer)
            await self.serve(INBOUND, (local, port), reader, writer, peer, kind)
        except Exception:  # survived, as every connection's trouble
            logger.exception("mTLS connection failed")
        finally:
            writer.close()
