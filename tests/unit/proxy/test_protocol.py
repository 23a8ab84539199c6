"""ProtocolDetection: classify() on first bytes, and the layer it picks for a real NextLayer."""

import ssl

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import events, layers, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.mode_specs import ProxyMode

from meshproxy.addons.protocol import H2_PREFACE, ProtocolDetection, classify


def client_hello() -> bytes:
    """The first flight of a real TLS client, produced in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="payment")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# A SETTINGS frame (empty) as an h2c client sends right after the preface.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(("client", "server", "expected"), [
    # an h2c server's SETTINGS greeting must not make an h2c client's connection "tcp"
    (b"", b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64", None),
    (H2_PREFACE, b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64", "h2c"),
    (b"GET /pay HTTP/1.1\r\nHost: payment:8080\r\n\r\n", b"", "http1"),
    (b"POST /pay HTTP/1.0\r\n", b"", "http1"),
    (b"GET /pay HTTP/1.1\r\n", b"", "http1"),  # headers not complete yet: the request line is enough
    (b"GE", b"", None),
    (b"GET /pay", b"", None),  # no line end yet
    (H2_PREFACE + H2_SETTINGS, b"", "h2c"),
    (H2_PREFACE, b"", "h2c"),
    (H2_PREFACE[:10], b"", None),
    (b"PRI", b"", None),
    (b"PRI * HTTP/1.1\r\n", b"", "http1"),  # not the preface: an odd but plain HTTP/1 method
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"", "tcp"),
    (b"", b"220 mail.example ESMTP\r\n", "tcp"),  # the server spoke first
    (b"GET / HTTP/1.1\r\n", b"\x0a5.7.0\x00", "tcp"),  # server data wins
    (b"\x00\x00\x00\x08\x04\xd2\x16/", b"", "tcp"),  # Postgres SSLRequest
    (b"\xff\xfe\x00", b"", "tcp"),
    (b"*1\r\n$4\r\nPING\r\n", b"", "tcp"),  # Redis
    (b"PING\r\n", b"", "tcp"),  # one word, no target: not a request line
    (b"SSH-2.0-OpenSSH_9.6\r\n", b"", "tcp"),
    (b"hello there my friend\r\n", b"", "tcp"),  # a line, but no HTTP version
    (b"A" * 5000, b"", "tcp"),  # a very long line that never ends is not HTTP
    (b"GET /" + b"a" * 4000, b"", None),  # a long URL still gets a chance
    (b"", b"", None),
])
def test_classify(client, server, expected):
    assert classify(client, server) == expected


def test_classify_real_client_hello():
    hello = client_hello()
    assert hello[0] == 0x16  # sanity: a TLS handshake record

    assert classify(hello, b"") == "tcp"
    assert classify(hello[:3], b"") == "tcp"


def make_nextlayer(transport: str = "tcp", server_tls: bool = False) -> NextLayer:
    client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.3", 15001),
                               proxy_mode=ProxyMode.parse("transparent@15001"), transport_protocol=transport)
    context = Context(client, options.Options())
    context.server.address = ("10.0.0.9", 8080)
    context.server.tls = server_tls
    return NextLayer(context)


def receive(nextlayer: NextLayer, data: bytes, from_client: bool = True) -> None:
    conn = nextlayer.context.client if from_client else nextlayer.context.server
    nextlayer.events.append(events.DataReceived(conn, data))


def test_http1_gets_an_http_layer():
    nextlayer = make_nextlayer()
    receive(nextlayer, b"GET / HTTP/1.1\r\nHost: payment:8080\r\n\r\n")

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.HttpLayer)
    assert nextlayer.layer.mode is layers.http.HTTPMode.transparent
    assert nextlayer.context.client.alpn is None


def test_h2c_gets_an_http_layer_speaking_http2_on_both_sides():
    nextlayer = make_nextlayer()
    receive(nextlayer, H2_PREFACE)
    receive(nextlayer, H2_SETTINGS)

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.HttpLayer)
    assert nextlayer.context.client.alpn == b"h2"
    assert nextlayer.context.server.alpn == b"h2"


def test_h2c_does_not_force_alpn_on_a_tls_server():
    nextlayer = make_nextlayer(server_tls=True)
    receive(nextlayer, H2_PREFACE)

    ProtocolDetection().next_layer(nextlayer)

    assert nextlayer.context.client.alpn == b"h2"
    assert nextlayer.context.server.alpn is None


def test_data_split_across_reads_is_joined():
    nextlayer = make_nextlayer()
    receive(nextlayer, b"GE")
    detection = ProtocolDetection()
    detection.next_layer(nextlayer)
    assert nextlayer.layer is None  # undecided: wait for more

    receive(nextlayer, b"T / HTTP/1.1\r\n")
    detection.next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.HttpLayer)


@pytest.mark.parametrize(("data", "from_client"), [
    (b"SSH-2.0-OpenSSH_9.6\r\n", True),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", True),
    (b"220 mail.example ESMTP\r\n", False),
])
def test_other_traffic_is_relayed_as_tcp(data, from_client):
    nextlayer = make_nextlayer()
    receive(nextlayer, data, from_client)

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.TCPLayer)


def test_udp_is_relayed_as_udp():
    nextlayer = make_nextlayer(transport="udp")
    receive(nextlayer, b"GET / HTTP/1.1\r\n")

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.UDPLayer)


def test_a_layer_chosen_by_someone_else_is_kept():
    nextlayer = make_nextlayer()
    receive(nextlayer, b"GET / HTTP/1.1\r\n")
    chosen = layers.TCPLayer(nextlayer.context)
    nextlayer.layer = chosen

    ProtocolDetection().next_layer(nextlayer)

    assert nextlayer.layer is chosen


def test_nextlayer_asks_the_addon_through_the_hook():
    """The real event flow: NextLayer yields the next_layer hook on data, then hands over."""
    nextlayer = make_nextlayer()
    detection = ProtocolDetection()
    assert list(nextlayer.handle_event(events.Start())) == []  # no data yet: nothing to ask
    [hook] = nextlayer.handle_event(events.DataReceived(nextlayer.context.client, b"SSH-2.0-x\r\n"))
    assert hook.name == "next_layer"

    getattr(detection, hook.name)(*hook.args())
    # mitmproxy resumes the layer once the hook is done: the TCP layer starts and fires tcp_start
    rest = list(nextlayer.handle_event(events.HookCompleted(hook)))

    assert isinstance(nextlayer.layer, layers.TCPLayer)
    assert any(getattr(c, "name", None) == "tcp_start" for c in rest)


def upstream(client_alpn, server_tls: bool) -> connection.Server:
    client = connection.Client(peername=("10.0.0.2", 40000), sockname=("10.0.0.3", 15001), alpn=client_alpn)
    server = connection.Server(address=("payment-v1", 8080), tls=server_tls)
    ProtocolDetection().server_connect(server_hooks.ServerConnectionHookData(server, client))
    return server


def test_h2c_client_gets_http2_upstream():
    assert upstream(b"h2", server_tls=False).alpn == b"h2"


@pytest.mark.parametrize(("client_alpn", "server_tls"), [(None, False), (b"http/1.1", False), (b"h2", True)])
def test_other_upstreams_are_left_to_mitmproxy(client_alpn, server_tls):
    assert upstream(client_alpn, server_tls).alpn is None


def test_takes_the_place_of_mitmproxys_nextlayer():
    assert ProtocolDetection.name == "nextlayer"
