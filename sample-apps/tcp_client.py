"""TCP caller of tcp_greeter.py for the meshcli sample apps.

Owns both ways of talking to the greeter:
  python3 tcp_client.py HOST PORT [--send TEXT] [--timeout S]
      one-shot CLI: print the greeting (and the echo of TEXT); exit 1 on failure.
  python3 tcp_client.py serve
      HTTP service whose GET / fetches a greeting from GREETER_ADDR, so
      TCP traffic through the mesh can be driven and checked over HTTP.
Standard library only.
"""

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from app import JSONRequestHandler, JSONServer, env_number, serve_until_terminated


class GreeterError(Exception):
    """A failed exchange with the greeter, with a message fit for users."""


def read_line(stream):
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise GreeterError("connection closed before a full line arrived")
    return line.rstrip(b"\r\n").decode("utf-8", errors="replace")


def talk(host, port, send=None, timeout=5.0):
    """Read the greeting and, if `send` is given, echo one line; return (greeting, echo)."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                sock.makefile("rb") as stream:
            greeting = read_line(stream)
            echo = None
            if send is not None:
                sock.sendall(send.encode() + b"\n")
                echo = read_line(stream)
            return greeting, echo
    except ConnectionRefusedError:
        raise GreeterError(f"connection refused by {where}") from None
    except ConnectionResetError:
        raise GreeterError(f"connection reset by {where}") from None
    except TimeoutError:
        raise GreeterError(f"timed out after {timeout}s talking to {where}") from None
    except socket.gaierror as err:
        raise GreeterError(f"cannot resolve {host}: {err.strerror}") from None
    except OSError as err:
        raise GreeterError(f"connection to {where} failed: {err.strerror or err}") from None


def run_cli(argv):
    parser = argparse.ArgumentParser(
        prog="tcp_client.py",
        description="Connect to the greeter, print its greeting (and the echo of --send).",
        epilog="Run `tcp_client.py serve` for the HTTP service mode.",
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--send", metavar="TEXT", help="line to send after the greeting")
    parser.add_argument("--timeout", metavar="S", type=float, default=5.0,
                        help="seconds allowed for connect and each read (default 5)")
    args = parser.parse_args(argv)
    try:
        greeting, echo = talk(args.host, args.port, args.send, args.timeout)
    except GreeterError as err:
        print(f"tcp_client: {err}", file=sys.stderr)
        return 1
    print(greeting)
    if echo is not None:
        print(echo)
    return 0


@dataclass(frozen=True)
class FrontSettings:
    service: str
    version: str
    greeter_host: str
    greeter_port: int
    timeout: float


class GreeterFrontHandler(JSONRequestHandler):
    def do_GET(self):
        self.read_body()
        settings = self.server.settings
        if urlsplit(self.path).path == "/healthz":
            self.send_json(200, {"status": "ok"})
            return
        identity = {"service": settings.service, "version": settings.version}
        try:
            greeting, _ = talk(settings.greeter_host, settings.greeter_port,
                               timeout=settings.timeout)
        except GreeterError as err:
            self.send_json(502, {**identity, "error": str(err)})
            return
        self.send_json(200, {**identity, "greeting": greeting})


def parse_addr(addr):
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"invalid GREETER_ADDR={addr!r}: expected host:port")
    return host, int(port)


def serve():
    host, port = parse_addr(os.environ.get("GREETER_ADDR", "greeter:9000"))
    settings = FrontSettings(
        service=os.environ.get("SERVICE_NAME", "greeter-client"),
        version=os.environ.get("SERVICE_VERSION", "v1"),
        greeter_host=host,
        greeter_port=port,
        timeout=env_number("UPSTREAM_TIMEOUT", 10.0, float),
    )
    server = JSONServer(env_number("PORT", 8080, int), GreeterFrontHandler, settings)
    print(f"{settings.service} {settings.version} listening on port {server.server_address[1]}"
          f", greeter at {host}:{port}", flush=True)
    serve_until_terminated(server)
    return 0


def main(argv):
    if argv[:1] == ["serve"]:
        return serve()
    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
