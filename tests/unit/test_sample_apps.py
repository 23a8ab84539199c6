"""Tests for the demo services in sample-apps/, run as real subprocesses.

Every service listens on a free 127.0.0.1 port and is stopped by the finaliser
of the fixture that started it, which only touches its own processes (by pid).
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SAMPLE_APPS = Path(__file__).resolve().parents[2] / "sample-apps"
STARTUP_TIMEOUT = 5.0

# Bypass any *_proxy settings: every call here targets loopback services.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


def wait_until_listening(service):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            pytest.fail(f"service exited early:\n{service.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"service not listening after {STARTUP_TIMEOUT}s:\n{service.log.read_text()}")


def subprocess_env(**overrides):
    # No proxies for the apps either, or urllib in app.py could route loopback calls away.
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env.update(overrides)
    return env


class Services:
    """The sample-app processes one fixture started, and only those."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, script, *args, **env):
        """Start a sample-apps script on a free loopback port and wait until it listens."""
        port = free_port()
        log = self.log_dir / f"{script}-{port}.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, str(SAMPLE_APPS / script), *args],
                env=subprocess_env(PORT=str(port), BIND_ADDRESS="127.0.0.1", **env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        service = Service(proc, port, log)
        self.started.append(service)
        wait_until_listening(service)
        return service

    def stop_all(self):
        for service in self.started:
            if service.proc.poll() is None:
                service.proc.terminate()
        for service in self.started:
            try:
                service.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                service.proc.kill()
                service.proc.wait()


@pytest.fixture
def spawn(tmp_path):
    """Factory: spawn(script, *args, **env) -> Service; all are stopped at teardown."""
    services = Services(tmp_path)
    try:
        yield services.start
    finally:
        services.stop_all()


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    """One app.py shared by tests that leave its behaviour unchanged."""
    services = Services(tmp_path_factory.mktemp("shared"))
    try:
        yield services.start("app.py")
    finally:
        services.stop_all()


def request(method, url, body=None, headers=None, timeout=5):
    """Return (status, parsed JSON body) without raising on error statuses."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


# --- app.py ---------------------------------------------------------------------

def test_get_root_reports_identity(spawn):
    service = spawn("app.py", SERVICE_NAME="frontend", SERVICE_VERSION="v2")
    assert request("GET", service.url + "/") == (
        200, {"service": "frontend", "version": "v2", "headers": {}, "calls": []})
    assert request("GET", service.url + "/healthz") == (200, {"status": "ok"})


def test_keep_alive_serves_several_requests_on_one_connection(spawn):
    service = spawn("app.py", SERVICE_NAME="frontend")
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    try:
        for path in ("/", "/any/other/path", "/admin/behavior"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length")
            json.loads(response.read())
    finally:
        conn.close()


def test_chain_shows_nested_calls(spawn):
    db = spawn("app.py", SERVICE_NAME="db")
    backend = spawn("app.py", SERVICE_NAME="backend", UPSTREAMS=db.url + "/")
    frontend = spawn("app.py", SERVICE_NAME="frontend", SERVICE_VERSION="v1",
                     UPSTREAMS=f"{backend.url}/, {db.url}/query")

    status, body = request("GET", frontend.url + "/")

    assert status == 200
    assert body["service"] == "frontend"
    backend_call, db_call = body["calls"]
    assert backend_call["service"] == "backend"
    assert backend_call["calls"][0]["service"] == "db"
    assert db_call == {"service": "db", "version": "v1", "headers": {}, "calls": []}


def test_x_headers_are_passed_to_upstreams(spawn):
    backend = spawn("app.py", SERVICE_NAME="backend")
    frontend = spawn("app.py", SERVICE_NAME="frontend", UPSTREAMS=backend.url + "/")

    status, body = request("GET", frontend.url + "/", headers={
        "X-Canary": "true", "x-request-id": "req-42", "Authorization": "secret"})

    assert status == 200
    expected = {"x-canary": "true", "x-request-id": "req-42"}
    assert body["headers"] == expected
    assert body["calls"][0]["headers"] == expected


def test_upstream_down_gives_502_with_error_entry(spawn):
    dead_url = f"http://127.0.0.1:{free_port()}/"
    frontend = spawn("app.py", SERVICE_NAME="frontend", UPSTREAMS=dead_url)

    status, body = request("GET", frontend.url + "/")

    assert status == 502
    assert body["service"] == "frontend"
    assert body["calls"] == [{"url": dead_url, "error": "connection refused", "status": None}]


def test_failing_upstream_status_and_body_are_reported(spawn):
    backend = spawn("app.py", SERVICE_NAME="backend", ERROR_RATE="1", ERROR_STATUS="500")
    frontend = spawn("app.py", SERVICE_NAME="frontend", UPSTREAMS=backend.url + "/")

    status, body = request("GET", frontend.url + "/")

    assert status == 502
    [entry] = body["calls"]
    assert entry["status"] == 500
    assert entry["error"] == "HTTP 500"
    assert entry["body"] == {"service": "backend", "version": "v1", "error": "injected failure"}


def test_slow_upstream_times_out(spawn):
    backend = spawn("app.py", SERVICE_NAME="backend", DELAY_MS="3000")
    frontend = spawn("app.py", SERVICE_NAME="frontend", UPSTREAMS=backend.url + "/",
                     UPSTREAM_TIMEOUT="0.3")

    status, body = request("GET", frontend.url + "/")

    assert status == 502
    assert body["calls"][0]["error"] == "timeout"
    assert body["calls"][0]["status"] is None


def test_error_rate_injects_failures_until_reset(spawn):
    service = spawn("app.py", SERVICE_NAME="backend", SERVICE_VERSION="v3")
    behavior_url = service.url + "/admin/behavior"
    assert request("GET", behavior_url) == (
        200, {"error_rate": 0.0, "error_status": 503, "delay_ms": 0})

    assert request("POST", behavior_url, {"error_rate": 1.0, "error_status": 418}) == (
        200, {"error_rate": 1.0, "error_status": 418, "delay_ms": 0})
    assert request("GET", service.url + "/") == (
        418, {"service": "backend", "version": "v3", "error": "injected failure"})
    # Admin and health endpoints stay usable while failures are injected.
    assert request("GET", service.url + "/healthz") == (200, {"status": "ok"})

    assert request("POST", service.url + "/admin/reset") == (
        200, {"error_rate": 0.0, "error_status": 503, "delay_ms": 0})
    assert request("GET", service.url + "/")[0] == 200


def test_delay_ms_delays_answers(spawn):
    service = spawn("app.py")
    assert request("PUT", service.url + "/admin/behavior", {"delay_ms": 300})[0] == 200

    started = time.monotonic()
    assert request("GET", service.url + "/")[0] == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("body", [
    b"{not json",
    {"error_rate": 1.5},
    {"error_rate": True},
    {"error_status": "500"},
    {"error_status": 200},
    {"delay_ms": -1},
    {"delay_ms": 1.5},
    {"unknown": 1},
    [1, 2],
])
def test_bad_behavior_input_is_rejected(shared_app, body):
    status, answer = request("POST", shared_app.url + "/admin/behavior", body)
    assert status == 400
    assert answer["error"]
    # A rejected update changes nothing.
    assert request("GET", shared_app.url + "/admin/behavior") == (
        200, {"error_rate": 0.0, "error_status": 503, "delay_ms": 0})


def test_sigterm_stops_services_promptly(spawn):
    for script in ("app.py", "tcp_greeter.py"):
        service = spawn(script)
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=3) == 0


# --- tcp_greeter.py / tcp_client.py -------------------------------------------------

def test_greeter_speaks_first_then_echoes(spawn):
    greeter = spawn("tcp_greeter.py", SERVICE_VERSION="v2")
    with socket.create_connection(("127.0.0.1", greeter.port), timeout=5) as sock, \
            sock.makefile("rb") as stream:
        assert stream.readline() == b"HELLO from greeter v2\n"
        for text in (b"hi", b"second line"):
            sock.sendall(text + b"\n")
            assert stream.readline() == b"echo: " + text + b"\n"


def run_client(*args):
    return subprocess.run(
        [sys.executable, str(SAMPLE_APPS / "tcp_client.py"), *args],
        env=subprocess_env(), capture_output=True, text=True, timeout=10)


def test_tcp_client_cli_prints_greeting_and_echo(spawn):
    greeter = spawn("tcp_greeter.py")
    result = run_client("127.0.0.1", str(greeter.port), "--send", "ping", "--timeout", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO from greeter v1", "echo: ping"]


def test_tcp_client_cli_fails_on_refused_connection():
    result = run_client("127.0.0.1", str(free_port()), "--timeout", "2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "connection refused" in result.stderr


def test_tcp_client_serve_mode(spawn):
    greeter = spawn("tcp_greeter.py", SERVICE_VERSION="v2")
    client = spawn("tcp_client.py", "serve", GREETER_ADDR=f"127.0.0.1:{greeter.port}")
    assert request("GET", client.url + "/") == (
        200, {"service": "greeter-client", "version": "v1", "greeting": "HELLO from greeter v2"})

    broken = spawn("tcp_client.py", "serve", GREETER_ADDR=f"127.0.0.1:{free_port()}")
    status, body = request("GET", broken.url + "/")
    assert status == 502
    assert "connection refused" in body["error"]
