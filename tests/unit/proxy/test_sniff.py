"""fastpath/sniff.classify(): what a connection speaks, from its first bytes (both paths use it)."""

import ssl

import pytest

from meshproxy.fastpath.sniff import H2_PREFACE, classify, is_h2_server_preface, starts_like_tls


def client_hello() -> bytes:
    """The first flight of a real TLS client, produced in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="payment")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# A SETTINGS frame (empty) as an h2c client sends right after the preface.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SERVER_SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"


@pytest.mark.parametrize(("client", "server", "expected"), [
    # an h2c server's SETTINGS greeting must not make an h2c client's connection "tcp"
    (b"", H2_SERVER_SETTINGS, None),
    (H2_PREFACE, H2_SERVER_SETTINGS, "h2c"),
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
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"", "tls"),  # a TLS record, handed over to mitmproxy
    (b"\x16\x03\x05\x00", b"", "tcp"),  # not a TLS version
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

    assert classify(hello) == "tls"
    assert classify(hello[:3]) == "tls"


def test_tls_and_h2_server_preface_helpers():
    assert starts_like_tls(client_hello()) and not starts_like_tls(b"\x16\x03")
    assert is_h2_server_preface(H2_SERVER_SETTINGS) and not is_h2_server_preface(b"220 mail.example ESMTP\r\n")
