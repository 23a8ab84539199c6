"""Acceptance of fault injection and the pytest plugin (issue 5), on the demo.

These tests use meshcli's own pytest plugin: the `mesh_rules` fixture is the plugin's,
attached to the demo project that conftest.py brought up with the CLI; every fault a
test sets is cleared after it. The CLI's runtime faults are checked too.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from test_demo import request_counts
from test_traffic import get_with, payment_of, send

# A reset can reach the client before connect() returns (a loaded machine lets the sidecar
# accept and reset before the client reads its socket's state): a reset either way.
RAW_TCP_CLIENT = """
import socket, sys
try:
    s = socket.create_connection(("greeter", 9000), timeout=5)
except ConnectionResetError:
    sys.exit(print("reset"))
s.settimeout(float(sys.argv[1]))
try:
    print("data" if s.recv(1024) else "eof")
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"""


def raw_tcp(demo, read_timeout: float = 2.0) -> str:
    result = demo.exec("greeter-client", "python3", "-c", RAW_TCP_CLIENT, str(read_timeout))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_abort_503_on_every_call_shows_the_failure_path(mesh_rules, demo):
    orders_before = request_counts(demo.sidecar_stats("orders"))
    payment_before = mesh_rules.stats("payment")
    with mesh_rules.fault("payment", abort=503, percent=100):
        answers = send(demo, 50)
    assert Counter(status for status, _ in answers) == {502: 50}  # frontend reports the failed chain
    assert {payment_of(answer)["status"] for _, answer in answers} == {503}

    orders_seen = request_counts(demo.sidecar_stats("orders")) - orders_before
    assert orders_seen[("source", "orders", "payment", "503")] == 50
    assert (mesh_rules.stats("payment") - payment_before).requests == 0  # aborted before leaving orders

    assert Counter(status for status, _ in send(demo, 20)) == {200: 20}  # undone on exit


def test_abort_at_30_percent(mesh_rules, demo, measured):
    with mesh_rules.fault("payment", abort=503, percent=30):
        answers = send(demo, 1000)
    failed = sum(1 for status, _ in answers if status != 200) / len(answers)
    measured("abort 503 at 30 %: failed share of 1000 requests", f"{failed:.1%}")
    assert abs(failed - 0.30) <= 0.04, failed


def test_delay_then_timeout_turns_it_into_504(mesh_rules, demo, measured):
    with mesh_rules.fault("payment", delay="1s", percent=100):
        for _ in range(3):
            started = time.monotonic()
            status, _ = get_with(demo.url, {})
            assert status == 200
            assert time.monotonic() - started >= 1.0
        with mesh_rules.timeout("payment", "500ms"):
            started = time.monotonic()
            status, answer = get_with(demo.url, {})
            elapsed = time.monotonic() - started
    measured("delay 1s + timeout 500ms: answer at the frontend after", f"{elapsed * 1000:.0f} ms")
    assert status == 502 and payment_of(answer)["status"] == 504, answer
    assert 0.5 <= elapsed < 1.0, elapsed


def test_fault_for_two_seconds_expires_by_itself(mesh_rules, demo):
    demo.cli("fault", "payment", "--abort", "503", "--for", "2s", "-p", demo.project)
    set_at = time.monotonic()
    assert Counter(status for status, _ in send(demo, 10)) == {502: 10}
    time.sleep(max(0.0, set_at + 2.3 - time.monotonic()))
    assert Counter(status for status, _ in send(demo, 50)) == {200: 50}


def test_tcp_reset_and_black_hole_seen_by_a_raw_client(mesh_rules, demo):
    assert raw_tcp(demo) == "data"  # the greeter speaks first
    with mesh_rules.fault("greeter", tcp="reset"):
        assert raw_tcp(demo) == "reset"
    with mesh_rules.fault("greeter", tcp="blackhole"):
        assert raw_tcp(demo, read_timeout=2.0) == "timeout"
    assert raw_tcp(demo) == "data"


def test_cli_faults_survive_a_mesh_file_edit_and_clear_removes_them(mesh_rules, demo):
    demo.cli("fault", "payment", "--abort", "503", "-p", demo.project)
    listed = json.loads(demo.cli("fault", "list", "-p", demo.project, "--json").stdout)
    assert [f["service"] for f in listed["faults"]] == ["payment"]

    demo.cli("split", "payment", "v1=50", "v2=50", "-p", demo.project)  # mesh.yaml changes and reloads
    assert "fault" not in demo.mesh_file.read_text()  # runtime faults never pollute the user's file
    assert Counter(status for status, _ in send(demo, 20)) == {502: 20}

    demo.cli("fault", "clear", "payment", "-p", demo.project)
    assert Counter(status for status, _ in send(demo, 20)) == {200: 20}
    assert json.loads(demo.cli("fault", "list", "-p", demo.project, "--json").stdout)["faults"] == []


def test_stats_report_requests_and_latency_seen_by_the_sidecars(mesh_rules, demo):
    before = mesh_rules.stats("payment")
    try:
        demo.behave("payment-v2", delay_ms=300)
        with mesh_rules.split("payment", v2=100):
            answers = send(demo, 20)
    finally:
        demo.behave("payment-v2")
    seen = mesh_rules.stats("payment") - before

    assert Counter(status for status, _ in answers) == {200: 20}
    assert seen.requests == 20 and seen.count(version="v2", status=200) == 20
    assert seen.mean_latency_ms(version="v2") >= 300
    assert 250 <= seen.latency_ms(0.5) <= 500  # the histogram bucket that holds 300 ms
