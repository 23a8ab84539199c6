"""The compiler from the resolved mesh to sidecar.json (schema 2), written and read by the sidecar's own contract."""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from meshproxy import config as wire

from meshcli import compose_model, mesh_config, sidecar_config
from meshcli.sidecar_config import Compiled

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "demo-sidecar.json"  # sidecar.json of compose/, generation 1

COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080"]}
      frontend: {image: web, expose: ["8080"]}
"""


def mesh_text(body: str) -> str:
    return "apiVersion: meshcli/v1\n" + textwrap.dedent(body).lstrip("\n")


def docs_example() -> str:
    text = (REPO / "docs" / "mesh-file.md").read_text()
    return re.search(r"```yaml\n(.*?)```", text, re.S).group(1)


def compiled(mesh, faults=(), generation: int = 0) -> dict:
    """sidecar.json of `mesh`, as JSON."""
    return json.loads(wire.dump(sidecar_config.compile_mesh(mesh, faults, generation)))


def compiled_service(files, body: str, name: str = "payment") -> dict:
    return compiled(files.resolve(COMPOSE, mesh_text(body)))["services"][name]


def runtime_fault(**data) -> wire.RuntimeFault:
    return wire.parse_runtime_fault(data)


# --- routes: inheritance, order, the default route -----------------------------------------


def test_without_rules_a_service_has_one_default_route_balancing_all_versions(files):
    service = compiled(files.resolve(COMPOSE))["services"]["payment"]
    assert service == {
        "versions": [{"name": "v1", "host": "payment-v1"}, {"name": "v2", "host": "payment-v2"}],
        "ports": [8080],
        "loadBalancer": "round-robin",
        "routes": [{"name": "default", "split": []}],
        "mtls": "PERMISSIVE",
    }


def test_routes_take_what_they_leave_out_from_the_service_level(files):
    routes = compiled_service(files, """
        services:
          payment:
            split: {v1: 90, v2: 10}
            timeout: 2s
            retries: {attempts: 3, perTryTimeout: 500ms}
            fault: {abort: {httpStatus: 503, percent: 5}}
            routes:
              - name: canary
                match: [{headers: {x-canary: {exact: "true"}}}]
                to: v2
                timeout: 300ms
              - name: slow-api
                match: [{path: {prefix: /slow}, method: POST}]
                retries: {attempts: 0}
                mirror: {version: v2, percent: 50}
    """)["routes"]
    retries = {"attempts": 3, "perTryTimeoutMs": 500, "retryOn": ["5xx", "connect-failure", "reset"],
               "retriableStatusCodes": [], "backoffMs": 25, "retryNonIdempotent": False}
    fault = {"abort": {"status": 503, "percent": 5.0}}
    canary, slow, default = routes
    assert canary == {"name": "canary", "match": [{"headers": [{"name": "x-canary", "kind": "exact", "value": "true"}]}],
                      "split": [{"version": "v2", "weight": 100}], "timeoutMs": 300, "retries": retries, "fault": fault}
    assert slow["split"] == [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]
    assert slow["timeoutMs"] == 2000
    assert slow["retries"] == {"attempts": 0, "retryOn": ["5xx", "connect-failure", "reset"],
                               "retriableStatusCodes": [], "backoffMs": 25, "retryNonIdempotent": False}
    assert slow["mirror"] == {"version": "v2", "percent": 50.0}
    assert default == {"name": "default", "split": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
                       "timeoutMs": 2000, "retries": retries, "fault": fault}
    assert "match" not in default


def test_a_last_route_without_match_is_the_default_route(files):
    routes = compiled_service(files, """
        services:
          payment:
            timeout: 1s
            routes:
              - match: [{source: frontend}]
                to: v2
              - name: everyone-else
                to: v1
    """)["routes"]
    assert [(r["name"], "match" in r, r["split"], r["timeoutMs"]) for r in routes] == [
        ("route-1", True, [{"version": "v2", "weight": 100}], 1000),
        ("everyone-else", False, [{"version": "v1", "weight": 100}], 1000),
    ]


def test_matches_compile_to_the_sidecars_form(files):
    [route, _] = compiled_service(files, """
        services:
          payment:
            routes:
              - name: r
                match:
                  - headers: {X-User: {regex: "a.*"}, x-beta: {present: true}}
                    query: {debug: {exact: "1"}}
                    method: [GET, HEAD]
                    source: frontend
                  - path: {exact: /health}
                to: v1
    """)["routes"]
    assert route["match"] == [
        {"headers": [{"name": "x-beta", "kind": "present"}, {"name": "x-user", "kind": "regex", "value": "a.*"}],
         "query": [{"name": "debug", "kind": "exact", "value": "1"}], "methods": ["GET", "HEAD"],
         "source": "frontend"},
        {"path": {"kind": "exact", "value": "/health"}},
    ]


def test_connection_policy_and_tcp_fault(files):
    service = compiled_service(files, """
        services:
          payment:
            circuitBreaker: {maxConnections: 10, maxRequestsPerConnection: 0}
            outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, baseEjectionTime: 1m}
            tcpFault: {kind: slicer, bytes: 64, latency: 5ms, percent: 50}
    """)
    assert service["circuitBreaker"] == {"maxConnections": 10, "maxRequestsPerConnection": 0}
    # 0 disables a count (Istio's meaning); the sidecar reads null as "off"
    assert service["outlierDetection"] == {"consecutive5xxErrors": None, "consecutiveGatewayErrors": 2,
                                           "baseEjectionTimeMs": 60_000, "maxEjectionPercent": 10}
    assert service["tcpFault"] == {"kind": "slicer", "latencyMs": 5, "jitterMs": 0, "rateBytesPerSecond": 0,
                                   "bytes": 64, "percent": 50.0}


def test_abort_by_reset_and_delay(files):
    [route] = compiled_service(files, """
        services:
          payment:
            fault: {delay: {fixed: 1.5s, percent: 12.5}, abort: {reset: true}}
    """)["routes"]
    assert route["fault"] == {"delay": {"ms": 1500, "percent": 12.5}, "abort": {"reset": True, "percent": 100.0}}


def test_runtime_faults_are_carried_as_given(files):
    fault = {"id": "f-1a2b", "service": "payment", "source": None, "http": {"abort": {"status": 503, "percent": 10.0}},
             "tcp": None, "until": 1764000000.5, "created": 1763999970.5}
    assert compiled(files.resolve(COMPOSE), [runtime_fault(**fault)])["faults"] == [fault]


# --- the version and the generation ---------------------------------------------------------


def test_the_version_is_a_hash_of_everything_but_version_and_generation(files):
    mesh = files.resolve(COMPOSE, docs_example())
    config = compiled(mesh, generation=7)
    assert list(config)[:4] == ["schema", "project", "version", "generation"]
    assert (config["schema"], config["project"], config["generation"]) == (2, "shop", 7)
    rest = {k: v for k, v in config.items() if k not in ("version", "generation")}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    assert config["version"] == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert compiled(mesh, generation=1)["version"] == config["version"]


def test_the_version_does_not_depend_on_key_order(files):
    one = files.resolve(COMPOSE, mesh_text("""
        services:
          payment:
            split: {v1: 90, v2: 10}
            timeout: 2s
            routes:
              - match: [{headers: {a: {exact: "1"}, b: {prefix: x}}, source: frontend}]
                to: v2
          frontend: {loadBalancer: random}
    """))
    two = files.resolve(COMPOSE, mesh_text("""
        services:
          frontend: {loadBalancer: random}
          payment:
            routes:
              - to: v2
                match: [{source: frontend, headers: {b: {prefix: x}, a: {exact: "1"}}}]
            timeout: 2000ms
            split: {v2: 10, v1: 90}
    """))
    assert sidecar_config.compile_mesh(one).version == sidecar_config.compile_mesh(two).version


def test_the_version_changes_with_any_rule_or_runtime_fault(files):
    base = sidecar_config.compile_mesh(files.resolve(COMPOSE)).version
    with_rule = sidecar_config.compile_mesh(files.resolve(COMPOSE, mesh_text("services:\n  payment: {timeout: 1s}\n")))
    with_fault = sidecar_config.compile_mesh(files.resolve(COMPOSE), [runtime_fault(
        id="f-1", service="payment", http={"abort": {"status": 500}})])
    assert len({base, with_rule.version, with_fault.version}) == 3


def test_write_counts_generations_and_skips_unchanged_configs(files, tmp_path):
    config_dir = tmp_path / "config"
    assert sidecar_config.current(config_dir) is None
    assert sidecar_config.current_version(config_dir) is None

    plain = files.resolve(COMPOSE)
    first = sidecar_config.write(plain, config_dir)
    assert first == Compiled(first.version, 1, changed=True)
    path = config_dir / wire.CONFIG_FILE
    written = path.stat()

    again = sidecar_config.write(plain, config_dir)
    assert again == Compiled(first.version, 1, changed=False)
    assert path.stat().st_ino == written.st_ino and path.stat().st_mtime_ns == written.st_mtime_ns  # not rewritten

    fault = runtime_fault(id="f-1", service="payment", http={"delay": {"ms": 100}})
    second = sidecar_config.write(plain, config_dir, [fault])
    assert (second.generation, second.changed) == (2, True) and second.version != first.version
    third = sidecar_config.write(files.resolve(COMPOSE, mesh_text("services:\n  payment: {to: v2}\n")), config_dir)
    assert (third.generation, third.changed) == (3, True)
    back = sidecar_config.write(plain, config_dir)
    assert (back.version, back.generation) == (first.version, 4)  # an old version again is a new generation

    on_disk = json.loads(path.read_text())
    assert (on_disk["version"], on_disk["generation"]) == (back.version, 4)
    assert sidecar_config.current(config_dir) == Compiled(back.version, 4, changed=False)
    assert sidecar_config.current_version(config_dir) == back.version


@pytest.mark.parametrize("content, expected", [
    ("", None), ("{not json", None), ("[]", None), ('{"schema": 1}', None),
    ('{"schema": 2, "version": "abc", "generation": "x", "services": {}}', None),  # the sidecars reject it too
    ('{"schema": 2, "version": "abc", "services": {}}', Compiled("abc", 0, changed=False)),
])
def test_a_missing_or_bad_file_counts_as_none_or_generation_zero(tmp_path, content, expected):
    (tmp_path / wire.CONFIG_FILE).write_text(content)
    assert sidecar_config.current(tmp_path) == expected


def test_a_schema_1_file_is_replaced_by_generation_1(files, tmp_path):
    (tmp_path / wire.CONFIG_FILE).write_text('{"schema": 1, "project": "shop", "version": "0123abcd", '
                                                    '"services": {}}')
    assert sidecar_config.write(files.resolve(COMPOSE), tmp_path).generation == 1


# --- round trip: parse(dump(config)) == config, for every feature ---------------------------

ROUND_TRIP_MESHES = {
    "no mesh file": None,
    "docs example": docs_example(),
    "demo": (REPO / "compose" / "mesh.yaml").read_text(),
    "every rule": mesh_text("""
        services:
          payment:
            loadBalancer: least-request
            split: {v1: 0, v2: 100}
            timeout: 0.5s
            retries: {attempts: 2, perTryTimeout: 100ms, retryOn: [gateway-error, retriable-status-codes],
                      retriableStatusCodes: [409, 429], backoff: 10ms, retryNonIdempotent: true}
            mirror: {version: v1, percent: 12.5}
            fault: {delay: {fixed: 1m, percent: 0.1}, abort: {reset: true, percent: 1}}
            routes:
              - name: a
                match: [{path: {regex: "^/v[0-9]+/.*$"}, method: DELETE}, {query: {x: {present: true}}}]
                to: v1
                fault: {abort: {httpStatus: 418}}
              - match: [{source: frontend, headers: {x-b: {prefix: b}}}]
              - name: rest
                retries: {attempts: 0}
            circuitBreaker: {maxConnections: 1, maxPendingRequests: 0, maxRequestsPerConnection: 1}
            outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 0, maxEjectionPercent: 100}
            tcpFault: {kind: bandwidth, rate: 1MiB/s}
          frontend:
            tcpFault: {kind: blackhole, percent: 0}
    """),
    "zero trust": mesh_text("""
        mtls: {mode: STRICT, trustDomain: example.org, certificateLifetime: 1h}
        services:
          payment:
            mtls: PERMISSIVE
            authorization:
              - name: no-debug
                action: DENY
                rules: [{path: [{prefix: /debug}, {suffix: .php}], headers: {x-debug: {present: true}}}]
              - name: callers
                action: ALLOW
                rules:
                  - {source: [frontend, "spiffe://other.org/ns/x/sa/y"], method: [GET, POST], port: 8080}
                  - {source: no-identity, path: {exact: /healthz}}
              - {name: everyone, action: ALLOW}
    """),
    "outlier counts off": mesh_text("""
        services:
          payment:
            outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, baseEjectionTime: 1.5s}
            retries: {attempts: 1, retryOn: [reset, 5xx], retriableStatusCodes: [503, 409]}
            routes:
              - name: b
                match: [{headers: {X-Upper: {exact: ""}}, method: [POST, GET]}, {path: {prefix: /p}}]
                timeout: 1.5ms
    """),
    **{f"tcp {kind}": mesh_text(f"services:\n  payment:\n    tcpFault: {body}\n") for kind, body in {
        "latency": "{kind: latency, latency: 100ms, jitter: 20ms}", "reset": "{kind: reset}",
        "limit-data": "{kind: limit-data, bytes: 1000}", "bandwidth": "{kind: bandwidth, rate: 512}",
        "slicer": "{kind: slicer, bytes: 64, latency: 5ms}", "blackhole": "{kind: blackhole}"}.items()},
}


RUNTIME_FAULTS = (
    wire.RuntimeFault("f-1", "payment", "frontend", http=wire.HttpFault(abort=wire.Abort(503, percent=50.0)),
                      created=1e9),
    wire.RuntimeFault("f-2", "payment", tcp=sidecar_config.tcp_fault(mesh_config.TcpFault("latency", 10, 1)),
                      until=1e10),
    wire.RuntimeFault("f-3", "frontend", http=wire.HttpFault(wire.Delay(1.5, 12.5), wire.Abort(reset=True))),
)


def round_trip_mesh(files, name: str):
    text = ROUND_TRIP_MESHES[name]
    if name == "demo":
        project = files.compose((REPO / "compose" / "compose.yaml").read_text())
        return mesh_config.resolve(files.mesh(text), project)
    return files.resolve(COMPOSE, text)


@pytest.mark.parametrize("name", list(ROUND_TRIP_MESHES))
def test_parse_of_dump_is_the_same_config(files, name):
    mesh = round_trip_mesh(files, name)
    config = sidecar_config.compile_mesh(mesh, RUNTIME_FAULTS, generation=3)

    parsed = wire.parse(wire.dump(config))

    assert parsed == config
    assert wire.dump(parsed) == wire.dump(config)
    assert sidecar_config.content_version(parsed) == config.version


@pytest.mark.parametrize("name", list(ROUND_TRIP_MESHES))
def test_the_sidecar_applies_what_the_mesh_file_says(files, name):
    mesh = round_trip_mesh(files, name)
    parsed = wire.parse(wire.dump(sidecar_config.compile_mesh(mesh, RUNTIME_FAULTS, generation=3)))
    assert parsed.generation == 3 and parsed.project == mesh.project
    assert sorted(parsed.services) == sorted(mesh.services) == sorted(parsed.by_host)
    assert len(parsed.faults) == len(RUNTIME_FAULTS)
    for service_name, service in mesh.services.items():
        sidecar_service = parsed.services[service_name]
        routes = sidecar_config.routes_of(service)
        assert [r.name for r in sidecar_service.routes] == [r.name for r in routes]
        assert not sidecar_service.routes[-1].matches
        for ours, theirs in zip(routes, sidecar_service.routes):
            assert [(w.version, w.weight) for w in theirs.split] == [(w.version, w.weight) for w in ours.split or ()]
            assert theirs.timeout == (ours.timeout_ms / 1000 if ours.timeout_ms is not None else None)
            assert (theirs.retries is None) == (ours.retries is None)
            if ours.retries:
                assert theirs.retries.attempts == ours.retries.attempts
                assert theirs.retries.retry_on == frozenset(ours.retries.retry_on)
                assert theirs.retries.backoff == ours.retries.backoff_ms / 1000
            assert (theirs.mirror.version if theirs.mirror else None) == (ours.mirror.version if ours.mirror else None)
            assert len(theirs.matches) == len(ours.matches)
        tcp = service.policy.tcp_fault
        assert (sidecar_service.tcp_fault.kind if sidecar_service.tcp_fault else None) == (tcp.kind if tcp else None)
        detection = service.policy.outlier_detection
        if detection is not None:  # 0 in mesh.yaml is "off": never the sidecar's default count
            assert sidecar_service.outlier_detection.consecutive_5xx == (detection.consecutive_5xx_errors or None)


def test_sets_are_written_in_a_fixed_order(files):
    [route] = compiled_service(files, """
        services:
          payment:
            retries: {attempts: 1, retryOn: [reset, retriable-status-codes, 5xx], retriableStatusCodes: [503, 409]}
    """)["routes"]
    assert route["retries"]["retryOn"] == ["5xx", "reset", "retriable-status-codes"]
    assert route["retries"]["retriableStatusCodes"] == [409, 503]


# --- the demo, against a golden file ------------------------------------------------------


def test_the_demo_compiles_like_the_golden_file(tmp_path):
    project = compose_model.load(REPO / "compose" / "compose.yaml")
    mesh = mesh_config.resolve(mesh_config.load(REPO / "compose" / "mesh.yaml"), project)
    sidecar_config.write(mesh, tmp_path)
    text = (tmp_path / wire.CONFIG_FILE).read_text(encoding="utf-8")
    if os.environ.get("MESHCLI_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.is_file(), "no golden file: run with MESHCLI_UPDATE_GOLDEN=1 to create it"
    assert text == GOLDEN.read_text(encoding="utf-8")
