"""Raw TCP greeter for the meshcli sample apps.

Owns a server-speaks-first TCP protocol, the case a mesh must not break by
waiting for client bytes: on connect it sends
`HELLO from greeter <SERVICE_VERSION>\\n`, then answers every line it receives
with `echo: <line>\\n` until the client closes. Standard library only.
"""

import os
import socketserver
import sys

from app import bind_address, env_number, serve_until_terminated


class GreeterHandler(socketserver.StreamRequestHandler):
    def handle(self):
        print(f"connection from {self.client_address[0]}:{self.client_address[1]}", flush=True)
        try:
            # Greet before reading anything: that is the point of this service.
            self.wfile.write(f"HELLO from greeter {self.server.version}\n".encode())
            for line in self.rfile:
                self.wfile.write(b"echo: " + line.rstrip(b"\r\n") + b"\n")
        except ConnectionError:
            pass  # the client went away mid-conversation; nothing to clean up


class GreeterServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # restart at once without waiting out TIME_WAIT
    daemon_threads = True  # an open client connection must not delay shutdown

    def __init__(self, port, version):
        super().__init__((bind_address(), port), GreeterHandler)
        self.version = version


def main():
    version = os.environ.get("SERVICE_VERSION", "v1")
    server = GreeterServer(env_number("PORT", 9000, int), version)
    print(f"greeter {version} listening on port {server.server_address[1]}", flush=True)
    serve_until_terminated(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
