"""meshcli.testing.Mesh on a real workspace on disk, with the engine stubbed: what a rule
writes (faults.json, mesh.yaml, sidecar.json), that it waits for the sidecars, and that
every rule is undone exactly, also when the test inside fails."""

from __future__ import annotations

import json
import time

import pytest

from meshcli import control_plane, fault_layer, lifecycle, rule_layer, status, workspace
from meshcli.errors import InputError, InvalidFileError, MeshError
from meshcli.status import WorkloadStatus
from meshcli.testing import Mesh, ServiceStats
from meshcli.workspace import locate

workspace_module = workspace

COMPOSE = """\
name: shop
services:
  frontend:
    image: app
    ports: ["8080:8080"]
  orders:
    image: app
  payment-v1:
    image: app
  payment-v2:
    image: app
"""

MESH = """\
apiVersion: meshcli/v1
services:
  # the money path
  payment:
    versions:
      v1: payment-v1
      v2: payment-v2
    loadBalancer: round-robin   # between versions
"""


def workload(name: str, service: str, version: str = "v1", **changes) -> WorkloadStatus:
    values = {"app": "running", "sidecar": "running", "sidecar_health": "healthy", "sync": "SYNCED", **changes}
    return WorkloadStatus(name, service, version, **values)


RUNNING = [workload("frontend", "frontend", urls=["http://localhost:8080/"]), workload("orders", "orders"),
           workload("payment-v1", "payment"), workload("payment-v2", "payment", "v2")]


class Engine:
    """Stands in for Docker: statuses, sidecar stats, and a record of every sync waited for."""

    def __init__(self) -> None:
        self.statuses = list(RUNNING)
        self.stats: dict[str, dict] = {}
        self.synced: list[str] = []
        self.ups: list[dict] = []
        self.downs: list[str] = []


@pytest.fixture
def engine(monkeypatch) -> Engine:
    fake = Engine()
    monkeypatch.setattr(status, "collect", lambda loaded: list(fake.statuses))
    monkeypatch.setattr(status, "sidecar_stats", lambda loaded, name: fake.stats.get(name))
    monkeypatch.setattr(status, "project_running", lambda project: True)

    def wait_synced(loaded, version, timeout=30.0, progress=None):
        assert version == json.loads((loaded.workspace.config_dir / "sidecar.json").read_text())["version"]
        fake.synced.append(version)
        return []

    monkeypatch.setattr(control_plane, "wait_synced", wait_synced)
    return fake


@pytest.fixture
def shop(tmp_path):
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    (tmp_path / "mesh.yaml").write_text(MESH)
    located = locate(tmp_path / "compose.yaml")
    workspace.write_rendered(workspace.load(located), "meshcli-sidecar:test")  # as `up` does
    control_plane.apply(located)
    return tmp_path


@pytest.fixture
def mesh(shop, engine) -> Mesh:
    return Mesh.attach(shop / "compose.yaml")


def sidecar_json(shop) -> dict:
    return json.loads((shop / ".mesh" / "shop" / "config" / "sidecar.json").read_text())


def default_route(shop, service: str = "payment") -> dict:
    return sidecar_json(shop)["services"][service]["routes"][-1]


# -- faults -------------------------------------------------------------------------------


def test_a_fault_runs_on_every_sidecar_inside_the_block_and_is_gone_after(mesh, shop, engine):
    with mesh.fault("payment", abort=503, percent=50) as rule:
        faults = sidecar_json(shop)["faults"]
        assert [(f["service"], f["http"]["abort"]) for f in faults] == [("payment", {"status": 503, "percent": 50.0})]
        assert engine.synced == [sidecar_json(shop)["version"]]
        assert rule.active and "abort 503 on 50% of requests" in rule.description
    assert sidecar_json(shop)["faults"] == []
    assert fault_layer.active(mesh.workspace) == []
    assert len(engine.synced) == 2 and engine.synced[-1] == sidecar_json(shop)["version"]
    assert not rule.active
    assert (shop / "mesh.yaml").read_text() == MESH  # a runtime fault never touches the user's file


def test_a_fault_is_undone_when_the_test_inside_fails(mesh, shop, engine):
    with pytest.raises(AssertionError):
        with mesh.fault("payment", delay="2s", source="orders"):
            assert sidecar_json(shop)["faults"][0]["source"] == "orders"
            raise AssertionError("the checkout broke")
    assert sidecar_json(shop)["faults"] == []


def test_tcp_faults_take_their_values(mesh, shop, engine):
    with mesh.fault("payment", tcp="latency", latency="100ms", jitter="20ms"):
        tcp = sidecar_json(shop)["faults"][0]["tcp"]
    assert (tcp["kind"], tcp["latencyMs"], tcp["jitterMs"]) == ("latency", 100, 20)


def test_a_bad_fault_is_refused_before_anything_changes(mesh, shop, engine):
    with pytest.raises(InputError, match="unknown service 'paymnet'"):
        mesh.fault("paymnet", abort=503)
    with pytest.raises(InputError, match="--abort"):
        mesh.fault("payment", abort=99)
    assert fault_layer.active(mesh.workspace) == [] and engine.synced == []


# -- mesh-file rules ----------------------------------------------------------------------


def test_split_is_a_runtime_rule_that_never_touches_mesh_yaml(mesh, shop, engine):
    before = (shop / "mesh.yaml").stat()
    with mesh.split("payment", v2=100) as rule:
        assert (shop / "mesh.yaml").read_text() == MESH
        assert [(r.kind, r.service, r.value) for r in rule_layer.active(mesh.workspace)] == \
            [("split", "payment", {"v2": 100})]
        assert rule.description == f"rule {rule.rule.id}: split payment v2=100"
        assert default_route(shop)["split"] == [{"version": "v2", "weight": 100}]
        assert engine.synced == [sidecar_json(shop)["version"]]
    after = (shop / "mesh.yaml").stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert not (shop / ".mesh" / "shop" / "rules.json").exists()
    assert default_route(shop)["split"] == []
    assert engine.synced[-1] == sidecar_json(shop)["version"]


def test_a_runtime_rule_survives_a_reload_of_mesh_yaml(mesh, shop, engine):
    with mesh.timeout("payment", "300ms"):
        (shop / "mesh.yaml").write_text(MESH.replace("round-robin", "random"))  # a hand edit, applied
        control_plane.apply(mesh.workspace)
        assert default_route(shop)["timeoutMs"] == 300
        assert sidecar_json(shop)["services"]["payment"]["loadBalancer"] == "random"
    assert default_route(shop).get("timeoutMs") is None
    assert sidecar_json(shop)["services"]["payment"]["loadBalancer"] == "random"


def test_a_hand_edit_that_breaks_a_runtime_rule_is_rejected_naming_the_rule(mesh, shop, engine):
    with mesh.split("payment", v2=100):
        (shop / "mesh.yaml").write_text(MESH.replace("v2: payment-v2", "beta: payment-v2"))  # v2 is gone
        with pytest.raises(InvalidFileError) as info:
            control_plane.apply(mesh.workspace)
        [diagnostic] = info.value.diagnostics
        assert diagnostic.file == shop / ".mesh" / "shop" / "rules.json"
        assert 'unknown version "v2"' in diagnostic.message and "split payment v2=100" in diagnostic.message
        assert default_route(shop)["split"] == [{"version": "v2", "weight": 100}]  # the sidecars keep it
        (shop / "mesh.yaml").write_text(MESH)


def test_timeout_and_retries_nest_and_unwind(mesh, shop, engine):
    with mesh.timeout("payment", "300ms"), mesh.retries("payment", attempts=2, per_try_timeout="100ms",
                                                         retry_on=["5xx"]):
        route = default_route(shop)
        assert route["timeoutMs"] == 300
        assert (route["retries"]["attempts"], route["retries"]["perTryTimeoutMs"], route["retries"]["retryOn"]) == \
            (2, 100, ["5xx"])
    assert (shop / "mesh.yaml").read_text() == MESH
    assert "timeoutMs" not in default_route(shop) or default_route(shop)["timeoutMs"] is None


def test_an_invalid_rule_raises_and_changes_nothing(mesh, shop, engine):
    with pytest.raises(InvalidFileError):
        mesh.split("payment", v1=90, v2=20)
    with pytest.raises(InvalidFileError):
        mesh.split("payment", v3=100)
    with pytest.raises(InvalidFileError):
        mesh.retries("payment", attempts=11)
    assert (shop / "mesh.yaml").read_text() == MESH
    assert rule_layer.active(mesh.workspace) == []
    assert engine.synced == []
    mesh.reset()  # nothing to undo


def test_undoing_an_older_rule_first_keeps_the_newer_one(mesh, shop, engine):
    split = mesh.split("payment", v2=100)
    timeout = mesh.timeout("payment", "300ms")
    split.undo()
    assert (default_route(shop)["split"], default_route(shop)["timeoutMs"]) == ([], 300)
    timeout.undo()
    assert default_route(shop).get("timeoutMs") is None and rule_layer.active(mesh.workspace) == []
    assert (shop / "mesh.yaml").read_text() == MESH


def test_a_project_without_a_mesh_file_gets_the_rule_and_no_mesh_file(shop, engine):
    (shop / "mesh.yaml").unlink()
    mesh = Mesh.attach(shop / "compose.yaml")
    with mesh.timeout("payment", "1s"):
        assert default_route(shop)["timeoutMs"] == 1000
        assert not (shop / "mesh.yaml").exists()
    assert not (shop / "mesh.yaml").exists()
    assert "timeoutMs" not in default_route(shop) or default_route(shop)["timeoutMs"] is None


# -- scope (the mesh_rules fixture) -------------------------------------------------------


def test_scope_undoes_rules_left_applied_faults_set_elsewhere_and_hand_edits(mesh, shop, engine):
    with mesh.scope():
        mesh.split("payment", v1=50, v2=50)  # never undone by the test
        loaded = mesh.loaded
        fault_layer.add(loaded.workspace, fault_layer.build(loaded.mesh, "orders", abort="500"))  # `meshcli fault`
    assert (shop / "mesh.yaml").read_text() == MESH
    assert fault_layer.active(mesh.workspace) == []
    assert sidecar_json(shop)["faults"] == [] and engine.synced[-1] == sidecar_json(shop)["version"]

    with mesh.scope():
        (shop / "mesh.yaml").write_text(MESH.replace("round-robin", "random"))
    assert (shop / "mesh.yaml").read_text() == MESH


def test_scope_keeps_what_was_there_before_it(mesh, shop, engine):
    kept = mesh.fault("frontend", delay="1ms")
    with mesh.scope():
        mesh.fault("payment", abort=503)
    assert [f.service for f in fault_layer.active(mesh.workspace)] == ["frontend"]
    kept.undo()


# -- what is running ----------------------------------------------------------------------


def test_url_of_a_service_or_workload(mesh, engine):
    assert mesh.url("frontend") == "http://localhost:8080/"
    with pytest.raises(InputError, match="payment publishes no port") as info:
        mesh.url("payment")
    assert "ports" in info.value.hint
    with pytest.raises(InputError, match="no service or workload named 'nope'") as info:
        mesh.url("nope")
    assert "payment-v1" in info.value.hint
    assert mesh.workloads("payment") == ["payment-v1", "payment-v2"]
    assert mesh.workloads("payment-v2") == ["payment-v2"]


def rows(*entries: tuple[str, str, str, int]) -> dict:
    return {"requests": [{"reporter": reporter, "source_workload": "orders", "destination_service": "payment",
                          "destination_version": version, "response_code": code, "count": count}
                         for reporter, version, code, count in entries]}


def test_stats_add_up_what_the_services_sidecars_received(mesh, engine):
    engine.stats = {
        "payment-v1": rows(("destination", "v1", "200", 7), ("destination", "v1", "503", 3),
                           ("source", "unknown", "200", 99)),  # its own outbound calls: not counted
        "payment-v2": rows(("destination", "v2", "200", 10)),
    }
    stats = mesh.stats("payment")
    assert stats.requests == 20
    assert stats.by_status == {200: 17, 503: 3}
    assert stats.by_version == {"v1": 10, "v2": 10}
    assert stats.count(version="v1", status=503) == 3
    assert stats.errors == 3 and stats.error_rate == pytest.approx(0.15)
    assert stats.share("v2") == 0.5

    engine.stats["payment-v2"] = rows(("destination", "v2", "200", 25))
    seen = mesh.stats("payment") - stats
    assert seen.by_version == {"v2": 15} and seen.by_status == {200: 15}


def test_stats_of_a_sidecar_that_does_not_answer(mesh, engine):
    with pytest.raises(MeshError, match="sidecar of payment-v1 does not answer"):
        mesh.stats("payment")


def test_stats_of_different_services_do_not_subtract():
    with pytest.raises(ValueError):
        ServiceStats("a") - ServiceStats("b")


# -- up, attach, down ---------------------------------------------------------------------


def test_attach_refuses_a_project_that_is_not_running(shop, engine):
    engine.statuses = [workload(s.workload, s.service, s.version, app="missing") for s in RUNNING]
    with pytest.raises(MeshError, match="project shop is not running") as info:
        Mesh.attach(shop / "compose.yaml")
    assert "meshcli up" in info.value.hint


def test_attach_waits_until_ready(shop, engine, monkeypatch):
    answers = iter([[workload("frontend", "frontend", sync="STALE")]] * 2 + [RUNNING])
    monkeypatch.setattr(status, "collect", lambda loaded: next(answers))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert Mesh.attach(shop / "compose.yaml").project == "shop"


def test_attach_gives_up_on_a_mesh_that_stays_unhealthy(shop, engine):
    engine.statuses = [workload("payment-v1", "payment", sidecar_health="unhealthy")]
    with pytest.raises(MeshError, match="payment-v1: sidecar unhealthy"):
        Mesh.attach(shop / "compose.yaml", timeout=0)


@pytest.fixture
def fake_lifecycle(engine, monkeypatch):
    def up(workspace, progress, wait_timeout=180, build=False, wait=True, prometheus_port=None):
        engine.ups.append({"project": workspace.project.name, "timeout": wait_timeout, "build": build})
        loaded = workspace_module.load(workspace)
        return lifecycle.UpResult(loaded, workspace.rendered_file, "meshcli-sidecar:test", list(engine.statuses))

    monkeypatch.setattr(lifecycle, "up", up)
    monkeypatch.setattr(lifecycle, "down", lambda workspace, progress, volumes=False: engine.downs.append(
        (workspace.project.name, volumes)))


def test_up_then_down_with_the_rules_still_applied_restores_mesh_yaml(shop, engine, fake_lifecycle):
    with Mesh.up(shop / "compose.yaml", project="ci-7", timeout=60) as mesh:
        assert mesh.project == "ci-7" and mesh.owned
        mesh.split("payment", v2=100)
    assert engine.ups == [{"project": "ci-7", "timeout": 60, "build": False}]
    assert engine.downs == [("ci-7", True)]  # the volumes it created go with it
    assert (shop / "mesh.yaml").read_text() == MESH


def test_up_that_is_not_ready_takes_the_project_down_and_says_why(shop, engine, fake_lifecycle):
    engine.statuses = [workload("orders", "orders", app="exited")]
    with pytest.raises(MeshError, match="not ready after 5s: orders: app exited"):
        Mesh.up(shop / "compose.yaml", project="ci-8", timeout=5)
    assert engine.downs == [("ci-8", True)]


def test_up_can_leave_a_failed_project_running_to_look_at(shop, engine, fake_lifecycle):
    engine.statuses = [workload("orders", "orders", app="exited")]
    with pytest.raises(MeshError):
        Mesh.up(shop / "compose.yaml", project="ci-9", timeout=5, keep_on_failure=True)
    assert engine.downs == []


def test_an_attached_mesh_is_never_taken_down_by_with(mesh, engine):
    with mesh:
        pass
    assert engine.downs == []


def test_down_of_an_attached_mesh_keeps_its_volumes_like_meshcli_down(mesh, engine, fake_lifecycle):
    mesh.down()
    assert engine.downs == [("shop", False)]
    mesh.down(volumes=True)
    assert engine.downs[-1] == ("shop", True)


# -- lifecycle.up's wait ------------------------------------------------------------------


@pytest.fixture
def compose_calls(monkeypatch):
    from meshcli import docker_engine, images, watcher

    calls: list[list[str]] = []
    # No real background watcher from a unit test: it would outlive the test.
    monkeypatch.setattr(watcher, "start", lambda workspace: 4242)
    monkeypatch.setattr(watcher, "stop", lambda workspace: None)
    monkeypatch.setattr(images, "build_sidecar_image", lambda progress: "meshcli-sidecar:test")
    monkeypatch.setattr(docker_engine, "compose", lambda project, files, args, **kw: calls.append(list(args)))
    monkeypatch.setenv("MESHCLI_BASE_IMAGE", "base:test")
    return calls


def test_lifecycle_up_waits_until_every_sidecar_runs_the_config(shop, compose_calls, monkeypatch):
    answers = iter([[workload("orders", "orders", sync="STALE")], RUNNING])
    monkeypatch.setattr(status, "collect", lambda loaded: next(answers))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    result = lifecycle.up(locate(shop / "compose.yaml"), lambda message: None, wait_timeout=30)
    assert result.ready and result.statuses == RUNNING
    assert compose_calls[0][-3:] == ["--wait", "--wait-timeout", "30"]


def test_lifecycle_up_reports_what_is_not_ready_at_the_deadline(shop, compose_calls, monkeypatch):
    stuck = [workload("orders", "orders", sync="STALE"), workload("payment-v1", "payment", sidecar="restarting",
                                                                     sidecar_health="starting")]
    monkeypatch.setattr(status, "collect", lambda loaded: stuck)
    result = lifecycle.up(locate(shop / "compose.yaml"), lambda message: None, wait_timeout=0)
    assert not result.ready
    assert lifecycle.not_ready(result.statuses) == ["orders: config STALE", "payment-v1: sidecar restarting"]


def test_lifecycle_up_without_wait_does_not_wait(shop, compose_calls, monkeypatch):
    monkeypatch.setattr(status, "collect", lambda loaded: [])
    lifecycle.up(locate(shop / "compose.yaml"), lambda message: None, wait=False)
    assert "--wait" not in compose_calls[0] and "--wait-timeout" not in compose_calls[0]


# -- review fixes: nesting, undo order, failures while applying --------------------------


def active_faults(mesh) -> list[tuple[str, str]]:
    return [(f.id, fault_layer.describe(f)) for f in fault_layer.active(mesh.workspace)]


def test_a_tcp_fault_takes_a_size_in_bytes(mesh, shop, engine):
    with mesh.fault("payment", tcp="limit-data", size=100):
        tcp = sidecar_json(shop)["faults"][0]["tcp"]
    assert (tcp["kind"], tcp["bytes"]) == ("limit-data", 100)


def test_a_nested_fault_on_the_same_target_gives_the_outer_one_back(mesh, shop, engine):
    with mesh.fault("payment", delay="1s") as outer:
        before = active_faults(mesh)
        with mesh.fault("payment", abort=503):
            assert [d for _, d in active_faults(mesh)] == ["abort 503 on 100% of requests"]
        assert active_faults(mesh) == before  # same id: `outer` can still remove it
        assert sidecar_json(shop)["faults"][0]["http"]["delay"]["ms"] == 1000
        assert engine.synced[-1] == sidecar_json(shop)["version"]
    assert active_faults(mesh) == [] and not outer.active


def test_undoing_a_replaced_fault_first_keeps_the_newer_one_and_forgets_the_older(mesh, shop, engine):
    outer = mesh.fault("payment", delay="1s")
    inner = mesh.fault("payment", abort=503)
    synced = len(engine.synced)
    outer.undo()
    assert [d for _, d in active_faults(mesh)] == ["abort 503 on 100% of requests"]
    assert len(engine.synced) == synced  # nothing changed
    inner.undo()
    assert active_faults(mesh) == []  # the delay does not come back: it was undone


def test_a_fault_the_sidecars_never_run_is_removed_before_the_error(mesh, shop, engine, monkeypatch):
    def never(loaded, version, timeout=30.0, progress=None):
        if fault_layer.active(loaded.workspace):
            raise MeshError("1 of 4 sidecars do not run config")
        engine.synced.append(version)
        return []

    monkeypatch.setattr(control_plane, "wait_synced", never)
    with pytest.raises(MeshError, match="do not run config"):
        with mesh.fault("payment", abort=503):
            pass
    assert active_faults(mesh) == [] and sidecar_json(shop)["faults"] == []
    assert mesh._rules == []


def test_a_traffic_rule_the_sidecars_never_run_is_undone_before_the_error(mesh, shop, engine, monkeypatch):
    def never(loaded, version, timeout=30.0, progress=None):
        if rule_layer.active(loaded.workspace):
            raise MeshError("1 of 4 sidecars do not run config")
        return []

    monkeypatch.setattr(control_plane, "wait_synced", never)
    with pytest.raises(MeshError, match="do not run config"):
        mesh.split("payment", v2=100)
    assert rule_layer.active(mesh.workspace) == [] and default_route(shop)["split"] == []
    assert mesh._rules == []


def test_scope_undoes_its_rules_even_after_an_older_rule_was_undone_inside(mesh, shop, engine):
    older = mesh.fault("frontend", delay="1ms")
    with mesh.scope():
        split = mesh.split("payment", v2=100)
        older.undo()
    assert not split.active
    assert (shop / "mesh.yaml").read_text() == MESH


def test_latency_quantiles_from_the_sidecars_histograms():
    inf = float("inf")
    # 10 requests on v1: 6 under 10 ms, 4 between 250 and 500 ms; 2 on v2 under 5 ms.
    stats = ServiceStats("payment", {200: 12}, {"v1": 10, "v2": 2}, {("v1", 200): 10, ("v2", 200): 2},
                         {"v1": {5.0: 0, 10.0: 6, 250.0: 6, 500.0: 10, inf: 10}, "v2": {5.0: 2, 10.0: 2, 250.0: 2,
                                                                                     500.0: 2, inf: 2}},
                         {"v1": 1500.0, "v2": 4.0})

    assert stats.latency_ms(0.5, version="v1") == pytest.approx(5 + 5 * 5 / 6)
    assert stats.latency_ms(0.9, version="v1") == pytest.approx(250 + 250 * 3 / 4)
    assert stats.latency_ms(1.0, version="v2") == pytest.approx(5.0)
    assert stats.mean_latency_ms(version="v1") == pytest.approx(150.0)
    assert stats.mean_latency_ms() == pytest.approx(1504 / 12)
    assert ServiceStats("payment").latency_ms(0.5) is None
    with pytest.raises(ValueError):
        stats.latency_ms(1.5)


def test_latency_since_an_earlier_snapshot():
    inf = float("inf")
    before = ServiceStats("payment", {200: 1}, {"v1": 1}, {("v1", 200): 1}, {"v1": {10.0: 1, 1000.0: 1, inf: 1}},
                          {"v1": 5.0})
    after = ServiceStats("payment", {200: 3}, {"v1": 3}, {("v1", 200): 3}, {"v1": {10.0: 1, 1000.0: 3, inf: 3}},
                         {"v1": 1605.0})

    seen = after - before

    assert seen.requests == 2
    assert seen.mean_latency_ms() == pytest.approx(800.0)
    assert seen.latency_ms(0.5) == pytest.approx(10 + 990 * 0.5)


def test_scope_removes_runtime_rules_another_mesh_object_set(mesh, shop, engine):
    other = Mesh.attach(shop / "compose.yaml")
    with mesh.scope():
        other.split("payment", v2=100)
    assert rule_layer.active(mesh.workspace) == [] and default_route(shop)["split"] == []


def test_meshcli_status_lists_the_runtime_rules_in_force(mesh, shop, engine, capsys, monkeypatch):
    from meshcli.cli.main import main

    monkeypatch.chdir(shop)
    with mesh.timeout("payment", "300ms") as rule:
        assert main(["status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rules"] == [
            {"kind": "timeout", "service": "payment", "value": "300ms", "route": None, "id": rule.rule.id}]
        assert main(["status"]) == 0
        assert f"runtime rule {rule.rule.id}: timeout payment 300ms (set by a test" in capsys.readouterr().err
