"""ProtocolDetection (the mitmproxy adapter): the layer mitmproxy runs for a connection the
fast path handed over - the CONNECT of the handover itself, then, inside the tunnel, what
sniff.classify() says the app's bytes are."""

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import events, layers, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HTTPMode, HttpStream

from meshproxy.addons.protocol import ProtocolDetection
from meshproxy.fastpath.sniff import H2_PREFACE
from sidecar_kit import handover_mode
from test_sniff import H2_SETTINGS, client_hello


def make_nextlayer(transport: str = "tcp", server_tls: bool = False, in_tunnel: bool = True) -> NextLayer:
    """A NextLayer as mitmproxy builds it on a handover port: under [HttpProxy] for the
    CONNECT, under [HttpProxy, HttpLayer, HttpStream] (the CONNECT's stream) for the app's
    bytes inside the tunnel."""
    client = connection.Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 15081),
                               proxy_mode=handover_mode(), transport_protocol=transport)
    context = Context(client, options.Options())
    context.server.address = ("10.0.0.9", 8080)
    context.server.tls = server_tls
    modes.HttpProxy(context)
    if in_tunnel:
        layers.HttpLayer(context, HTTPMode.regular)
        context = context.fork()
        HttpStream(context, 1)
    return NextLayer(context)


def receive(nextlayer: NextLayer, data: bytes, from_client: bool = True) -> None:
    conn = nextlayer.context.client if from_client else nextlayer.context.server
    nextlayer.events.append(events.DataReceived(conn, data))


def test_the_handovers_connect_gets_a_regular_http_layer():
    nextlayer = make_nextlayer(in_tunnel=False)
    receive(nextlayer, b"CONNECT 10.0.0.9:8080 HTTP/1.1\r\nHost: 10.0.0.9:8080\r\n\r\n")

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.HttpLayer)
    assert nextlayer.layer.mode is HTTPMode.regular


def test_http1_gets_an_http_layer():
    nextlayer = make_nextlayer()
    receive(nextlayer, b"GET / HTTP/1.1\r\nHost: payment:8080\r\n\r\n")

    ProtocolDetection().next_layer(nextlayer)

    assert isinstance(nextlayer.layer, layers.HttpLayer)
    assert nextlayer.layer.mode is HTTPMode.transparent
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
    (client_hello(), True),  # TLS the app started: passed through untouched
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
    client = connection.Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 15081), alpn=client_alpn)
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
