"""What a connection speaks, from its first bytes: HTTP/1, HTTP/2 with prior knowledge
(h2c, e.g. gRPC), TLS (started by the app itself), or opaque TCP."""

from __future__ import annotations

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FIRST_LINE = 4096


def starts_like_tls(data: bytes) -> bool:
    """A TLS handshake record: content type 22, version 3.x."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04


def is_h2_server_preface(data: bytes) -> bool:
    """A SETTINGS frame on stream 0: type 0x04 at byte 3, stream id 0 in bytes 5-8."""
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00"


def classify(data_client: bytes, data_server: bytes = b"") -> str | None:
    """'http1', 'h2c', 'tls', 'tcp', or None when more client bytes are needed to tell."""
    # The server spoke first: not HTTP - unless it is an h2c server, which greets with
    # SETTINGS at once; then the client's bytes decide.
    if data_server and not is_h2_server_preface(data_server):
        return "tcp"
    if not data_client:
        return None
    if starts_like_tls(data_client):
        return "tls"
    if H2_PREFACE.startswith(data_client[: len(H2_PREFACE)]):
        return "h2c" if len(data_client) >= len(H2_PREFACE) else None
    first_line_end = data_client.find(b"\n")
    head = data_client if first_line_end < 0 else data_client[:first_line_end]
    method, _, rest = head.partition(b" ")
    if not method.isalpha() or (len(data_client) >= 3 and not data_client[:3].isalpha()):
        return "tcp"
    if first_line_end < 0:
        return None if len(data_client) < MAX_FIRST_LINE else "tcp"
    return "http1" if b" HTTP/1." in head else "tcp"
