"""Mesh mTLS between sidecars (meshproxy/mtls.py): real TLS 1.3 handshakes on loopback
against the mTLS server, with certificates from meshcli's CA; which callers get through,
with which identity, and which are refused (expired, not yet valid, another CA, a foreign
SPIFFE ID, a server that is not the workload dialled)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest

from meshproxy import mtls
from meshproxy.config import (IDENTITY_FILE, TRUST_FILE, Identity, MeshState, Service, SidecarConfig, Version,
                              spiffe_id)
from meshproxy.policy.authz import Authorization
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.telemetry import Telemetry

from meshcli import ca

PROJECT = "shop"
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
CONFIG = SidecarConfig("v1", {name: Service(name, (Version("v1", host),)) for name, host in
                              (("payment", "payment-v1"), ("orders", "orders"))}, project=PROJECT)


@pytest.fixture(scope="module")
def authority():
    return ca.new_root(PROJECT)


def write_identity(directory: Path, authority, service: str, names: list[str], roots=None, trust_domain="cluster.local",
                   not_before=None, lifetime=DAY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = ca.issue(authority, spiffe_id(trust_domain, PROJECT, service), names, lifetime, not_before)
    (directory / IDENTITY_FILE).write_bytes(ca.identity_pem(key, cert))
    (directory / TRUST_FILE).write_bytes((roots or authority).roots_pem())
    return directory


def tls_of(directory: Path, service: str) -> mtls.MeshTls:
    state = MeshState(Identity(PROJECT, service, service, "v1"))
    state.apply(CONFIG)
    tls = mtls.MeshTls(state, Authorization(state), Telemetry(state), AccessLog(state, None), directory)
    assert tls.reload()
    return tls


class Server:
    """payment-v1's mTLS server on a free loopback port; records who got through."""

    def __init__(self, directory: Path) -> None:
        self.tls = tls_of(directory, "payment")
        self.peers: list = []

        async def serve(direction, destination, reader, writer, peer, kind):
            self.peers.append((peer, kind, destination[1]))
            writer.write(b"hello " + peer.principal.encode())
            await writer.drain()

        from meshproxy.fastpath.listener import CallerProtocol
        self.server = mtls.MtlsServer(self.tls, serve, CallerProtocol)

    async def start(self) -> int:
        await self.server.start("127.0.0.1", 0)
        return self.server.server.sockets[0].getsockname()[1]


async def call(port: int, client: mtls.MeshTls, server_name: str = "payment-v1", alpn: str = mtls.ALPN_HTTP1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client.credentials.clients[alpn],
                                                   server_hostname=server_name)
    writer.write(mtls.PORT_PREAMBLE.pack(8080))
    try:
        return await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()


def exchange(tmp_path, authority, client_dir: Path, server_name: str = "payment-v1",
             server_names=("payment-v1", "payment")) -> tuple[bytes | Exception, list]:
    server = Server(write_identity(tmp_path / "payment", authority, "payment", list(server_names)))
    client = tls_of(client_dir, "orders")

    async def scenario():
        port = await server.start()
        try:
            return await call(port, client, server_name)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            return exc
        finally:
            server.server.stop()

    return asyncio.run(scenario()), server.peers


def test_a_mesh_caller_gets_through_with_its_spiffe_id_and_the_port_it_called(tmp_path, authority):
    answer, peers = exchange(tmp_path, authority, write_identity(tmp_path / "orders", authority, "orders", ["orders"]))
    principal = "spiffe://cluster.local/ns/shop/sa/orders"
    assert answer == b"hello " + principal.encode()
    [(peer, kind, port)] = peers
    assert (peer.principal, peer.security_policy, kind, port) == (principal, "mutual_tls", "http1", 8080)


@pytest.mark.parametrize("case", ["expired", "not yet valid", "another CA", "another trust domain"])
def test_the_server_refuses_callers_it_must_not_trust(tmp_path, authority, case):
    client_dir = tmp_path / "orders"
    if case == "expired":
        write_identity(client_dir, authority, "orders", ["orders"], not_before=NOW - 2 * DAY, lifetime=DAY)
    elif case == "not yet valid":
        write_identity(client_dir, authority, "orders", ["orders"], not_before=NOW + DAY)
    elif case == "another CA":  # it trusts the mesh's roots (so it would accept the server), but is not the mesh's
        write_identity(client_dir, ca.new_root("other"), "orders", ["orders"], roots=authority)
    else:
        write_identity(client_dir, authority, "orders", ["orders"], trust_domain="evil.example")
    answer, peers = exchange(tmp_path, authority, client_dir)
    assert peers == []
    assert isinstance(answer, Exception) or answer == b"", answer


def test_the_client_refuses_a_server_that_is_not_the_workload_it_dialled(tmp_path, authority):
    client_dir = write_identity(tmp_path / "orders", authority, "orders", ["orders"])
    answer, peers = exchange(tmp_path, authority, client_dir, server_names=("payment-v2",))
    assert isinstance(answer, ssl.SSLCertVerificationError) and peers == []


def test_only_tls_1_3_is_offered_and_accepted(tmp_path, authority):
    tls = tls_of(write_identity(tmp_path / "orders", authority, "orders", ["orders"]), "orders")
    for context in (tls.credentials.server, *tls.credentials.clients.values()):
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(tmp_path, authority):
    server = Server(write_identity(tmp_path / "payment", authority, "payment", ["payment-v1"]))
    client = tls_of(write_identity(tmp_path / "orders", authority, "orders", ["orders"]), "orders")

    async def fingerprint_seen(port: int) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client.credentials.clients["http/1.1"],
                                                       server_hostname="payment-v1")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        import hashlib
        return hashlib.sha256(der).hexdigest()

    async def scenario():
        port = await server.start()
        try:
            first = await fingerprint_seen(port)
            write_identity(tmp_path / "payment", authority, "payment", ["payment-v1"])  # renewed
            assert server.tls.reload()
            second = await fingerprint_seen(port)
            return first, second, server.tls.credentials.fingerprint
        finally:
            server.server.stop()

    first, second, loaded = asyncio.run(scenario())
    assert first != second == loaded


def test_mode_decides_who_gets_mtls_and_who_may_send_plaintext(tmp_path, authority):
    tls = tls_of(write_identity(tmp_path / "orders", authority, "orders", ["orders"]), "orders")
    opening = tls.opener(mtls.ALPN_HTTP1)("payment-v1", 8080)
    assert opening is not None and tls.secures("payment-v1")  # a mesh workload: mTLS (and metrics say so)
    opening.close()
    assert tls.opener(mtls.ALPN_HTTP1)("example.com", 80) is None  # outside the mesh: plaintext
    assert not tls.secures("example.com")
    disabled = {**CONFIG.services, "payment": Service("payment", (Version("v1", "payment-v1"),), mtls="DISABLE")}
    tls.state.apply(SidecarConfig("v2", disabled, project=PROJECT))
    opening = tls.opener(mtls.ALPN_HTTP1)("payment-v1", 8080)
    assert opening is None and not tls.secures("payment-v1")

    class Writer:
        def __init__(self, address):
            self.address = address

        def get_extra_info(self, name):
            return (self.address, 5555)

    strict = {**CONFIG.services, "orders": Service("orders", (Version("v1", "orders"),), mtls="STRICT")}
    tls.state.apply(SidecarConfig("v3", strict, project=PROJECT))
    tls.gateways = frozenset({"172.18.0.1"})
    assert tls.plaintext_peer(Writer("172.18.0.7"), ("172.18.0.5", 8080)) is None  # another container
    peer = tls.plaintext_peer(Writer("172.18.0.1"), ("172.18.0.5", 8080))  # a published port, from the host
    assert (peer.principal, peer.security_policy, peer.port) == ("", "none", 8080)


def test_gateways_come_from_the_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                     "eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
                     "eth1\t000013AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n")
    assert mtls.network_gateways(str(table)) == {"172.18.0.1", "172.19.0.1"}


def test_framing_passes_a_half_close_through_tls():
    async def scenario():
        received = []

        async def server(reader, writer):
            framed_reader, framed_writer = mtls.framed(reader, writer)
            while data := await framed_reader.read(100):
                received.append(data)
            framed_writer.write(b"bye")  # after the client's FIN: the other direction still works
            framed_writer.write_eof()
            await framed_writer.drain()

        listening = await asyncio.start_server(server, "127.0.0.1", 0)
        reader, writer = mtls.framed(*await asyncio.open_connection(*listening.sockets[0].getsockname()))
        writer.write(b"hello ")
        writer.write(b"world")
        writer.write_eof()
        answer = [await reader.read(100), await reader.read(100)]
        listening.close()
        return received, answer

    received, answer = asyncio.run(scenario())
    assert b"".join(received) == b"hello world" and answer == [b"bye", b""]


def test_plaintext_connections_admitted_before_a_switch_to_strict_end_after_their_exchange():
    from sidecar_kit import (PAYMENT, RawServer, RunningSidecar, at_eof, keep_alive_server, mesh_state, parse,
                             payment, read_response, request, response, run)

    released = asyncio.Event()

    async def reply(message):
        if message.target == "/slow":
            await released.wait()
        return response(body=b"done")

    def config(mode: str, version: str):
        return parse({"payment": payment(versions=(("v1", "127.0.0.1"),), mtls=mode)}, version=version)

    async def scenario():
        state = mesh_state(identity=PAYMENT)
        state.apply(config("PERMISSIVE", "v1"))
        async with RawServer(keep_alive_server(reply)) as app, RunningSidecar(state, destination=app.address) as mesh:
            idle_reader, idle_writer = await mesh.connect(inbound=True)
            idle_writer.write(request(target="/fast"))
            assert (await read_response(idle_reader)).status == 200  # kept alive, then idle
            busy_reader, busy_writer = await mesh.connect(inbound=True)
            busy_writer.write(request(target="/slow"))
            await asyncio.sleep(0.1)  # the exchange is under way

            state.apply(config("STRICT", "v2"))

            assert await at_eof(idle_reader)  # an idle one is closed at once
            released.set()
            answer = await read_response(busy_reader)  # the one under way finishes...
            assert (answer.status, answer.body) == (200, b"done")
            assert await at_eof(busy_reader)  # ...and is its connection's last
            fresh_reader, fresh_writer = await mesh.connect(inbound=True)
            fresh_writer.write(request(target="/fast"))
            assert await at_eof(fresh_reader)  # and a new plaintext caller is refused
            for writer in (idle_writer, busy_writer, fresh_writer):
                writer.close()

    run(scenario)


def test_raw_tcp_to_a_workload_address_gets_mtls_unless_its_mode_is_disable(tmp_path, authority):
    tls = tls_of(write_identity(tmp_path / "orders", authority, "orders", ["orders"]), "orders")
    services = {**CONFIG.services, "payment": Service("payment", (Version("v1", "localhost"),))}
    addresses = tls.telemetry.addresses  # the one IP -> workload map, which telemetry keeps current

    async def scenario():
        tls.state.apply(SidecarConfig("v2", services, project=PROJECT))
        assert not await addresses.refresh()  # "orders" does not resolve here: tried again in a second
        assert tls.secures_tcp("127.0.0.1") and not tls.secures_tcp("192.0.2.1")
        opening = tls.open_tcp(("127.0.0.1", 9000))
        assert opening is not None
        opening.close()
        disabled = {**services, "payment": Service("payment", (Version("v1", "localhost"),), mtls="DISABLE")}
        tls.state.apply(SidecarConfig("v3", disabled, project=PROJECT))
        assert not tls.secures_tcp("127.0.0.1") and tls.open_tcp(("127.0.0.1", 9000)) is None

    asyncio.run(scenario())


def test_an_upgraded_plaintext_connection_is_closed_at_once_by_a_switch_to_strict():
    from sidecar_kit import PAYMENT, RawServer, RunningSidecar, at_eof, mesh_state, parse, payment, read_head, request, run

    async def echo_after_101(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        while data := await reader.read(65536):
            writer.write(data)

    def config(mode: str, version: str):
        return parse({"payment": payment(versions=(("v1", "127.0.0.1"),), mtls=mode)}, version=version)

    async def scenario():
        state = mesh_state(identity=PAYMENT)
        state.apply(config("PERMISSIVE", "v1"))
        async with RawServer(echo_after_101) as app, RunningSidecar(state, destination=app.address) as mesh:
            reader, writer = await mesh.connect(inbound=True)
            writer.write(request(target="/ws", headers=(("Connection", "Upgrade"), ("Upgrade", "websocket"))))
            start, _ = await read_head(reader)
            writer.write(b"ping")
            assert start.startswith("HTTP/1.1 101") and await reader.readexactly(4) == b"ping"

            state.apply(config("STRICT", "v2"))

            assert await at_eof(reader)  # a relay has no exchange to wait for
            writer.close()

    run(scenario)
