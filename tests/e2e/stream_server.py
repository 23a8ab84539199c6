"""A meshed HTTP/1.1 and TLS server for the data-plane e2e tests (runs in the sidecar image).

- `GET /chunks?n=10&ms=20`: a chunked answer, one line every `ms` milliseconds;
- `GET /bytes?size=N`: N bytes with a Content-Length, generated as they are sent;
- port 8443: TLS (a self-signed certificate made at start) answering `tls ok` to anything.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BLOCK = b"x" * 65536


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            url = urlsplit(target)
            query = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
            if url.path == "/chunks":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n")
                for i in range(query.get("n", 10)):
                    line = b"message %d\n" % i
                    writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                    await writer.drain()
                    await asyncio.sleep(query.get("ms", 20) / 1000)
                writer.write(b"0\r\n\r\n")
            elif url.path == "/bytes":
                size = query.get("size", 0)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                while size > 0:
                    writer.write(BLOCK[:size])
                    size -= len(BLOCK)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ntls ok")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def tls_context() -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    folder = Path(tempfile.mkdtemp())
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def main() -> None:
    http = await asyncio.start_server(serve_http, "0.0.0.0", 8080)
    tls = await asyncio.start_server(serve_tls, "0.0.0.0", 8443, ssl=tls_context())
    async with http, tls:
        await asyncio.gather(http.serve_forever(), tls.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
