"""Generic demo HTTP service for the meshcli sample apps.

Owns the configurable service that plays frontend/backend/etc. in demos and
tests: fan-out to UPSTREAMS with x- header passthrough, fault injection driven
by the /admin endpoints, and the small JSON-server helpers (JSONRequestHandler,
JSONServer, serve_until_terminated) that tcp_client.py and tcp_greeter.py reuse.
Standard library only.
"""

import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_BEHAVIOR = {"error_rate": 0.0, "error_status": 503, "delay_ms": 0}
TRACE_HEADERS = ("traceparent", "tracestate", "b3")  # W3C Trace Context and B3 (x-b3-* are x- headers)
MAX_DELAY_MS = 300_000  # 5 minutes: long enough to outlast any mesh timeout under test


# --- helpers shared with tcp_client.py / tcp_greeter.py ----------------------

def env_number(name, default, kind):
    """Read a numeric env var; exit with a clear message instead of a traceback."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"invalid {name}={raw!r}: expected {kind.__name__}") from None


def bind_address():
    # Containers must listen on all interfaces; tests narrow this to loopback.
    return os.environ.get("BIND_ADDRESS", "0.0.0.0")


class JSONRequestHandler(BaseHTTPRequestHandler):
    """Request handler that speaks keep-alive HTTP/1.1 with JSON bodies."""

    protocol_version = "HTTP/1.1"  # keep-alive, so every answer carries Content-Length
    # Headers and body go out in two writes; with Nagle on, the body of every answer on a
    # kept-alive connection (how sidecars talk to their app) waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def read_body(self):
        # Always drain the body: leftover bytes would corrupt the next
        # request on this keep-alive connection.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status, payload):
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # One line per request on stdout, where `docker logs` users look first.
        print(f"{self.address_string()} - {format % args}", flush=True)


class JSONServer(ThreadingHTTPServer):
    """Threaded HTTP server that carries the service's settings for its handlers."""

    daemon_threads = True  # an idle keep-alive client must not delay shutdown

    def __init__(self, port, handler, settings):
        super().__init__((bind_address(), port), handler)
        self.settings = settings


def serve_until_terminated(server):
    """Serve until SIGTERM/SIGINT, then close the listener so `docker stop` is quick."""

    def stop(signum, frame):
        # shutdown() waits for serve_forever() to return, so it must not run on
        # the main thread, which is the one executing serve_forever().
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # shutdown() is noticed at the next poll; 0.1 s keeps stops snappy at negligible cost.
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


# --- fault injection ---------------------------------------------------------

def validate_behavior(changes):
    """Return a cleaned copy of a behaviour update, or raise ValueError saying why."""
    if not isinstance(changes, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(changes) - set(DEFAULT_BEHAVIOR))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")

    def is_number(value):
        # bool is an int subclass, but `true` is never a meaningful rate or status.
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    clean = {}
    if "error_rate" in changes:
        rate = changes["error_rate"]
        if not is_number(rate) or not 0.0 <= rate <= 1.0:
            raise ValueError("error_rate must be a number from 0.0 to 1.0")
        clean["error_rate"] = float(rate)
    if "error_status" in changes:
        status = changes["error_status"]
        # Range check first: int() of inf/nan would raise.
        if not is_number(status) or not 400 <= status <= 599 or status != int(status):
            raise ValueError("error_status must be an integer from 400 to 599")
        clean["error_status"] = int(status)
    if "delay_ms" in changes:
        delay = changes["delay_ms"]
        if not is_number(delay) or not 0 <= delay <= MAX_DELAY_MS or delay != int(delay):
            raise ValueError(f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}")
        clean["delay_ms"] = int(delay)
    return clean


class Behavior:
    """Fault-injection settings shared by all request threads."""

    def __init__(self, initial):
        self._lock = threading.Lock()
        self._state = dict(DEFAULT_BEHAVIOR)
        self.update(initial)

    def snapshot(self):
        with self._lock:
            return dict(self._state)

    def update(self, changes):
        clean = validate_behavior(changes)  # all-or-nothing: validate before applying
        with self._lock:
            self._state.update(clean)
            return dict(self._state)

    def reset(self):
        with self._lock:
            self._state = dict(DEFAULT_BEHAVIOR)
            return dict(self._state)


# --- upstream calls ------------------------------------------------------------

def describe_error(err):
    """Short text for a network error, e.g. 'timeout' or 'connection refused'."""
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def upstream_failure(url, error, status=None):
    return {"url": url, "error": error, "status": status}


def call_upstream(url, headers, timeout):
    """Call one upstream; return (ok, entry) where entry is its JSON answer or an error entry."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            raw = response.read()
    except urllib.error.HTTPError as err:
        entry = upstream_failure(url, f"HTTP {err.code}", err.code)
        # Keep a JSON error body (e.g. a deeper 502) so the whole failure path is visible.
        try:
            entry["body"] = json.loads(err.read())
        except (OSError, ValueError, http.client.HTTPException):
            pass  # non-JSON or unreadable error body: status alone says enough
        return False, entry
    except urllib.error.URLError as err:
        # urllib wraps connect-phase errors (refused, DNS, connect timeout) in URLError.
        return False, upstream_failure(url, describe_error(err.reason))
    except (OSError, http.client.HTTPException) as err:
        # Read-phase errors (timeout, reset, truncated answer) arrive unwrapped.
        return False, upstream_failure(url, describe_error(err))
    try:
        return True, json.loads(raw)
    except ValueError:
        return False, upstream_failure(url, "invalid JSON response", status)


# --- the service -------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    service: str
    version: str
    upstreams: tuple
    upstream_timeout: float
    behavior: Behavior


# (method, path) -> handler method name; every other /admin request is refused.
ADMIN_ROUTES = {
    ("GET", "/admin/behavior"): "show_behavior",
    ("POST", "/admin/behavior"): "update_behavior",
    ("PUT", "/admin/behavior"): "update_behavior",
    ("POST", "/admin/reset"): "reset_behavior",
}
ADMIN_PATHS = {path for _, path in ADMIN_ROUTES}


class ServiceHandler(JSONRequestHandler):
    def dispatch(self):
        body = self.read_body()
        path = urlsplit(self.path).path
        route = ADMIN_ROUTES.get((self.command, path))
        if route:
            getattr(self, route)(body)
        elif path in ADMIN_PATHS:
            self.send_json(405, {"error": f"{self.command} not allowed on {path}"})
        elif path == "/admin" or path.startswith("/admin/"):
            self.send_json(404, {"error": f"no admin endpoint {path}"})
        elif self.command != "GET":
            self.send_json(405, {"error": f"{self.command} not allowed on {path}"})
        elif path == "/healthz":
            # Exempt from fault injection: a failing probe would take the
            # container out of rotation instead of exercising the mesh.
            self.send_json(200, {"status": "ok"})
        else:
            self.serve_request()

    do_GET = do_POST = do_PUT = dispatch

    def show_behavior(self, body):
        self.send_json(200, self.server.settings.behavior.snapshot())

    def update_behavior(self, body):
        try:
            changes = json.loads(body or b"{}")
        except ValueError as err:
            self.send_json(400, {"error": f"invalid JSON: {err}"})
            return
        try:
            state = self.server.settings.behavior.update(changes)
        except ValueError as err:
            self.send_json(400, {"error": str(err)})
            return
        self.send_json(200, state)

    def reset_behavior(self, body):
        self.send_json(200, self.server.settings.behavior.reset())

    def serve_request(self):
        settings = self.server.settings
        identity = {"service": settings.service, "version": settings.version}
        behavior = settings.behavior.snapshot()
        if behavior["delay_ms"]:
            time.sleep(behavior["delay_ms"] / 1000)
        if random.random() < behavior["error_rate"]:
            self.send_json(behavior["error_status"], {**identity, "error": "injected failure"})
            return

        # x- headers (x-canary, x-request-id, ...) drive header-based routing
        # further down the chain, and the trace context joins each hop's span to
        # the caller's (as Istio asks of apps), so both travel with every upstream call.
        forwarded = {
            name.lower(): value
            for name, value in self.headers.items()
            if name.lower().startswith("x-") or name.lower() in TRACE_HEADERS
        }
        results = [
            call_upstream(url, forwarded, settings.upstream_timeout)
            for url in settings.upstreams
        ]
        status = 200 if all(ok for ok, _ in results) else 502
        self.send_json(status, {
            **identity,
            "headers": forwarded,
            "calls": [entry for _, entry in results],
        })


def parse_upstreams(raw):
    upstreams = tuple(url.strip() for url in raw.split(",") if url.strip())
    for url in upstreams:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SystemExit(f"invalid UPSTREAMS entry {url!r}: expected http(s)://host[:port]/path")
    return upstreams


def initial_behavior():
    """Behaviour overrides from ERROR_RATE / ERROR_STATUS / DELAY_MS, if set."""
    initial = {}
    for env_name, field, kind in (
        ("ERROR_RATE", "error_rate", float),
        ("ERROR_STATUS", "error_status", int),
        ("DELAY_MS", "delay_ms", int),
    ):
        value = env_number(env_name, None, kind)
        if value is not None:
            initial[field] = value
    try:
        return Behavior(initial)
    except ValueError as err:
        raise SystemExit(f"invalid behaviour from environment: {err}") from None


def main():
    settings = Settings(
        service=os.environ.get("SERVICE_NAME", "app"),
        version=os.environ.get("SERVICE_VERSION", "v1"),
        upstreams=parse_upstreams(os.environ.get("UPSTREAMS", "")),
        upstream_timeout=env_number("UPSTREAM_TIMEOUT", 10.0, float),
        behavior=initial_behavior(),
    )
    server = JSONServer(env_number("PORT", 8080, int), ServiceHandler, settings)
    print(f"{settings.service} {settings.version} listening on port {server.server_address[1]}",
          flush=True)
    serve_until_terminated(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
