"""The data plane on the wire: streamed answers, flat memory, pooled connections, handover.

Real clients in real meshed containers: every call below leaves the caller's app, goes
through its sidecar (outbound) and the server's sidecar (inbound) to the server app.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

PY = "/opt/meshcli/venv/bin/python"  # the sidecar image's Python, with h2 (the streamer runs that image)
MESSAGE = 5 + len(b"message 0")  # a gRPC frame: flag, length, payload

# Reads an HTTP/1.1 answer piece by piece and prints when each line arrived (stdlib only).
CHUNK_CLIENT = """
import http.client, json, sys, time
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
started = time.monotonic()
conn.request("GET", sys.argv[3])
answer = conn.getresponse()
lines = []
while True:
    line = answer.readline()
    if not line:
        break
    lines.append(round((time.monotonic() - started) * 1000, 1))
print(json.dumps({"status": answer.status, "arrivals_ms": lines}))
"""

# Downloads and discards a body; prints its size.
DOWNLOAD = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=120)
conn.request("GET", sys.argv[3])
answer = conn.getresponse()
size = 0
while chunk := answer.read(1 << 20):
    size += len(chunk)
print(json.dumps({"status": answer.status, "size": size}))
"""

# Opens a new connection per request (what urllib does), N times; each answer is read to
# its end (a caller that closes after the head has left before its answer was complete).
NEW_CONNECTIONS = """
import json, sys, urllib.request

def get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        answer.read()
        return answer.status

print(json.dumps([get(sys.argv[1]) for _ in range(int(sys.argv[2]))]))
"""

# TLS started by the app itself, to a server with a certificate the mesh knows nothing of.
TLS_CLIENT = """
import socket, ssl, sys
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname=sys.argv[1]) as tls:
        tls.sendall(b"GET / HTTP/1.1\\r\\nHost: streamer\\r\\n\\r\\n")
        version, data = tls.version(), b""
        while chunk := tls.recv(4096):
            data += chunk
print(version, data.rsplit(b"\\r\\n", 1)[-1].decode())
"""


def run_json(demo, service: str, *command: str, timeout: float = 60):
    result = demo.exec(service, *command, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_grpc_server_stream_arrives_message_by_message(demo, measured):
    answer = run_json(demo, "streamer", PY, "/e2e/h2_stream_client.py", "h2echo", "8080", "/stream")

    assert answer["status"] == "200" and answer["trailers"] == {"grpc-status": "0"}
    # When each of the 10 messages (sent 20 ms apart) was complete at the client.
    done, received = [], 0
    for at, size in answer["arrivals_ms"]:
        received += size
        done += [at] * (received // MESSAGE - len(done))
    assert len(done) == 10
    # Buffered, all ten would arrive together at the end; streamed, they span the ~180 ms they were sent over.
    assert done[-1] - done[0] >= 120, done
    gaps = [b - a for a, b in zip(done, done[1:])]
    assert max(gaps) < 150, gaps
    measured("gRPC server stream through a hop, message arrivals (ms)", done)
    def streamed(entries: list[dict]) -> bool:
        return any(e.get("path") == "/stream" and e["protocol"] == "HTTP/2.0" and e["direction"] == "outbound"
                   for e in entries)

    assert streamed(demo.access_log("streamer-sidecar", until=streamed))


def test_chunked_answer_streams_line_by_line(demo):
    answer = run_json(demo, "frontend", "python3", "-c", CHUNK_CLIENT, "streamer", "8080", "/chunks?n=10&ms=50")

    assert answer["status"] == 200 and len(answer["arrivals_ms"]) == 10
    first, last = answer["arrivals_ms"][0], answer["arrivals_ms"][-1]
    assert last - first >= 300, answer["arrivals_ms"]  # sent over 450 ms: not held back until the end


def memory_rss(container: str) -> int:
    """The container's RSS from its memory cgroup (v1), in bytes."""
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", container], capture_output=True,
                         text=True).stdout.strip()
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.stat", f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.stat"):
        try:
            with open(path) as stat:
                for line in stat:
                    key, value = line.split()
                    if key in ("total_rss", "anon"):
                        return int(value)
        except FileNotFoundError:
            continue
    raise AssertionError(f"no memory cgroup found for {container}")


def test_one_gigabyte_download_keeps_sidecar_memory_flat(demo, measured):
    sidecars = {demo.container(f"{w}-sidecar"): w for w in ("frontend", "streamer")}
    peaks = {name: memory_rss(name) for name in sidecars}
    before = dict(peaks)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name in sidecars:
                peaks[name] = max(peaks[name], memory_rss(name))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        answer = run_json(demo, "frontend", "python3", "-c", DOWNLOAD, "streamer", "8080", f"/bytes?size={1 << 30}",
                          timeout=300)
    finally:
        stop.set()
        sampler.join()
    seconds = time.monotonic() - started

    assert answer == {"status": 200, "size": 1 << 30}
    for name in sidecars:
        assert peaks[name] < 100 * 2 ** 20, (name, peaks[name])
        assert peaks[name] - before[name] < 40 * 2 ** 20, (name, before[name], peaks[name])
    measured("1 GiB download through a hop", f"{seconds:.1f} s, sidecar RSS peaks "
             + ", ".join(f"{sidecars[n]}: {p / 2 ** 20:.0f} MB" for n, p in peaks.items()))


def opened(stats: dict, destination: str = "") -> int:
    """Connections the sidecar opened, to `destination` ('host:port') or to anywhere."""
    return sum(row["opened"] for row in stats["upstream_connections"] if destination in ("", row["destination"]))


def inbound_requests(stats: dict) -> int:
    return sum(row["count"] for row in stats["requests"] if row["reporter"] == "destination")


def test_new_connection_per_request_reuses_the_sidecar_connection(demo, measured):
    client_before = demo.sidecar_stats("frontend")
    server_before = demo.sidecar_stats("orders")

    codes = run_json(demo, "frontend", "python3", "-c", NEW_CONNECTIONS, "http://orders:8080/healthz", "30")

    assert codes == [200] * 30
    client_after = demo.sidecar_stats("frontend")
    server_after = demo.sidecar_stats("orders")
    assert inbound_requests(server_after) - inbound_requests(server_before) >= 30
    # 30 connections from the app, at most one new connection between the sidecars (none if
    # one was pooled already), and at most one from the server's sidecar to its app.
    client_opened = opened(client_after, "orders:8080") - opened(client_before, "orders:8080")
    server_opened = opened(server_after) - opened(server_before)
    assert max(client_opened, server_opened) <= 1, (
        client_opened, server_opened, client_after["upstream_connections"], server_after["upstream_connections"])
    measured("30 new app connections to orders: sidecar connections opened (client, server)",
             f"{client_opened}, {server_opened}")


def test_tls_started_by_the_app_is_handed_to_mitmproxy_and_passes(demo):
    client_before = demo.sidecar_stats("frontend")["handed_over"]
    server_before = demo.sidecar_stats("streamer")["handed_over"]

    result = demo.exec("frontend", "python3", "-c", TLS_CLIENT, "streamer", "8443")

    assert result.returncode == 0, result.stderr
    version, *body = result.stdout.split()
    assert version.startswith("TLSv1") and body == ["tls", "ok"], result.stdout
    assert demo.sidecar_stats("frontend")["handed_over"] == client_before + 1
    assert demo.sidecar_stats("streamer")["handed_over"] == server_before + 1
