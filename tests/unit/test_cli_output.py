"""The output contract, pinned by golden files: every command's `--json` output on success and
on a failure, and the human output of `status`, `route show` and `fault list`; and every
command, with --json, where it cannot work prints exactly one JSON error object.

The commands run through main(argv) on a copy of the demo, with time, fault ids and docker
stubbed. Regenerate the files with: MESHCLI_UPDATE_GOLDEN=1 pytest tests/unit/test_cli_output.py
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import types
from pathlib import Path

import pytest

from meshcli import (control_plane, demo as demo_copy, fault_layer, lifecycle, prometheus, status, views, watcher,
                     workspace)
from meshcli.cli import demo as demo_command, fault as fault_command, lifecycle as lifecycle_command
from meshcli.cli.main import main
from meshcli.errors import DockerError
from meshcli.status import WorkloadStatus

GOLDEN = Path(__file__).parent / "golden" / "cli"
NOW = 1_700_000_000.0
BAD_MESH = "apiVersion: meshcli/v1\nservices:\n  paymnt: {}\n  payment:\n    split: {v1: 50}\n"


@pytest.fixture
def demo(tmp_path, monkeypatch) -> Path:
    """A copy of the demo, not running, at a fixed time; `<tmp>` in the golden files."""
    monkeypatch.delenv("FRONTEND_PORT", raising=False)
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    compose_dir = demo_copy.copy(tmp_path / "demo").compose_dir
    monkeypatch.chdir(compose_dir)
    frozen = types.SimpleNamespace(time=lambda: NOW, monotonic=lambda: NOW, sleep=time.sleep)
    for module in (control_plane, fault_layer, lifecycle, watcher, views, demo_command, fault_command,
                   lifecycle_command):
        monkeypatch.setattr(module, "time", frozen)
    monkeypatch.setattr(fault_layer, "new_id", lambda taken, prefix="f-": prefix + "0001")
    monkeypatch.setattr(status, "project_running", lambda project: False)
    monkeypatch.setattr(prometheus, "url", lambda project: None)
    monkeypatch.setattr(status, "collect", lambda loaded: STATUSES)
    monkeypatch.setattr(lifecycle, "up", fake_up)
    monkeypatch.setattr(lifecycle, "down", lambda located, progress, volumes=False: located.project.name)
    return compose_dir


STATUSES = [
    WorkloadStatus("frontend", "frontend", "v1", app="running", sidecar="running", sidecar_health="healthy",
                   config_version="c0ffee", config_generation=2, sync="SYNCED", urls=["http://localhost:8080/"],
                   mtls="PERMISSIVE", certificate_expires="2026-12-02T10:51:45+00:00"),
    WorkloadStatus("payment-v2", "payment", "v2", app="running", sidecar="restarting", sidecar_health="unknown",
                   sidecar_restarts=3, sync="UNKNOWN", mtls="STRICT"),
]


def fake_up(located, progress, wait_timeout=180, build=False, wait=True, prometheus_port=None):
    return lifecycle.UpResult(workspace.load(located), located.rendered_file, "meshcli-sidecar:test", STATUSES[:1])


def run(capsys, root: Path, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.replace(str(root), "<tmp>"), captured.err.replace(str(root), "<tmp>")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MESHCLI_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden file {path.name}: run with MESHCLI_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


# Setups: what a case needs before its command runs.

def nothing(demo: Path, monkeypatch) -> None:
    pass


def with_fault(demo: Path, monkeypatch) -> None:
    assert main(["fault", "payment", "--abort", "503", "--percent", "10", "--for", "30s"]) == 0


def with_route(demo: Path, monkeypatch) -> None:
    assert main(["route", "match", "payment", "testers", "--header", "x-canary=true", "--to", "v2"]) == 0


def with_bad_mesh(demo: Path, monkeypatch) -> None:
    (demo / "mesh.yaml").write_text(BAD_MESH)


def not_empty(demo: Path, monkeypatch) -> None:
    (demo.parent.parent / "elsewhere").mkdir()
    (demo.parent.parent / "elsewhere" / "notes.txt").write_text("mine\n")


ISTIO_RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment}
spec:
  hosts: [payment.default.svc.cluster.local]
  http:
  - name: testers
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: payment, subset: v2}}]
  - route:
    - {destination: {host: payment, subset: v1}, weight: 90}
    - {destination: {host: payment, subset: v2}, weight: 10}
    retries: {attempts: 2, retryOn: "5xx,refused-stream"}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec: {}
"""


def with_istio_rules(demo: Path, monkeypatch) -> None:
    (demo / "payment-rules.yaml").write_text(ISTIO_RULES)


def no_engine(demo: Path, monkeypatch) -> None:
    def up(*args, **kwargs):
        raise DockerError("cannot reach the Docker engine", hint="start dockerd")
    monkeypatch.setattr(lifecycle, "up", up)


def _hop(reporter: str, source: str, destination: str, count: int, code: str = "200") -> dict:
    return {"reporter": reporter, "source_workload": source, "destination_workload": destination,
            "request_protocol": "http", "response_code": code, "connection_security_policy": "none", "count": count}


def with_traffic(demo: Path, monkeypatch) -> None:
    """Sidecar counters as /stats?window= gives them: frontend -> orders -> payment-v1, and greeter's TCP."""
    buckets = [[1.0, 0], [5.0, 6], [10.0, 10], [float("inf"), 10]]
    readings = {
        "frontend": views.Reading("frontend", {
            "requests": [_hop("destination", "unknown", "frontend", 30), _hop("source", "frontend", "orders", 30)],
            "durations": [{"reporter": "destination", "buckets": buckets, "count": 10, "sum_ms": 40.0}],
            "paths": [{"source": "unknown", "method": "GET", "path": "/", "count": 30, "errors": 0,
                       "sum_ms": 120.0, "max_ms": 9.5}]},
            {"requests": [_hop("destination", "unknown", "frontend", 20), _hop("source", "frontend", "orders", 20)]},
            60.0),
        "orders": views.Reading("orders", {
            "requests": [_hop("destination", "frontend", "orders", 30), _hop("source", "orders", "payment-v1", 29),
                         _hop("source", "orders", "payment-v1", 1, "503")]}, {"requests": []}, 60.0),
        "greeter-client": views.Reading("greeter-client", {"tcp": [
            {"reporter": "source", "source_workload": "greeter-client", "destination_workload": "greeter",
             "connection_security_policy": "none", "metric": "istio_tcp_connections_opened_total", "value": 6},
            {"reporter": "source", "source_workload": "greeter-client", "destination_workload": "greeter",
             "connection_security_policy": "none", "metric": "istio_tcp_sent_bytes_total", "value": 120}]},
            {"tcp": []}, 60.0),
    }
    monkeypatch.setattr(views, "read", lambda loaded, window_s=None, workloads=None: [
        r for name, r in sorted(readings.items()) if workloads is None or name in workloads])


def ctrl_c(demo: Path, monkeypatch) -> None:
    def collect(loaded):
        raise KeyboardInterrupt
    monkeypatch.setattr(status, "collect", collect)


# name -> (setup, argv, exit code): a success and a failure of every command's --json output.
JSON_CASES = {
    "demo": (nothing, ["demo", "../../copy", "--no-up", "--json"], 0),
    "demo-error": (not_empty, ["demo", "../../elsewhere", "--no-up", "--json"], 2),
    "init": (nothing, ["init", "--stdout", "--json"], 0),
    "init-error": (nothing, ["init", "--json"], 2),
    "render": (nothing, ["render", "--json"], 0),
    "render-error": (nothing, ["render", "-o", "-", "--json"], 2),
    "validate": (nothing, ["validate", "--json"], 0),
    "validate-error": (with_bad_mesh, ["validate", "--json"], 2),
    "schema-error": (nothing, ["schema", "--bogus", "--json"], 2),
    "up": (nothing, ["up", "--json"], 0),
    "up-error": (no_engine, ["up", "--json"], 1),
    "down": (nothing, ["down", "-v", "--json"], 0),
    "down-error": (nothing, ["down", "-v", "--keep-volumes", "--json"], 2),
    "status": (with_fault, ["status", "--json"], 1),
    "status-error": (nothing, ["status", "-f", "missing.yaml", "--json"], 2),
    "status-interrupted": (ctrl_c, ["status", "--json"], 130),
    "fault-set": (nothing, ["fault", "payment", "--delay", "2s", "--percent", "50", "--json"], 0),
    "fault-set-error": (nothing, ["fault", "paymnt", "--delay", "2s", "--json"], 2),
    "fault-list": (with_fault, ["fault", "list", "--json"], 0),
    "fault-list-error": (nothing, ["fault", "list", "-f", "missing.yaml", "--json"], 2),
    "fault-clear": (with_fault, ["fault", "clear", "payment", "--json"], 0),
    "fault-clear-error": (nothing, ["fault", "clear", "--id", "f-none", "--json"], 2),
    "split": (nothing, ["split", "payment", "v1=90", "v2=10", "--json"], 0),
    "split-error": (nothing, ["split", "payment", "v1=50", "--json"], 2),
    "route-timeout": (nothing, ["route", "timeout", "payment", "300ms", "--json"], 0),
    "route-timeout-error": (nothing, ["route", "timeout", "payment", "soon", "--json"], 2),
    "route-retries": (nothing, ["route", "retries", "payment", "--attempts", "3", "--per-try-timeout", "500ms",
                                "--json"], 0),
    "route-retries-error": (nothing, ["route", "retries", "payment", "off", "--attempts", "3", "--json"], 2),
    "route-circuit-breaker": (nothing, ["route", "circuit-breaker", "payment", "--max-connections", "10",
                                        "--json"], 0),
    "route-circuit-breaker-error": (nothing, ["route", "circuit-breaker", "payment", "--json"], 2),
    "route-outlier-detection": (nothing, ["route", "outlier-detection", "payment", "--consecutive-5xx", "3",
                                          "--json"], 0),
    "route-outlier-detection-error": (nothing, ["route", "outlier-detection", "payment", "--base-ejection-time",
                                                "long", "--json"], 2),
    "route-mirror": (nothing, ["route", "mirror", "payment", "v2", "--percent", "10", "--json"], 0),
    "route-mirror-error": (nothing, ["route", "mirror", "payment", "v9", "--json"], 2),
    "route-match": (nothing, ["route", "match", "payment", "testers", "--header", "x-canary=true", "--to", "v2",
                              "--json"], 0),
    "route-match-error": (nothing, ["route", "match", "payment", "testers", "--to", "v9", "--json"], 2),
    "route-delete": (with_route, ["route", "delete", "payment", "testers", "--json"], 0),
    "route-delete-error": (nothing, ["route", "delete", "payment", "nosuch", "--json"], 2),
    "route-show": (with_fault, ["route", "show", "payment", "--json"], 0),
    "route-show-error": (nothing, ["route", "show", "paymnt", "--json"], 2),
    "apply": (nothing, ["apply", "--json"], 0),
    "apply-error": (with_bad_mesh, ["apply", "--json"], 2),
    "watch-error": (nothing, ["watch", "-f", "missing.yaml", "--json"], 2),
    "export-istio": (nothing, ["export", "istio", "--namespace", "shop", "--json"], 0),
    "export-istio-error": (nothing, ["export", "istio", "--namespace", "Shop_1", "--json"], 2),
    "import-istio": (with_istio_rules, ["import", "istio", "payment-rules.yaml", "--merge", "--json"], 0),
    "import-istio-error": (with_istio_rules, ["import", "istio", "payment-rules.yaml", "--json"], 2),
    "stat": (with_traffic, ["stat", "--json"], 0),
    "stat-error": (nothing, ["stat", "--window", "1h", "--json"], 2),
    "graph": (with_traffic, ["graph", "--json"], 0),
    "graph-error": (nothing, ["graph", "--format", "png", "--json"], 2),
    "top": (with_traffic, ["top", "frontend", "--interval", "0.5", "--json"], 0),
    "top-error": (nothing, ["top", "--interval", "0.1", "--json"], 2),
}

HUMAN_CASES = {
    "status": (with_fault, ["status"], 1),
    "route-show": (with_fault, ["route", "show", "payment"], 0),
    "fault-list": (with_fault, ["fault", "list"], 0),
    "import-istio": (with_istio_rules, ["import", "istio", "payment-rules.yaml", "--merge"], 0),
    "stat": (with_traffic, ["stat"], 0),
    "graph": (with_traffic, ["graph"], 0),
    "graph-dot": (with_traffic, ["graph", "--format", "dot"], 0),
    "graph-mermaid": (with_traffic, ["graph", "--format", "mermaid"], 0),
}


def run_case(case: tuple, demo: Path, capsys, monkeypatch) -> tuple[str, str]:
    """Set the case up, run its command, check its exit code; its stdout and stderr."""
    setup, argv, expected = case
    setup(demo, monkeypatch)
    capsys.readouterr()
    code, out, err = run(capsys, demo.parent.parent, argv)
    assert code == expected
    return out, err


@pytest.mark.parametrize("name", JSON_CASES)
def test_json_output_matches_its_golden_file(name, demo, capsys, monkeypatch):
    out, _ = run_case(JSON_CASES[name], demo, capsys, monkeypatch)
    json.loads(out)  # one JSON document
    check_golden(f"{name}.json", out)


@pytest.mark.parametrize("name", HUMAN_CASES)
def test_human_output_matches_its_golden_file(name, demo, capsys, monkeypatch):
    out, err = run_case(HUMAN_CASES[name], demo, capsys, monkeypatch)
    check_golden(f"{name}.txt", f"--- stdout\n{out}--- stderr\n{err}")


def test_watch_json_prints_one_object_per_event(demo, capsys):
    """The real watcher in the foreground: started, an applied save, a rejected one, stopped."""
    log = demo / ".mesh" / "meshcli-demo" / watcher.LOG_FILE
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def events() -> list[str]:
        found = [json.loads(line)["event"] for line in log.read_text().splitlines()] if log.is_file() else []
        return [event for event in found if event != "certificates"]

    def until(count: int) -> None:
        deadline = time.monotonic() + 20
        while len(events()) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def edit() -> None:
        until(1)
        text = (demo / "mesh.yaml").read_text()
        (demo / "mesh.yaml").write_text(text.replace("loadBalancer: round-robin", "loadBalancer: random", 1))
        until(2)
        (demo / "mesh.yaml").write_text(BAD_MESH)
        until(3)
        os.kill(os.getpid(), signal.SIGTERM)

    editor = threading.Thread(target=edit, daemon=True)
    editor.start()
    try:
        code, out, _ = run(capsys, demo.parent.parent, ["watch", "--json"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    editor.join(5)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    # The workloads' first certificates (serials and times vary: not in the golden file).
    [certificates] = [r for r in records if r["event"] == "certificates"]
    assert [(i["workload"], i["reason"]) for i in certificates["issued"]] == [
        (w, "new") for w in ("frontend", "greeter", "greeter-client", "orders", "payment-v1", "payment-v2")]
    out = "".join(line + "\n" for line, r in zip(out.splitlines(), records) if r["event"] != "certificates")
    assert [r["event"] for r in records if r["event"] != "certificates"] == ["started", "applied", "rejected",
                                                                              "stopped"]
    pid = str(os.getpid())
    check_golden("watch.jsonl", out.replace(f'"pid": {pid}', '"pid": 1'))


COMMANDS = [
    ["demo", "."], ["init"], ["render"], ["validate"], ["schema", "--bogus"], ["up"], ["down"], ["status"],
    ["fault", "payment", "--delay", "1s"], ["fault", "list"], ["fault", "clear"], ["split", "payment", "v1=50"],
    ["route", "timeout", "payment", "1s"], ["route", "retries", "payment", "--attempts", "1"],
    ["route", "circuit-breaker", "payment", "--max-connections", "1"],
    ["route", "outlier-detection", "payment", "--consecutive-5xx", "1"], ["route", "mirror", "payment", "v2"],
    ["route", "match", "payment", "r", "--to", "v2"], ["route", "delete", "payment", "r"],
    ["route", "show", "payment"], ["apply"], ["watch"], ["export", "istio"], ["import", "istio", "notes.txt"],
    ["stat"], ["graph"], ["top"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv[:2]) for argv in COMMANDS])
def test_every_command_fails_with_one_json_error_object_where_there_is_no_compose_file(argv, tmp_path, capsys,
                                                                                       monkeypatch):
    (tmp_path / "notes.txt").write_text("not a demo\n")  # `demo .` refuses a directory with files of its own
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON document, nothing else
    assert code == 2
    assert report["ok"] is False and set(report) == {"ok", "error", "diagnostics"}
    assert set(report["error"]) == {"code", "message", "file", "line", "column", "hint"}
    assert report["error"]["code"] == "usage" and report["error"]["message"]


def test_top_refreshes_its_table_until_ctrl_c(demo, capsys, monkeypatch):
    with_traffic(demo, monkeypatch)
    naps = []
    real_sleep = time.sleep

    def sleep(seconds):
        if seconds != 1:  # someone else's wait (the project loader's)
            return real_sleep(seconds)
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    code, out, _ = run(capsys, demo.parent.parent, ["top", "--interval", "1"])

    assert code == 130 and naps == [1.0, 1.0, 1.0]
    assert "busiest paths" in out and "frontend" in out
