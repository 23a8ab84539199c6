"""A mesh mTLS client without a sidecar, for the STRICT test: it holds one workload's
certificate and speaks to another sidecar's mTLS port as a sidecar would (TLS 1.3, ALPN
http/1.1, then the two-byte port of the app), sends one GET and prints the answer's status
line and body as JSON. Usage: python mtls_client.py IDENTITY_DIR HOST PORT PATH.
Standard library only.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys

MTLS_PORT = 15008


def main(identity_dir: str, host: str, port: int, path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(f"{identity_dir}/roots.pem")
    context.load_cert_chain(f"{identity_dir}/identity.pem")
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((host, MTLS_PORT), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(struct.pack("!H", port) + f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                                  "Connection: close\r\n\r\n".encode())
            version = tls.version()
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    print(json.dumps({"status": int(head.split(b" ")[1]), "tls": version, "body": body.decode(errors="replace")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
