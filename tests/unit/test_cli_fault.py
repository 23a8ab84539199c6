"""`meshcli fault`, `fault list`, `fault clear` on a copy of the demo, through main(argv).

The project is not running (status.project_running is stubbed), so nothing waits for
sidecars unless a test says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcli import control_plane, demo as demo_copy, status
from meshcli.cli.main import main

@pytest.fixture
def demo(tmp_path, monkeypatch):
    compose_dir = demo_copy.copy(tmp_path / "demo").compose_dir  # as `meshcli demo` makes it
    monkeypatch.chdir(compose_dir)
    monkeypatch.setattr(status, "project_running", lambda project: False)
    return compose_dir


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def faults_file(demo: Path) -> list[dict]:
    return json.loads((demo / ".mesh" / "meshcli-demo" / "faults.json").read_text())["faults"]


def sidecar_faults(demo: Path) -> list[dict]:
    return json.loads((demo / ".mesh" / "meshcli-demo" / "config" / "sidecar.json").read_text())["faults"]


def test_fault_service_sets_an_http_fault_and_compiles_it(capsys, demo):
    code, _, err = run(capsys, "fault", "payment", "--abort", "503", "--percent", "10", "--for", "30s")

    assert code == 0
    [stored] = faults_file(demo)
    assert stored["http"] == {"abort": {"status": 503, "percent": 10.0}}
    assert stored["until"] == pytest.approx(stored["created"] + 30)
    assert [f["id"] for f in sidecar_faults(demo)] == [stored["id"]]
    assert f"payment: abort 503 on 10% of requests, for 30 s ({stored['id']}) - generation 1" in err


def test_fault_json_and_the_set_spelling(capsys, demo):
    code, out, _ = run(capsys, "fault", "set", "greeter", "--tcp", "latency", "--latency", "100ms",
                       "--jitter", "20ms", "--source", "greeter-client", "--json")

    assert code == 0
    report = json.loads(out)
    assert report["fault"]["tcp"]["kind"] == "latency" and report["fault"]["tcp"]["latencyMs"] == 100
    assert report["fault"]["source"] == "greeter-client"
    assert report["fault"]["timeLeft"] == "until cleared"
    assert report["config"]["generation"] == 1 and report["config"]["sidecars"] is None


def test_fault_waits_for_running_sidecars(capsys, demo, monkeypatch):
    monkeypatch.setattr(status, "project_running", lambda project: True)
    waited = []
    monkeypatch.setattr(control_plane, "wait_synced",
                        lambda loaded, version, timeout, progress: waited.append((version, timeout)) or [object()] * 9)

    code, _, err = run(capsys, "fault", "payment", "--delay", "2s", "--timeout", "12")

    assert code == 0
    assert waited == [(json.loads((demo / ".mesh/meshcli-demo/config/sidecar.json").read_text())["version"], 12.0)]
    assert "generation 1 running on 9/9 sidecars" in err

    waited.clear()
    assert run(capsys, "fault", "payment", "--delay", "3s", "--no-wait")[0] == 0
    assert waited == []


def test_fault_list_shows_time_left(capsys, demo):
    run(capsys, "fault", "payment", "--delay", "2s", "--for", "5m")
    run(capsys, "fault", "orders", "--tcp", "reset")

    code, out, _ = run(capsys, "fault", "list")
    assert code == 0
    assert "payment" in out and "delay 2 s on 100% of requests" in out and "5 min" in out
    assert "orders" in out and "tcp reset on 100% of connections" in out and "until cleared" in out

    code, out, _ = run(capsys, "fault", "list", "--json")
    listed = json.loads(out)["faults"]
    assert [f["service"] for f in listed] == ["payment", "orders"]
    assert 295 < listed[0]["secondsLeft"] <= 300


def test_fault_clear_by_id_by_service_and_all(capsys, demo):
    run(capsys, "fault", "payment", "--delay", "2s")
    run(capsys, "fault", "payment", "--tcp", "blackhole")
    run(capsys, "fault", "orders", "--abort", "reset")
    ids = {f["service"] + "/" + ("tcp" if f["tcp"] else "http"): f["id"] for f in faults_file(demo)}

    code, out, _ = run(capsys, "fault", "clear", "--id", ids["payment/tcp"], "--json")
    assert code == 0 and [f["id"] for f in json.loads(out)["cleared"]] == [ids["payment/tcp"]]

    code, _, err = run(capsys, "fault", "clear", "payment")
    assert code == 0 and "cleared 1 fault: payment delay 2 s" in err
    assert [f["id"] for f in sidecar_faults(demo)] == [ids["orders/http"]]

    code, _, err = run(capsys, "fault", "clear")
    assert code == 0 and faults_file(demo) == [] and sidecar_faults(demo) == []

    code, _, err = run(capsys, "fault", "clear")
    assert code == 0 and "no faults to clear" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["fault", "paymnt", "--delay", "2s"], 'unknown service \'paymnt\' (did you mean "payment"?)'),
    (["fault", "payment", "--abort", "99"], "from 200 to 599"),
    (["fault", "payment", "--delay", "2s", "--percent", "150"], "from 0 to 100"),
    (["fault", "payment", "--tcp", "bandwidth"], "--tcp bandwidth needs --rate"),
    (["fault", "payment", "--delay", "soon"], "--delay:"),
    (["fault", "payment"], "nothing to inject"),
    (["fault", "clear", "--id", "f-none"], "no fault in force has the id 'f-none'"),
    (["fault", "clear", "paymnt"], 'did you mean "payment"?'),
    (["fault", "payment", "--percent", "x"], "Invalid value for '--percent'"),  # a usage error
])
def test_bad_input_exits_2_and_changes_nothing(capsys, demo, argv, message):
    code, _, err = run(capsys, *argv)

    assert code == 2
    assert message in err
    assert not (demo / ".mesh" / "meshcli-demo" / "faults.json").exists()
