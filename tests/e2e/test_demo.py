"""Acceptance of `meshcli up` on the bundled demo: traffic, TCP, sidecar recovery, status, down.

Tests run in file order against one demo project (see conftest.py); the last one
takes it down and checks that nothing of it is left.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

HOPS = ("frontend", "orders", "payment-v1", "payment-v2")


def get(url: str, timeout: float = 5) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError):
        return 0, None


def request_counts(stats: dict) -> Counter:
    """(reporter, source, destination_service, code) -> count, from one sidecar's /stats."""
    counts: Counter = Counter()
    for row in stats["requests"]:
        key = (row["reporter"], row["source_workload"], row["destination_service"], row["response_code"])
        counts[key] += row["count"]
    return counts


def snapshot(demo) -> dict[str, Counter]:
    return {workload: request_counts(demo.sidecar_stats(workload)) for workload in HOPS}


def delta(after: dict[str, Counter], before: dict[str, Counter]) -> dict[str, Counter]:
    return {w: after[w] - before[w] for w in after}


def test_every_hop_goes_through_both_sidecars(demo):
    before = snapshot(demo)
    answers = [get(demo.url) for _ in range(200)]

    assert [status for status, _ in answers] == [200] * 200
    paths = [(a["service"], a["calls"][0]["service"], a["calls"][0]["calls"][0]["service"]) for _, a in answers]
    assert set(paths) == {("frontend", "orders", "payment")}
    versions = Counter(a["calls"][0]["calls"][0]["version"] for _, a in answers)
    assert set(versions) == {"v1", "v2"}
    assert abs(versions["v1"] - versions["v2"]) <= 2, versions  # round robin

    seen = delta(snapshot(demo), before)
    # frontend: 200 inbound from outside the mesh, 200 outbound to orders (client side).
    assert seen["frontend"][("destination", "unknown", "frontend", "200")] == 200
    assert seen["frontend"][("source", "frontend", "orders", "200")] == 200
    # orders: server side for frontend's calls, client side for its calls to payment.
    assert seen["orders"][("destination", "frontend", "orders", "200")] == 200
    assert seen["orders"][("source", "orders", "payment", "200")] == 200
    # payment: the two versions' server sides together saw every call, each some.
    inbound = [seen[w][("destination", "orders", "payment", "200")] for w in ("payment-v1", "payment-v2")]
    assert sum(inbound) == 200 and min(inbound) > 0, inbound
    assert inbound == [versions["v1"], versions["v2"]]


def test_access_log_records_each_direction(demo):
    status, _ = get(demo.url)
    assert status == 200
    wanted = {("inbound", "orders"), ("outbound", "payment")}

    def directions(entries: list[dict]) -> set:
        return {(e["direction"], e["destination_service"]) for e in entries if e["kind"] == "http"}

    assert wanted <= directions(demo.access_log("orders-sidecar", until=lambda e: wanted <= directions(e)))


def test_tcp_server_speaks_first_through_the_mesh(demo):
    before = demo.sidecar_stats("greeter")
    result = demo.exec("greeter-client", "python3", "/app/tcp_client.py", "greeter", "9000", "--send", "ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO from greeter v1", "echo: ping"]

    def opened(stats: dict, reporter: str) -> int:
        return sum(r["value"] for r in stats["tcp"]
                   if r["metric"] == "istio_tcp_connections_opened_total" and r["reporter"] == reporter)

    # The greeter's server-side sidecar relayed the connection...
    assert opened(demo.sidecar_stats("greeter"), "destination") == opened(before, "destination") + 1
    # ...and the caller's client-side sidecar carried it out.
    assert opened(demo.sidecar_stats("greeter-client"), "source") >= 1


def test_http2_prior_knowledge_crosses_both_sidecars(demo):
    result = demo.exec("frontend", "curl", "-sS", "--http2-prior-knowledge", "-m", "5",
                       "-w", "\\n%{http_version}", "http://h2echo:8080/grpc.like/Call")
    if result.returncode == 127 or "executable file not found" in result.stderr:
        pytest.skip("the sample image has no curl")
    body, _, version = result.stdout.rpartition("\n")
    assert result.returncode == 0, result.stderr
    assert version == "2"
    assert json.loads(body) == {"service": "h2echo", "protocol": "HTTP/2", "path": "/grpc.like/Call"}

    def sent(entries: list[dict]) -> bool:
        return any(e["kind"] == "http" and e["destination_service"] == "h2echo" and e["direction"] == "outbound"
                   and e["protocol"] == "HTTP/2.0" for e in entries)

    def received(entries: list[dict]) -> bool:
        return any(e["kind"] == "http" and e["direction"] == "inbound" and e["protocol"] == "HTTP/2.0"
                   and e["status"] == 200 for e in entries)

    assert sent(demo.access_log("frontend-sidecar", until=sent))
    assert received(demo.access_log("h2echo-sidecar", until=received))


def test_killed_sidecar_comes_back_and_app_keeps_running(demo):
    app_before = demo.inspect("orders")
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, _ = get(demo.url, timeout=2)
            results.append((time.monotonic(), status))
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    time.sleep(1)
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", demo.container("orders-sidecar")], check=True, capture_output=True)
    deadline = killed_at + 20
    while time.monotonic() < deadline:
        after_kill = [s for t, s in results if t > killed_at]
        if any(s != 200 for s in after_kill) and after_kill and after_kill[-1] == 200:
            break
        if len([s for s in after_kill if s == 200]) > 40:
            break
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    worker.join(5)

    failures = [t for t, s in results if t > killed_at and s != 200]
    last_failure = max(failures, default=killed_at)
    assert last_failure - killed_at < 5, f"requests failed for {last_failure - killed_at:.1f}s after the kill"
    assert results[-1][1] == 200
    sidecar = demo.inspect("orders-sidecar")
    assert sidecar["State"]["Running"] is True
    app_after = demo.inspect("orders")
    assert app_after["Id"] == app_before["Id"]
    assert app_after["State"]["StartedAt"] == app_before["State"]["StartedAt"], "the app was restarted"
    assert app_after["RestartCount"] == app_before["RestartCount"]


def test_status_json_reports_every_workload(demo):
    # The restarted sidecar needs a moment to report healthy again.
    deadline = time.monotonic() + 30
    while True:
        result = demo.cli("status", "-p", demo.project, "--json", check=False)
        data = json.loads(result.stdout)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stdout
    workloads = {w["workload"]: w for w in data["workloads"]}
    assert set(workloads) == {"frontend", "orders", "payment-v1", "payment-v2", "greeter", "greeter-client",
                              "h2echo", "streamer"}
    assert {w["sidecarHealth"] for w in workloads.values()} == {"healthy"}
    assert {w["sync"] for w in workloads.values()} == {"SYNCED"}
    assert workloads["payment-v2"]["service"] == "payment" and workloads["payment-v2"]["version"] == "v2"
    assert workloads["frontend"]["urls"] == [demo.url]


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap an orphan)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.last
def test_down_leaves_nothing_behind_even_with_a_broken_mesh_file(demo):
    watcher_pid = int((demo.directory / "compose" / ".mesh" / demo.project / "watcher.pid").read_text())
    assert running(watcher_pid)  # `up` started the hot-reload watcher
    (demo.directory / "compose" / "mesh.yaml").write_text("services: [unclosed\n")
    demo.cli("down", "-p", demo.project)
    assert demo.project_resources() == {"containers": [], "networks": [], "volumes": []}
    deadline = time.monotonic() + 5
    while running(watcher_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(watcher_pid), "the watcher outlived `down`"
