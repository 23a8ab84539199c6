"""ProtocolDetection (mitmproxy adapter): which layer mitmproxy runs for a handed-over
connection. Replaces mitmproxy's NextLayer for the mesh.

The fast path tunnels each handed-over connection with CONNECT (regular mode); inside the
tunnel, the same sniff.classify() that the fast path used decides: TLS the app started
itself is passed through untouched (we hold no certificate the app would trust), HTTP/2
with prior knowledge (h2c, e.g. gRPC) is spoken on both sides, HTTP/1 is HTTP, anything
else is relayed as raw TCP.
"""

from __future__ import annotations

from mitmproxy.proxy import layer, layers, server_hooks
from mitmproxy.proxy.layers.http import HTTPMode

from meshproxy.fastpath.sniff import classify


class ProtocolDetection:
    name = "nextlayer"  # it takes the place of mitmproxy's NextLayer, which proxyserver checks for

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer:
            return
        context = nextlayer.context
        if context.client.transport_protocol != "tcp":
            nextlayer.layer = layers.UDPLayer(context)
            return
        if len(context.layers) <= 2:  # [HttpProxy, NextLayer]: the handover's CONNECT
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.regular)
            return
        kind = classify(nextlayer.data_client(), nextlayer.data_server())
        if kind in ("tcp", "tls"):
            nextlayer.layer = layers.TCPLayer(context)
        elif kind == "http1":
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)
        elif kind == "h2c":
            # mitmproxy picks its HTTP/2 codec from ALPN; h2c has none, so we set it.
            context.client.alpn = b"h2"
            if not context.server.tls:
                context.server.alpn = b"h2"
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Without ALPN mitmproxy would speak HTTP/1.1 upstream, which gRPC servers refuse:
        # a client that chose HTTP/2 with prior knowledge gets it on the server side too.
        if data.client.alpn == b"h2" and not data.server.tls:
            data.server.alpn = b"h2"
