"""ProtocolDetection: decide per connection whether it is HTTP/1, HTTP/2 or opaque TCP.

Replaces mitmproxy's NextLayer for the mesh: TLS the app started itself is passed
through untouched (we hold no certificate the app would trust), HTTP/2 with prior
knowledge (h2c, e.g. gRPC) is spoken on both sides, and anything that does not look
like HTTP (including protocols where the server speaks first) is relayed as raw TCP.
A connection that gets a TCP fault (see faults.py) is relayed as raw TCP whatever it
carries, so the fault applies to HTTP traffic too.
"""

from __future__ import annotations

from typing import Callable

from mitmproxy.proxy import layer, layers, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.tls import starts_like_tls_record

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _is_h2_server_preface(data: bytes) -> bool:
    """A SETTINGS frame on stream 0: type 0x04 at byte 3, stream id 0 in bytes 5-8."""
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00"


def classify(data_client: bytes, data_server: bytes) -> str | None:
    """'http1', 'h2c', 'tcp', or None when more client bytes are needed to tell."""
    # The server spoke first: not HTTP - unless it is an h2c server, which greets with
    # SETTINGS at once; then the client's bytes decide.
    if data_server and not _is_h2_server_preface(data_server):
        return "tcp"
    if not data_client:
        return None
    if starts_like_tls_record(data_client):
        return "tcp"
    if H2_PREFACE.startswith(data_client[: len(H2_PREFACE)]):
        return "h2c" if len(data_client) >= len(H2_PREFACE) else None
    first_line_end = data_client.find(b"\n")
    head = data_client if first_line_end < 0 else data_client[:first_line_end]
    method, _, rest = head.partition(b" ")
    if not method.isalpha() or (len(data_client) >= 3 and not data_client[:3].isalpha()):
        return "tcp"
    if first_line_end < 0:
        return None if len(data_client) < 4096 else "tcp"
    return "http1" if b" HTTP/1." in head else "tcp"


class ProtocolDetection:
    name = "nextlayer"  # it takes the place of mitmproxy's NextLayer, which proxyserver checks for

    def __init__(self, tcp_fault_for: Callable[[Context], object | None] | None = None) -> None:
        self.tcp_fault_for = tcp_fault_for  # Faults.tcp_fault_for: a TCP fault forces raw TCP

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer:
            return
        context = nextlayer.context
        if context.client.transport_protocol != "tcp":
            nextlayer.layer = layers.UDPLayer(context)
            return
        if self.tcp_fault_for is not None and self.tcp_fault_for(context) is not None:
            nextlayer.layer = layers.TCPLayer(context)
            return
        kind = classify(nextlayer.data_client(), nextlayer.data_server())
        if kind == "tcp":
            nextlayer.layer = layers.TCPLayer(context)
        elif kind == "http1":
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)
        elif kind == "h2c":
            # mitmproxy picks its HTTP/2 codec from ALPN; h2c has none, so we set it.
            context.client.alpn = b"h2"
            # The connection opened eagerly to the original destination must speak it too.
            if not context.server.tls:
                context.server.alpn = b"h2"
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Without ALPN mitmproxy would speak HTTP/1.1 upstream, which gRPC servers refuse:
        # a client that chose HTTP/2 with prior knowledge gets it on the server side too.
        if data.client.alpn == b"h2" and not data.server.tls:
            data.server.alpn = b"h2"
