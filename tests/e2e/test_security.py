"""Acceptance of zero trust (issue 12) on the demo: mTLS STRICT, workload identities,
authorization policies, a capture of the wire, certificate renewal and CA rotation under load.

One module-wide mesh file for the shared demo: every service STRICT (the mesh-wide mode),
and payment guarded by policies. Callers of payment are the demo's own apps (their sidecars
originate mTLS with their identity), containers outside the mesh on the demo's network, and
the host through frontend's published port.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshcli import ca

HERE = Path(__file__).parent
SAMPLE_IMAGE = "meshcli-sample-app:dev"
PAYMENT_POLICIES = """\
    authorization:
      - name: no-debug
        action: DENY
        rules:
          - path: {prefix: /debug}
      - name: no-delete-from-frontend
        action: DENY
        rules:
          - source: frontend
            method: DELETE
      - name: only-orders
        action: ALLOW
        rules:
          - source: orders
      - name: frontend-read
        action: ALLOW
        rules:
          - source: frontend
            method: [GET, HEAD]
            path: {suffix: /status}
          - source: frontend
            path: {exact: /healthz}
"""
# (caller workload, method, path): each sent for real, and asked of `meshcli authz check`.
CASES = [
    ("orders", "GET", "/"), ("orders", "POST", "/pay"), ("orders", "GET", "/debug/x"),
    ("frontend", "GET", "/status"), ("frontend", "GET", "/a/status"), ("frontend", "POST", "/status"),
    ("frontend", "GET", "/healthz"), ("frontend", "DELETE", "/healthz"), ("frontend", "GET", "/other"),
    ("frontend", "HEAD", "/x/status"), ("greeter-client", "GET", "/"), ("greeter-client", "GET", "/debug"),
]
CALL = ("import json, sys, urllib.request as u, urllib.error as e\n"
        "r = u.Request('http://payment:8080' + sys.argv[2], method=sys.argv[1])\n"
        "try:\n    a = u.urlopen(r, timeout=10); s, b = a.status, a.read()\n"
        "except e.HTTPError as x:\n    s, b = x.code, x.read()\n"
        "print(json.dumps({'status': s, 'body': b.decode(errors='replace')}))\n")


def mesh_text(original: str, extra: str = "") -> str:
    assert original.rstrip().splitlines()[-1].startswith("    "), "payment must be the last service"
    assert "  payment:\n" in original
    return original.rstrip("\n") + "\n    mtls: STRICT\n" + PAYMENT_POLICIES + "mtls:\n  mode: STRICT\n" + extra


ORIGINAL: dict[str, str] = {}  # the demo's mesh file, put back after this module


@pytest.fixture(scope="module")
def strict(demo):
    original = ORIGINAL["mesh"] = demo.mesh_file.read_text()
    demo.mesh_file.write_text(mesh_text(original))
    demo.cli("apply", "-p", demo.project)
    assert {w["sync"] for w in demo.wait_synced()["workloads"]} == {"SYNCED"}
    yield demo
    demo.mesh_file.write_text(original)
    demo.cli("apply", "-p", demo.project)
    demo.wait_synced()


def network(demo) -> str:
    return next(iter(demo.inspect("payment-v1-pod")["NetworkSettings"]["Networks"]))


def outside(demo, *command: str, volumes: tuple[str, ...] = (), timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command in a container on the demo's network, outside the mesh (no sidecar)."""
    mounts = [arg for volume in volumes for arg in ("-v", volume)]
    return subprocess.run(["docker", "run", "--rm", "--network", network(demo), *mounts, SAMPLE_IMAGE, *command],
                          capture_output=True, text=True, timeout=timeout)


def call_as(demo, workload: str, method: str, path: str) -> dict:
    """payment called by `workload`'s app: through its sidecar, so with its identity."""
    result = demo.exec(workload, "python3", "-c", CALL, method, path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def get(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_strict_refuses_plaintext_from_outside_the_mesh_but_serves_the_mesh_and_published_ports(strict):
    # Reset as soon as the sidecar sees it: in connect() already, or at the first read.
    probe = ("import socket\ntry:\n    s = socket.create_connection(('payment-v1', 8080), timeout=5)\n"
             "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: payment\\r\\n\\r\\n')\n"
             "    print(repr(s.recv(100)))\nexcept OSError as exc:\n    print(type(exc).__name__)\n")
    refused = outside(strict, "python3", "-c", probe)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.strip() in ("ConnectionResetError", "b''"), refused.stdout  # no HTTP answer
    # frontend is STRICT too: the host reaches it on its published port (from the network's gateway)...
    with urllib.request.urlopen(strict.url, timeout=10) as response:
        answer = json.loads(response.read())
    # ... and frontend -> orders -> payment keeps working, over mTLS.
    assert answer["calls"][0]["calls"][0]["service"] == "payment"
    log = strict.logs("payment-v1-sidecar", tail=400) + strict.logs("payment-v2-sidecar", tail=400)
    assert "refused (STRICT)" in log  # the access log says why


def test_a_certificate_of_another_ca_is_refused_and_a_mesh_identity_other_than_orders_is_denied(strict, tmp_path):
    identities = strict.directory / "compose" / ".mesh" / strict.project / "identities"
    # orders' identity, but signed by another CA: payment's sidecar must refuse the handshake.
    foreign = ca.new_root("elsewhere")
    key, cert = ca.issue(foreign, f"spiffe://cluster.local/ns/{strict.project}/sa/orders", ["orders"],
                         datetime.timedelta(hours=1))
    (tmp_path / "identity.pem").write_bytes(ca.identity_pem(key, cert))
    (tmp_path / "roots.pem").write_bytes((identities / "orders" / "roots.pem").read_bytes())
    tmp_path.chmod(0o755)
    for name in ("identity.pem", "roots.pem"):
        (tmp_path / name).chmod(0o644)
    # The port preamble (8080) and a request, then time for the server's verdict: in TLS 1.3
    # the client's certificate is checked after the client finished its side of the handshake.
    s_client = outside(strict, "sh", "-c", "(printf '\\037\\220GET / HTTP/1.1\\r\\nHost: payment\\r\\n\\r\\n'; "
                       "sleep 3) | openssl s_client -connect payment-v1:15008 -tls1_3 -cert /id/identity.pem "
                       "-key /id/identity.pem -CAfile /id/roots.pem 2>&1; echo exit=$?",
                       volumes=(f"{tmp_path}:/id:ro",))
    # The client trusted the server (so that is not the cause), and the server ended the handshake.
    assert "Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout
    assert "exit=1" in s_client.stdout and "HTTP/" not in s_client.stdout, s_client.stdout

    # A real mesh certificate, greeter-client's: the handshake works, payment's policies deny it.
    client = outside(strict, "python3", "/e2e/mtls_client.py", "/id", "payment-v1", "8080", "/",
                     volumes=(f"{identities / 'greeter-client'}:/id:ro", f"{HERE}:/e2e:ro"))
    assert client.returncode == 0, client.stderr
    answer = json.loads(client.stdout)
    assert (answer["status"], answer["tls"]) == (403, "TLSv1.3")
    assert "no ALLOW policy matched" in answer["body"]


def test_authz_check_agrees_with_the_data_plane_and_denials_never_reach_the_app(strict):
    marker = f"/debug/never-{time.monotonic_ns()}"
    before = {w: strict.logs(w, tail=2000).count(marker) for w in ("payment-v1", "payment-v2")}
    denied = call_as(strict, "orders", "GET", marker)
    assert denied["status"] == 403 and 'policy "no-debug" rule 1' in denied["body"]
    for source, method, path in CASES:
        sent = call_as(strict, source, method, path)
        check = strict.cli("authz", "check", "-p", strict.project, source, "payment", method, path, "--json",
                           check=False)
        decision = json.loads(check.stdout)
        assert check.returncode == (0 if decision["allowed"] else 1)
        assert (sent["status"] == 403) == (not decision["allowed"]), (source, method, path, sent, decision)
        if not decision["allowed"] and decision["policy"]:
            assert f'policy "{decision["policy"]}" rule {decision["rule"]}' in sent["body"]
    # The app behind the sidecars never saw the denied request (its own request log).
    assert {w: strict.logs(w, tail=2000).count(marker) for w in ("payment-v1", "payment-v2")} == before
    # Counted, and logged with the caller's SPIFFE ID.
    denials = sum(row["count"] for w in ("payment-v1", "payment-v2")
                  for row in strict.sidecar_stats(w)["authz_denied"] if row["policy"] == "no-debug")
    assert denials >= 1
    log = [json.loads(line) for w in ("payment-v1", "payment-v2")
           for line in strict.logs(f"{w}-sidecar", tail=400).splitlines() if line.startswith("{")]
    [entry] = [e for e in log if e.get("path") == marker]
    assert entry["status"] == 403 and entry["response_flags"] == "RBAC"
    assert entry["source_principal"] == f"spiffe://cluster.local/ns/{strict.project}/sa/orders"
    assert entry["connection_security_policy"] == "mutual_tls"


def test_the_wire_between_pods_carries_tls_1_3_and_no_plaintext(strict):
    sniffer = subprocess.Popen(
        ["docker", "run", "--rm", "--network", f"container:{strict.container('greeter-pod')}", "--cap-add",
         "NET_RAW", "-v", f"{HERE}:/e2e:ro", SAMPLE_IMAGE, "python3", "-u", "/e2e/sniffer.py", "eth0", "6",
         "HELLO from greeter", "echo: mesh", "HTTP/1.1"], stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(sniffer.stdout.readline())["listening"] == "eth0"
        # Raw TCP, a new mTLS connection per app connection: greeter-client -> greeter (server speaks first).
        for _ in range(3):
            said = strict.exec("greeter-client", "python3", "/app/tcp_client.py", "greeter", "9000", "--send", "mesh")
            assert said.returncode == 0 and "HELLO from greeter" in said.stdout, said.stderr
        out, _ = sniffer.communicate(timeout=30)
    finally:
        sniffer.kill()
    report = json.loads(out.splitlines()[-1])
    assert 15008 in report["ports"] and 9000 not in report["ports"], report
    assert report["server_hellos"] and set(report["server_hellos"]) == {"0x304"}, report  # TLS 1.3
    assert report["plaintext"] == [], report


def test_policies_hot_reload_and_an_invalid_one_is_never_applied(strict):
    """Hand edits of mesh.yaml, applied by the watcher `meshcli up` started."""
    good = strict.mesh_file.read_text()
    try:
        strict.mesh_file.write_text(good.replace("path: {prefix: /debug}", "path: {prefix: /dbg}"))
        deadline = time.monotonic() + 20
        while call_as(strict, "orders", "GET", "/dbg/1")["status"] != 403 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert call_as(strict, "orders", "GET", "/dbg/1")["status"] == 403
        assert call_as(strict, "orders", "GET", "/debug/1")["status"] == 200
        strict.mesh_file.write_text(good.replace("path: {prefix: /debug}", "path: {prefix: /dbg}")
                                    .replace("- source: orders", "- source: ordrs"))
        deadline = time.monotonic() + 20
        while not strict.status().get("rejected") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any("ordrs" in error for error in strict.status()["rejected"]["errors"])
        assert call_as(strict, "orders", "GET", "/pay")["status"] == 200  # the last good policies stay
        assert call_as(strict, "orders", "GET", "/dbg/1")["status"] == 403
    finally:
        strict.mesh_file.write_text(good)
        strict.cli("apply", "-p", strict.project)
        strict.wait_synced()


def keep_calling(url: str, stop: threading.Event, results: list[int]) -> None:
    while not stop.is_set():
        results.append(get(url))
        time.sleep(0.02)


def restarts(demo) -> dict[str, tuple]:
    names = [f"{w}{part}" for w in ("frontend", "orders", "payment-v1", "payment-v2") for part in ("", "-sidecar")]
    return {n: (demo.inspect(n)["RestartCount"], demo.inspect(n)["State"]["StartedAt"]) for n in names}


def serials(demo) -> dict[str, str]:
    data = json.loads(demo.cli("certs", "-p", demo.project, "--json").stdout)
    return {row["workload"]: row["serial"] for row in data["workloads"]}


def all_serving(demo) -> bool:
    data = json.loads(demo.cli("certs", "-p", demo.project, "--json").stdout)
    return all(row["serving"] for row in data["workloads"])


def test_certificates_renew_and_the_ca_rotates_under_load_without_a_failed_request(strict):
    """One stream of requests (host -> frontend -> orders -> payment, all STRICT) across a
    forced renewal (30 s certificates) and a `meshcli ca rotate`."""
    strict.mesh_file.write_text(mesh_text(ORIGINAL["mesh"], "  certificateLifetime: 30s\n"))
    strict.cli("apply", "-p", strict.project)
    before_restarts = restarts(strict)
    first = serials(strict)
    stop, results = threading.Event(), []
    caller = threading.Thread(target=keep_calling, args=(strict.url, stop, results), daemon=True)
    caller.start()
    try:
        deadline = time.monotonic() + 60  # the watcher reissues at once (shorter lifetime), then at 15 s
        renewed = first
        while time.monotonic() < deadline:
            renewed = serials(strict)
            if all(renewed[w] != first[w] for w in first) and all_serving(strict):
                break
            time.sleep(1)
        assert all(renewed[w] != first[w] for w in first), (first, renewed)
        time.sleep(16)  # one more renewal, at half the lifetime, while traffic flows
        second = serials(strict)
        assert all(second[w] != renewed[w] for w in renewed), (renewed, second)
        old_root = json.loads(strict.cli("ca", "show", "-p", strict.project, "--json").stdout)["root"]
        rotated = json.loads(strict.cli("ca", "rotate", "-p", strict.project, "--json", timeout=180).stdout)
        assert rotated["root"]["fingerprint"] != old_root["fingerprint"] and rotated["previousRoot"] is None
        time.sleep(2)
    finally:
        stop.set()
        caller.join(15)
    assert len(results) > 50 and set(results) == {200}, f"{len(results)} requests: {sorted(set(results))}"
    assert restarts(strict) == before_restarts
    certs = json.loads(strict.cli("certs", "-p", strict.project, "--json").stdout)["workloads"]
    assert all(row["serving"] for row in certs), certs

