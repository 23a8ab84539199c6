"""control_plane: apply() and rejected.json, edit() (validate before writing), wait_synced(),
and the `split` / `route` commands on a copy of the demo (not running: nothing to wait for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcli import control_plane, demo as demo_copy, docker_engine, mesh_edit, sidecar_config, status, workspace as ws
from meshcli.cli.main import main
from meshcli.errors import InputError, InvalidFileError, MeshError
from meshcli.status import WorkloadStatus

REPO = Path(__file__).resolve().parents[2]
COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080"]}
      orders: {image: orders, expose: ["8080"]}
"""
MESH = """
    apiVersion: meshcli/v1
    # the payment service
    services:
      payment:
        loadBalancer: round-robin   # between versions
"""


@pytest.fixture
def project(files, monkeypatch) -> ws.Workspace:
    files.write("compose.yaml", COMPOSE)
    files.write("mesh.yaml", MESH)
    monkeypatch.setattr(status, "project_running", lambda name: False)
    return ws.locate(files.root / "compose.yaml")


def split(service: str, weights: dict):
    return lambda text: mesh_edit.set_split(text, Path("mesh.yaml"), service, weights)


def test_apply_writes_the_config_and_a_rejection_keeps_it(project):
    first = control_plane.apply(project)
    assert (first.generation, first.changed) == (1, True)
    good = (project.config_dir / "sidecar.json").read_text()

    project.mesh_file.write_text("apiVersion: meshcli/v1\nservices:\n  payment:\n    timeout: soon\n")
    with pytest.raises(InvalidFileError):
        control_plane.apply(project)

    assert (project.config_dir / "sidecar.json").read_text() == good
    rejected = json.loads((project.config_dir / "rejected.json").read_text())
    assert rejected["file"] == str(project.mesh_file)
    assert rejected["keeping"] == {"version": first.version, "generation": 1}
    assert len(rejected["errors"]) == 1 and rejected["errors"][0].startswith(f"{project.mesh_file}:4:")
    assert control_plane.rejection(project) == rejected

    project.mesh_file.write_text("apiVersion: meshcli/v1\nservices:\n  payment:\n    timeout: 2s\n")
    second = control_plane.apply(project)
    assert (second.generation, second.changed) == (2, True)
    assert not (project.config_dir / "rejected.json").exists()


def test_edit_validates_writes_applies_and_skips_waiting_when_not_running(project):
    result = control_plane.edit(project, split("payment", {"v1": 90, "v2": 10}))

    assert result.changed and result.synced is None
    assert result.diff.splitlines()[-1] == "+    split: {v1: 90, v2: 10}"
    assert "# between versions" in project.mesh_file.read_text()
    compiled = json.loads((project.config_dir / "sidecar.json").read_text())
    assert compiled["version"] == result.compiled.version
    assert compiled["services"]["payment"]["routes"][-1]["split"] == [{"version": "v1", "weight": 90},
                                                                       {"version": "v2", "weight": 10}]


def test_dry_run_writes_nothing(project):
    before = project.mesh_file.read_text()

    result = control_plane.edit(project, split("payment", {"v2": 100}), dry_run=True)

    assert result.changed and "+    split: {v2: 100}" in result.diff and result.compiled is None
    assert project.mesh_file.read_text() == before
    assert not (project.config_dir / "sidecar.json").exists()


def test_invalid_edit_points_at_the_new_line_and_writes_nothing(project):
    before = project.mesh_file.read_text()

    with pytest.raises(InvalidFileError) as info:
        control_plane.edit(project, split("payment", {"v1": 90, "v3": 10}))

    d = info.value.diagnostics[0]
    assert d.file == project.mesh_file and d.line == 6  # the split line of the new text
    assert project.mesh_file.read_text() == before
    assert not (project.config_dir / "sidecar.json").exists()


def test_edit_creates_the_mesh_file(files, monkeypatch):
    files.write("compose.yaml", COMPOSE)
    monkeypatch.setattr(status, "project_running", lambda name: False)
    workspace = ws.locate(files.root / "compose.yaml")
    assert workspace.mesh_file is None

    result = control_plane.edit(workspace, split("payment", {"v2": 100}))

    assert result.file == files.root / "mesh.yaml"
    assert result.file.read_text() == "apiVersion: meshcli/v1\nservices:\n  payment:\n    split: {v2: 100}\n"
    assert result.compiled.generation == 1


def statuses(*versions):
    return [WorkloadStatus(f"w{i}", "s", "v1", "running", "running" if v != "down" else "missing", "healthy",
                           config_version=None if v in ("down", None) else v) for i, v in enumerate(versions)]


def test_wait_synced_polls_until_every_running_sidecar_runs_the_version(project, monkeypatch):
    rounds = iter([statuses("old", "new", "down"), statuses("new", "new", "down")])
    monkeypatch.setattr(status, "collect", lambda loaded: next(rounds))
    monkeypatch.setattr(control_plane, "POLL_INTERVAL", 0)

    synced = control_plane.wait_synced(ws.load(project), "new", timeout=5)

    assert [s.workload for s in synced] == ["w0", "w1"]


def test_wait_synced_names_the_stale_sidecars_on_timeout(project, monkeypatch):
    monkeypatch.setattr(status, "collect", lambda loaded: statuses("new", "old", None))

    with pytest.raises(MeshError, match=r"2 of 3 sidecars .* w1 \(runs old\), w2 \(not answering\)") as info:
        control_plane.wait_synced(ws.load(project), "new", timeout=0)
    assert info.value.exit_code == 1


def test_project_running_is_false_without_an_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    docker_engine.client.cache_clear()
    try:
        assert status.project_running("shop") is False
    finally:
        docker_engine.client.cache_clear()


# --- the commands, on a copy of the demo --------------------------------------------------

@pytest.fixture
def demo(tmp_path, monkeypatch):
    compose_dir = demo_copy.copy(tmp_path / "demo").compose_dir  # as `meshcli demo` makes it
    monkeypatch.chdir(compose_dir)
    monkeypatch.setattr(status, "project_running", lambda name: False)
    return compose_dir


def test_split_dry_run_prints_the_diff_and_writes_nothing(demo, capsys):
    before = (demo / "mesh.yaml").read_text()

    assert main(["split", "payment", "v1=90", "v2=10", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"--- {demo / 'mesh.yaml'}") and "+    split: {v1: 90, v2: 10}" in out
    assert (demo / "mesh.yaml").read_text() == before


def test_split_json_reports_the_generation(demo, capsys):
    assert main(["split", "payment", "v2=100", "--json"]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["changed"] and data["generation"] == 1 and data["sidecars"] is None
    assert data["version"] == sidecar_config.current_version(demo / ".mesh" / "meshcli-demo" / "config")
    assert "split: {v2: 100}" in (demo / "mesh.yaml").read_text()


def test_split_says_when_the_project_is_not_running(demo, capsys):
    assert main(["split", "payment", "v1=50", "v2=50"]) == 0
    assert "payment: split v1=50 v2=50 - generation 1 written (project not running)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["split", "payment", "v1=90", "v2=20"], "weights sum to 110"),
    (["split", "payment", "v1:90"], 'weight "v1:90" is not NAME=VALUE'),
    (["split", "payment", "v1=90", "v3=10"], 'unknown version "v3"'),
    (["route", "timeout", "payment", "soon"], '"soon" is not a duration'),
    (["route", "timeout", "payment", "1s", "--route", "nope"], 'no route named "nope"'),
    (["route", "retries", "payment"], "--attempts is required"),
    (["route", "circuit-breaker", "payment"], "give at least one option"),
    (["route", "match", "payment", "canary", "--to", "v2"], "a route needs at least one condition"),
    # A typo'd service is named as such, not added to mesh.yaml and then reported at a line that is not there.
    (["split", "paymnt", "v1=100"], 'unknown service "paymnt" (did you mean "payment"?)'),
    (["route", "delete", "paymnt", "canary"], 'unknown service "paymnt"'),
    (["route", "timeout", "paymnt", "1s"], 'unknown service "paymnt"'),
    # `off` and settings together, or another word in its place, are refused for every command alike.
    (["route", "retries", "payment", "off", "--attempts", "3"], "`off` removes the setting"),
    (["route", "circuit-breaker", "payment", "off", "--max-connections", "1"], "`off` removes the setting"),
    (["route", "outlier-detection", "payment", "foo"], 'unexpected argument "foo"'),
    # Choices are checked before editing, with a did-you-mean.
    (["route", "retries", "payment", "--attempts", "2", "--retry-on", "5xx,connect-failur"],
     '--retry-on: "connect-failur" is not one of'),
    (["route", "match", "payment", "c", "--to", "v2", "--method", "GTE"], '--method: "GTE" is not one of'),
])
def test_bad_input_exits_2_and_changes_nothing(demo, capsys, argv, message):
    before = (demo / "mesh.yaml").read_text()

    assert main(argv + ["--dry-run"]) == 2

    assert message in capsys.readouterr().err
    assert (demo / "mesh.yaml").read_text() == before


def test_route_commands_edit_the_file(demo, capsys):
    assert main(["route", "match", "payment", "canary", "--header", "x-canary=true", "--to", "v2"]) == 0
    assert main(["route", "timeout", "payment", "300ms"]) == 0
    assert main(["route", "timeout", "payment", "1s", "--route", "canary"]) == 0
    assert main(["route", "retries", "payment", "--attempts", "3", "--per-try-timeout", "100ms",
                 "--retry-on", "5xx,connect-failure"]) == 0
    assert main(["route", "circuit-breaker", "payment", "--max-connections", "5"]) == 0
    assert main(["route", "outlier-detection", "payment", "--consecutive-5xx", "3"]) == 0
    assert main(["route", "mirror", "payment", "v2", "--percent", "10"]) == 0
    capsys.readouterr()

    assert main(["route", "show", "payment", "--json"]) == 0
    rules = json.loads(capsys.readouterr().out)
    canary, default = rules["routes"]
    assert canary["name"] == "canary" and canary["split"] == [{"version": "v2", "weight": 100}]
    assert canary["timeoutMs"] == 1000 and default["timeoutMs"] == 300
    assert default["retries"]["attempts"] == 3 and default["mirror"]["version"] == "v2"
    assert rules["circuitBreaker"]["maxConnections"] == 5

    for argv in (["route", "delete", "payment", "canary"], ["route", "timeout", "payment", "off"],
                 ["route", "retries", "payment", "off"], ["route", "circuit-breaker", "payment", "off"],
                 ["route", "outlier-detection", "payment", "off"], ["route", "mirror", "payment", "off"]):
        assert main(argv) == 0, argv
    assert (demo / "mesh.yaml").read_text() == (REPO / "compose" / "mesh.yaml").read_text()


def test_route_match_on_query_and_source_and_show_in_words(demo, capsys):
    assert main(["route", "match", "payment", "debug", "--query", "debug=1", "--source", "orders", "--to", "v2"]) == 0
    assert main(["route", "timeout", "payment", "1500ms"]) == 0
    assert main(["fault", "payment", "--abort", "503", "--percent", "10"]) == 0
    capsys.readouterr()

    assert main(["route", "show", "payment", "--json"]) == 0
    [debug, _] = json.loads(capsys.readouterr().out)["routes"]
    assert debug["match"] == [{"query": [{"name": "debug", "kind": "exact", "value": "1"}], "source": "orders"}]
    assert main(["route", "show", "payment"]) == 0
    shown = capsys.readouterr().out
    assert "timeout 1.5 s" in shown and "runtime fault f-" in shown and "abort 503 on 10% of requests" in shown

    assert main(["route", "match", "payment", "x", "--source", "ordrs", "--to", "v2"]) == 2
    assert 'did you mean "orders"' in " ".join(capsys.readouterr().err.split())


def test_apply_reports_no_service_in_json(demo, capsys):
    assert main(["apply", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["service"] is None and data["change"] == "applied"


def test_edit_refuses_an_unknown_service_before_transforming(project):
    def transform(text):
        raise AssertionError("not called")

    with pytest.raises(InputError, match='unknown service "paymnt"'):
        control_plane.edit(project, transform, dry_run=True, service="paymnt")
    result = control_plane.edit(project, lambda text: text, dry_run=True, service="orders")  # compose-only: fine
    assert not result.changed


def _set_timeouts(located, service: str, done) -> None:
    for ms in range(100, 1300, 100):
        control_plane.edit(located, lambda text, ms=ms: mesh_edit.set_timeout(text, located.mesh_file, service,
                                                                             f"{ms}ms"), wait=False)
    done.put(service)


def test_concurrent_edits_of_mesh_yaml_lose_no_change(demo):
    # Commands (or parallel test workers) editing mesh.yaml at once: each read-modify-write
    # is one step, so every service ends with its own last timeout.
    import multiprocessing

    services = ["frontend", "orders", "payment", "greeter"]
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    located = ws.locate(demo / "compose.yaml")
    workers = [context.Process(target=_set_timeouts, args=(located, s, done)) for s in services]  # forked
    for worker in workers:
        worker.start()
    finished = sorted(done.get(timeout=60) for _ in services)
    for worker in workers:
        worker.join(30)

    assert finished == sorted(services)
    rules = {s: control_plane.effective_rules(ws.locate(demo / "compose.yaml"), s) for s in services}
    assert {s: r["routes"][-1]["timeoutMs"] for s, r in rules.items()} == {s: 1200 for s in services}
