"""The runtime fault layer: .mesh/faults.json (the sidecar's own fault objects), its rules, and its compiled form."""

from __future__ import annotations

import json

import pytest

from meshcli import demo as demo_copy, fault_layer, sidecar_config, workspace
from meshcli.errors import InputError, MeshError
from meshproxy import config as wire

NOW = 1_800_000_000.0


@pytest.fixture
def loaded(tmp_path):
    return workspace.load(workspace.locate(demo_copy.copy(tmp_path / "demo").compose_file))


def build(loaded, service="payment", **options):
    return fault_layer.build(loaded.mesh, service, now=NOW, **options)


def test_add_writes_faults_json_and_leaves_mesh_yaml_alone(loaded):
    mesh_before = loaded.workspace.mesh_file.read_text()

    stored = fault_layer.add(loaded.workspace, build(loaded, abort="503", percent=10, duration="30s"), now=NOW)

    assert stored.id.startswith("f-") and len(stored.id) == 6
    assert stored.until == NOW + 30
    text = (loaded.workspace.state_dir / "faults.json").read_text()
    assert json.loads(text)["faults"] == [wire.fault_json(stored)]
    assert wire.parse_faults(text) == (stored,)
    assert loaded.workspace.mesh_file.read_text() == mesh_before


def test_a_new_fault_replaces_the_one_for_the_same_service_source_and_layer(loaded):
    ws = loaded.workspace
    delay = fault_layer.add(ws, build(loaded, delay="2s"), now=NOW)
    other_source = fault_layer.add(ws, build(loaded, delay="1s", source="orders"), now=NOW)
    tcp = fault_layer.add(ws, build(loaded, tcp="reset"), now=NOW)
    abort = fault_layer.add(ws, build(loaded, abort="500"), now=NOW)  # same service, source, layer as `delay`

    assert [f.id for f in fault_layer.active(ws, NOW)] == [other_source.id, tcp.id, abort.id]
    assert delay.id not in {f.id for f in fault_layer.active(ws, NOW)}


def test_clear_by_service_by_id_and_all(loaded):
    ws = loaded.workspace
    pay = fault_layer.add(ws, build(loaded, delay="2s"), now=NOW)
    pay_tcp = fault_layer.add(ws, build(loaded, tcp="blackhole"), now=NOW)
    orders = fault_layer.add(ws, build(loaded, "orders", abort="503"), now=NOW)

    assert fault_layer.clear(ws, fault_id=pay_tcp.id, now=NOW) == [pay_tcp]
    assert fault_layer.clear(ws, service="payment", now=NOW) == [pay]
    assert fault_layer.active(ws, NOW) == [orders]
    assert fault_layer.clear(ws, now=NOW) == [orders]
    assert fault_layer.active(ws, NOW) == []


def test_expired_faults_are_not_listed_compiled_or_kept(loaded):
    ws = loaded.workspace
    short = fault_layer.add(ws, build(loaded, delay="2s", duration="10s"), now=NOW)
    lasting = fault_layer.add(ws, build(loaded, "orders", delay="2s"), now=NOW)

    assert fault_layer.active(ws, NOW + 5) == [short, lasting]
    assert fault_layer.active(ws, NOW + 10) == [lasting]
    assert [f.id for f in sidecar_config.compile_mesh(loaded.mesh, fault_layer.active(ws, NOW + 11)).faults] == [
        lasting.id]
    fault_layer.add(ws, build(loaded, "frontend", delay="1s"), now=NOW + 11)  # a write prunes the file
    assert short.id not in (ws.state_dir / "faults.json").read_text()


def test_compiled_faults_round_trip_through_the_sidecar_parser(loaded):
    ws = loaded.workspace
    fault_layer.add(ws, build(loaded, delay="1.5s", abort="503", percent=25, source="orders", duration="1m"), now=NOW)
    fault_layer.add(ws, build(loaded, abort="reset"), now=NOW)  # replaces nothing: other source
    fault_layer.add(ws, build(loaded, "greeter", tcp="latency", latency="100ms", jitter="20ms", percent=50), now=NOW)
    fault_layer.add(ws, build(loaded, "orders", tcp="bandwidth", rate="64KB/s"), now=NOW)
    fault_layer.add(ws, build(loaded, "frontend", tcp="slicer", size=100, latency="10ms"), now=NOW)

    config = sidecar_config.compile_mesh(loaded.mesh, fault_layer.active(ws, NOW), generation=1)
    parsed = wire.parse(wire.dump(config))
    assert parsed.faults == tuple(fault_layer.active(ws, NOW))

    by_service = {(f.service, f.source): f for f in parsed.faults}
    delayed = by_service[("payment", "orders")]
    assert delayed.http.delay == wire.Delay(1.5, 25.0)
    assert delayed.http.abort == wire.Abort(503, False, 25.0)
    assert delayed.until == NOW + 60
    assert by_service[("payment", None)].http.abort == wire.Abort(None, True, 100.0)
    assert by_service[("greeter", None)].tcp == wire.TcpFault("latency", latency=0.1, jitter=0.02, percent=50.0)
    assert by_service[("orders", None)].tcp.rate == 64_000
    assert by_service[("frontend", None)].tcp == wire.TcpFault("slicer", latency=0.01, bytes=100)
    # the sidecar applies them: runtime fault first, for the right source only
    payment = parsed.services["payment"]
    assert parsed.http_fault(payment, payment.routes[-1], "orders", now=NOW).delay.seconds == 1.5
    assert parsed.http_fault(payment, payment.routes[-1], "orders", now=NOW + 61).abort.reset


@pytest.mark.parametrize(("service", "options", "message"), [
    ("paymnt", {"delay": "1s"}, 'unknown service \'paymnt\' (did you mean "payment"?)'),
    ("payment", {"delay": "1s", "source": "ordres"}, 'unknown --source service \'ordres\' (did you mean "orders"?)'),
    ("payment", {}, "nothing to inject"),
    ("payment", {"delay": "2"}, "--delay:"),
    ("payment", {"abort": "700"}, "from 200 to 599"),
    ("payment", {"abort": "boom"}, "HTTP status (200-599) or 'reset'"),
    ("payment", {"abort": "503", "percent": 101}, "from 0 to 100"),
    ("payment", {"abort": "503", "tcp": "reset"}, "either HTTP"),
    ("payment", {"delay": "1s", "latency": "1s"}, "--latency only go with --tcp"),
    ("payment", {"tcp": "latncy"}, 'did you mean "latency"'),
    ("payment", {"tcp": "latency"}, "--tcp latency needs --latency"),
    ("payment", {"tcp": "bandwidth", "rate": "fast"}, "--rate:"),
    ("payment", {"tcp": "reset", "size": 10}, "--tcp reset takes no other values"),
    ("payment", {"tcp": "slicer", "size": 0}, "--bytes"),
    ("payment", {"delay": "1s", "duration": "0s"}, "--for: must be longer than 0"),
])
def test_bad_values_are_input_errors(loaded, service, options, message):
    with pytest.raises(InputError) as info:
        build(loaded, service, **options)
    assert message in info.value.message


def test_an_unreadable_file_is_an_error_that_clear_fixes(loaded):
    ws = loaded.workspace
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    (ws.state_dir / "faults.json").write_text("{not json")

    with pytest.raises(MeshError, match="meshcli fault clear|not a faults file"):
        fault_layer.active(ws)
    assert fault_layer.clear(ws) == []
    assert fault_layer.active(ws) == []


def test_describe():
    http = wire.HttpFault(wire.Delay(2.0, 50.0), None)
    tcp = wire.TcpFault("latency", latency=0.1, jitter=0.02)

    assert fault_layer.describe(fault_layer.Fault("f-1", "payment", http=http)) == "delay 2 s on 50% of requests"
    assert (fault_layer.describe(fault_layer.Fault("f-2", "greeter", "client", tcp=tcp))
            == "tcp latency 100 ms ± 20 ms on 100% of connections (calls from client)")


def test_in_force_lists_runtime_faults_then_the_mesh_files(loaded):
    mesh_file = loaded.workspace.mesh_file
    mesh_file.write_text(mesh_file.read_text().replace(
        "  greeter:\n", "  greeter:\n    tcpFault: {kind: latency, latency: 100ms}\n").replace(
        "  orders:\n", "  orders:\n    fault: {delay: {fixed: 1s, percent: 50}}\n"))
    reloaded = workspace.load(loaded.workspace)
    fault_layer.add(loaded.workspace, build(loaded, abort="503", duration="30s"), now=NOW)

    rows = fault_layer.in_force(loaded.workspace, reloaded.mesh, now=NOW + 10)

    assert [(r["origin"], r["service"], r["route"], r["description"], r["timeLeft"]) for r in rows] == [
        ("runtime", "payment", None, "abort 503 on 100% of requests", "20 s"),
        ("mesh.yaml", "greeter", None, "tcp latency 100 ms on 100% of connections", "until cleared"),
        ("mesh.yaml", "orders", "default", "delay 1 s on 50% of requests", "until cleared"),
    ]
    assert fault_layer.in_force(loaded.workspace, reloaded.mesh, now=NOW + 31)[0]["origin"] == "mesh.yaml"


def _add_faults_from(loaded, source: str, last_ids) -> None:
    for _ in range(30):
        stored = fault_layer.add(loaded.workspace, fault_layer.build(loaded.mesh, "payment", abort="503",
                                                                     source=source))
    last_ids.put(stored.id)


def test_concurrent_writers_lose_no_fault(loaded):
    # Parallel test workers (pytest-xdist) may set faults at the same moment: each one's
    # last fault must be what is in force, none lost to another's read-modify-write.
    import multiprocessing

    sources = ["frontend", "orders", "greeter", "greeter-client", "payment"]
    context = multiprocessing.get_context("fork")
    last_ids = context.Queue()
    workers = [context.Process(target=_add_faults_from, args=(loaded, s, last_ids))  # forked: the loaded project is shared
               for s in sources]
    for worker in workers:
        worker.start()
    expected = sorted(last_ids.get(timeout=30) for _ in sources)
    for worker in workers:
        worker.join(30)

    assert sorted(f.id for f in fault_layer.active(loaded.workspace)) == expected
