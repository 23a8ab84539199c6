"""The mesh file: parse() checks its shape, resolve() checks it against the compose project."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from mesh_files import diagnostics_of

from meshcli import durations, mesh_config, mesh_init, yaml_source
from meshcli.cli.main import main
from meshcli.mesh_config import (DEFAULT_LOAD_BALANCER, Abort, CircuitBreaker, Delay, Fault, Mirror, OutlierDetection,
                                 RequestMatch, Retries, Route, Service, ServiceConfig, StringMatch, TcpFault,
                                 TrafficPolicy, Version, WeightedVersion)

HEADER = "apiVersion: meshcli/v1\n"

# payment has two versions; legacy opted out; orders is plain.
COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080", "8081"]}
      orders: {image: orders, ports: ["9090:9090"]}
      legacy: {image: old, x-mesh: {inject: false}}
"""


def versioned(body: str) -> str:
    """A mesh file: the apiVersion line, then `body` (dedented)."""
    return HEADER + textwrap.dedent(body).lstrip("\n")


def located(diag) -> tuple:
    return diag.code, diag.line, diag.column


# --- parse -------------------------------------------------------------------------------


def test_a_valid_file_becomes_the_model(files):
    config = files.mesh(versioned("""
        services:
          payment:
            versions: {stable: payment-v1, next: payment-v2}
            ports: [8080]
            loadBalancer: least-request
          orders:
            ports: []
          empty:
    """))
    assert config.source == files.root / "mesh.yaml"
    assert config.services == {
        "payment": ServiceConfig("payment", {"stable": "payment-v1", "next": "payment-v2"}, "least-request", (8080,)),
        "orders": ServiceConfig("orders", {}, DEFAULT_LOAD_BALANCER),
        "empty": ServiceConfig("empty"),
    }


@pytest.mark.parametrize("text", ["", "# only a comment\n", HEADER, HEADER + "services:\n", HEADER + "services: {}\n"])
def test_an_empty_file_has_no_services(files, text):
    assert files.mesh(text).services == {}


@pytest.mark.parametrize("text, expected", [
    # unknown fields, with a suggestion when one is close
    ("services:\n  payment:\n    loadBalancr: random\n",
     ("MESH0101", 4, 5, 'unknown field "loadBalancr" in service "payment" (did you mean "loadBalancer"?)')),
    ("services:\n  payment:\n    versons: {v1: payment-v1}\n",
     ("MESH0101", 4, 5, '(did you mean "versions"?)')),
    ("services:\n  payment:\n    timeot: 3s\n",
     ("MESH0101", 4, 5, 'unknown field "timeot" in service "payment" (did you mean "timeout"?); '
                        "expected one of: versions, ports, loadBalancer, to, split, timeout, retries, mirror, fault, "
                        "routes, circuitBreaker, outlierDetection, tcpFault")),
    ("service:\n  payment: {}\n",
     ("MESH0101", 2, 1, 'unknown field "service" in the mesh file (did you mean "services"?)')),
    # load balancer
    ("services:\n  payment:\n    loadBalancer: round_robin\n",
     ("MESH0102", 4, 5, 'loadBalancer "round_robin" is not one of: round-robin, random, least-request '
                        '(did you mean "round-robin"?)')),
    ("services:\n  payment:\n    loadBalancer: fastest\n",
     ("MESH0102", 4, 5, 'loadBalancer "fastest" is not one of: round-robin, random, least-request')),
    # ports
    ("services:\n  payment:\n    ports: 8080\n", ("MESH0102", 4, 5, "ports must be a list of port numbers (1-65535)")),
    ("services:\n  payment:\n    ports: [0]\n", ("MESH0102", 4, 5, "ports must be a list")),
    ("services:\n  payment:\n    ports: [65536]\n", ("MESH0102", 4, 5, "ports must be a list")),
    ('services:\n  payment:\n    ports: ["8080"]\n', ("MESH0102", 4, 5, "ports must be a list")),
    ("services:\n  payment:\n    ports: [true]\n", ("MESH0102", 4, 5, "ports must be a list")),
    # versions
    ("services:\n  payment:\n    versions: [payment-v1]\n",
     ("MESH0102", 4, 5, 'service "payment": versions must map a version name to its compose service, '
                        "e.g. `v1: payment-v1`")),
    ("services:\n  payment:\n    versions: payment-v1\n", ("MESH0102", 4, 5, "versions must map")),
    ("services:\n  payment:\n    versions:\n      v1: 42\n",
     ("MESH0102", 5, 7, 'version "v1" must name a compose service, got a number')),
    ("services:\n  payment:\n    versions:\n      v1:\n",
     ("MESH0102", 5, 7, 'version "v1" must name a compose service, got nothing')),
    ("services:\n  payment:\n    versions:\n      v1: ''\n",
     ("MESH0102", 5, 7, 'version "v1" must name a compose service, got an empty string')),
    ("services:\n  payment:\n    versions:\n      v1: [a, b]\n",
     ("MESH0102", 5, 7, 'version "v1" must name a compose service, got a list')),
    # shapes
    ("services: [payment]\n", ("MESH0102", 2, 1, "services must be a mapping, got a list")),
    ("services:\n  payment: [v1]\n", ("MESH0102", 3, 3, 'service "payment" must be a mapping, got a list')),
    ("services:\n  payment: fast\n", ("MESH0102", 3, 3, 'service "payment" must be a mapping, got a string')),
], ids=lambda value: None if isinstance(value, tuple) else value.splitlines()[-1].strip())
def test_one_problem_gives_one_diagnostic_at_its_position(files, text, expected):
    code, line, column, message = expected
    [diag] = files.mesh_errors(HEADER + text)
    assert located(diag) == (code, line, column)
    assert message in diag.message
    assert diag.file == files.root / "mesh.yaml"
    assert diag.is_error


@pytest.mark.parametrize("text, expected", [
    ("services: {}\n", ("MESH0103", 1, 1, 'missing "apiVersion"; expected "meshcli/v1"')),
    ("# a comment\napiVersion: meshcli/v2\nservices: {}\n",
     ("MESH0104", 2, 1, 'unsupported apiVersion "meshcli/v2"; expected "meshcli/v1"')),
    ("apiVersion: 1\n", ("MESH0104", 1, 1, 'unsupported apiVersion "1"')),
    ("- payment\n", ("MESH0102", 1, 1, "the mesh file must be a mapping, got a list")),
    ("just text\n", ("MESH0102", None, None, "the mesh file must be a mapping, got a string")),
])
def test_top_level_problems(files, text, expected):
    code, line, column, message = expected
    [diag] = files.mesh_errors(text)
    assert located(diag) == (code, line, column)
    assert message in diag.message


def test_all_problems_are_reported_at_once(files):
    diags = files.mesh_errors("""
        apiVersion: meshcli/v0
        services:
          payment:
            loadBalancr: random
            ports: [http]
    """)
    assert sorted(located(d) for d in diags) == [("MESH0101", 4, 5), ("MESH0102", 5, 5), ("MESH0104", 1, 1)]


def test_the_error_lists_every_problem_of_every_service(files):
    diags = files.mesh_errors(versioned("""
        services:
          payment: {versions: [a], loadBalancer: nope}
          orders: {ports: 1, extra: 2}
          cart: []
    """))
    assert sorted(located(d) for d in diags) == [
        ("MESH0101", 4, 22), ("MESH0102", 3, 13), ("MESH0102", 3, 28), ("MESH0102", 4, 12), ("MESH0102", 5, 3)]


# --- resolve -----------------------------------------------------------------------------


def test_without_a_mesh_file_every_discovered_workload_is_in_the_mesh(files):
    mesh = files.resolve(COMPOSE)
    assert mesh.project == "shop"
    assert mesh.services == {
        "orders": Service("orders", (Version("v1", "orders"),), (9090,)),
        "payment": Service("payment", (Version("v1", "payment-v1"), Version("v2", "payment-v2")), (8080, 8081)),
    }
    assert sorted(mesh.workloads) == ["orders", "payment-v1", "payment-v2"]


def test_a_mesh_file_naming_what_was_discovered_changes_nothing(files):
    mesh_text = HEADER + "services:\n  payment:\n    versions: {v1: payment-v1, v2: payment-v2}\n  orders: {}\n"
    assert files.resolve(COMPOSE, mesh_text) == files.resolve(COMPOSE)


def test_load_balancer_is_propagated(files):
    mesh = files.resolve(COMPOSE, HEADER + "services:\n  payment:\n    loadBalancer: random\n")
    assert mesh.services["payment"].load_balancer == "random"
    assert mesh.services["orders"].load_balancer == DEFAULT_LOAD_BALANCER


def test_versions_regroup_a_workload_into_another_service(files):
    mesh = files.resolve(COMPOSE, versioned("""
        services:
          billing:
            versions: {stable: payment-v1, next: orders}
            loadBalancer: least-request
    """))
    assert mesh.services["billing"] == Service(
        "billing", (Version("next", "orders"), Version("stable", "payment-v1")), (8080, 9090), "least-request")
    assert mesh.services["payment"].versions == (Version("v2", "payment-v2"),)
    assert "orders" not in mesh.services
    workload = mesh.workloads["payment-v1"]
    assert (workload.name, workload.service, workload.version, workload.ports) == (
        "payment-v1", "billing", "stable", (8080,))


@pytest.mark.parametrize("mesh_text, expected, message", [
    ("services:\n  paymnt: {loadBalancer: random}\n", ("MESH0201", 3, 3),
     'unknown service "paymnt": compose.yaml has no such service (did you mean "payment"?); '
     "known services: orders, payment"),
    ("services:\n  legacy: {}\n", ("MESH0201", 3, 3), 'unknown service "legacy"'),
    ("services:\n  payment:\n    versions:\n      v3: payment-v3\n", ("MESH0202", 5, 7),
     'service "payment" version "v3": no compose service "payment-v3" in compose.yaml (did you mean "payment-v2"?)'),
    ("services:\n  payment:\n    versions:\n      v1: shipping\n", ("MESH0202", 5, 7),
     'no compose service "shipping" in compose.yaml'),
    ("services:\n  payment:\n    versions:\n      old: legacy\n", ("MESH0204", 5, 7),
     'service "payment" version "old": compose service "legacy" is not meshed (opted out with x-mesh.inject: false)'),
    ("services:\n  payment:\n    versions: {v1: payment-v1, v2: payment-v1}\n", ("MESH0203", 4, 32),
     'compose service "payment-v1" is already version "v1" of service "payment"'),
    ("services:\n  payment:\n    versions: {v1: payment-v1}\n  billing:\n    versions: {stable: payment-v1}\n",
     ("MESH0203", 6, 16), 'compose service "payment-v1" is already version "v1" of service "payment"'),
], ids=["unknown-service", "opted-out-service", "unknown-workload", "unknown-workload-far",
        "opted-out-workload", "claimed-twice-same-service", "claimed-twice-two-services"])
def test_resolve_problems(files, mesh_text, expected, message):
    [diag] = files.resolve_errors(COMPOSE, HEADER + mesh_text)
    assert located(diag) == expected
    assert message in diag.message
    assert diag.file == files.root / "mesh.yaml"


def test_resolve_reports_every_problem_at_once(files):
    diags = files.resolve_errors(COMPOSE, versioned("""
        services:
          paymnt: {}
          payment:
            versions: {v1: payment-v1, v9: payment-v9}
          billing:
            versions: {v1: payment-v1, old: legacy}
    """))
    assert sorted(located(d) for d in diags) == [
        ("MESH0201", 3, 3), ("MESH0202", 5, 32), ("MESH0203", 7, 16), ("MESH0204", 7, 32)]


# --- traffic rules: the model --------------------------------------------------------------


def docs_example() -> str:
    """The annotated example of docs/mesh-file.md: the spec, so it must always be valid."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "mesh-file.md").read_text()
    return re.search(r"```yaml\n(.*?)```", text, re.S).group(1)


DOCS_COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080"]}
      frontend: {image: web}
"""


def test_the_docs_example_becomes_the_typed_model(files):
    policy = files.mesh(docs_example()).services["payment"].policy
    assert policy.default_route == Route(
        "default", (), (WeightedVersion("v1", 90), WeightedVersion("v2", 10)), 2000,
        Retries(3, 500, ("5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"), (409,), 25,
                False),
        Mirror("v2", 100.0), Fault(Delay(1000, 100.0), Abort(503, False, 10.0)))
    assert policy.routes == (Route("canary-testers", (RequestMatch(
        path=StringMatch("prefix", "/api"), methods=("GET",), headers=(("x-canary", StringMatch("exact", "true")),),
        query=(("debug", StringMatch("exact", "1")),), source="frontend"),), (WeightedVersion("v2", 100),)),)
    assert policy.circuit_breaker == CircuitBreaker(100, 10, 0)
    assert policy.outlier_detection == OutlierDetection(5, 3, 30_000, 50)
    assert policy.tcp_fault == TcpFault("latency", 100, 20)


def test_the_resolved_service_carries_its_policy(files):
    mesh = files.resolve(DOCS_COMPOSE, docs_example())
    assert mesh.services["payment"].policy == files.mesh(docs_example()).services["payment"].policy
    assert mesh.services["frontend"].policy == TrafficPolicy()


def test_defaults_of_optional_fields(files):
    policy = files.mesh(versioned("""
        services:
          payment:
            retries: {attempts: 2}
            mirror: {version: v2}
            fault: {delay: {fixed: 1.5s}, abort: {reset: true}}
            outlierDetection: {}
            tcpFault: {kind: bandwidth, rate: 64KB/s}
            routes:
              - match: [{headers: {x-debug: {present: true}}, method: [GET, HEAD]}]
                to: v2
              - match: [{path: {regex: "/v[0-9]+/.*"}, query: {Debug: {prefix: "1"}}}]
                split: {v2: 10, v1: 90}
    """)).services["payment"].policy
    assert policy.default_route.retries == Retries(2, None, ("5xx", "connect-failure", "reset"), (), 25, False)
    assert policy.default_route.mirror == Mirror("v2", 100.0)
    assert policy.default_route.fault == Fault(Delay(1500, 100.0), Abort(None, True, 100.0))
    assert policy.outlier_detection == OutlierDetection(5, 0, 30_000, 10)
    assert policy.tcp_fault == TcpFault("bandwidth", rate=64_000)
    first, second = policy.routes
    assert (first.name, second.name) == ("route-1", "route-2")  # unnamed routes are numbered
    assert first.matches == (RequestMatch(methods=("GET", "HEAD"), headers=(("x-debug", StringMatch("present")),)),)
    assert second.matches[0].query == (("Debug", StringMatch("prefix", "1")),)  # query names keep their case
    assert second.split == (WeightedVersion("v1", 90), WeightedVersion("v2", 10))  # sorted by version
    assert first.timeout_ms is first.retries is first.fault is None  # not set: inherited when compiled


@pytest.mark.parametrize("text, ms", [("250ms", 250), ("2s", 2000), ("1.5s", 1500), ("1m", 60_000), ("0s", 0),
                                      ("0.5ms", 0.5), ("1h", 3_600_000)])
def test_durations(text, ms):
    assert durations.parse_ms(text) == ms
    assert type(durations.parse_ms(text)) is type(ms)  # 1500, never 1500.0: the same value, the same JSON


@pytest.mark.parametrize("value, shown", [("2 s", '"2 s"'), (2, "2"), ("-1s", '"-1s"'), ("1d", '"1d"'),
                                          ("s", '"s"'), (True, "true"), (None, "None")])
def test_bad_durations_say_what_is_expected(value, shown):
    with pytest.raises(ValueError) as raised:
        durations.parse_ms(value)
    assert str(raised.value) == f"{shown} is not a duration; expected a number with a unit: 250ms, 2s, 1.5s, 1m"


@pytest.mark.parametrize("value, rate", [("64KB/s", 64_000), ("1MiB/s", 1_048_576), ("512B/s", 512), (100, 100),
                                         ("1.5MB/s", 1_500_000)])
def test_byte_rates(value, rate):
    assert durations.parse_rate(value) == rate


@pytest.mark.parametrize("value", ["64KB", "64 KB/s", "64kb/s", -5, True, "fast"])
def test_bad_byte_rates(value):
    with pytest.raises(ValueError, match="is not a byte rate; expected bytes per second"):
        durations.parse_rate(value)


# --- traffic rules: every validation rule, each at its file:line:column ---------------------

# Each text follows "apiVersion: meshcli/v1\nservices:\n  payment:\n" (lines 1-3), so the
# service's fields start at line 4, column 5.
RULE_PROBLEMS = [
    # unknown fields, with did-you-mean
    ("timeot: 2s", ("MESH0101", 4, 5), 'unknown field "timeot" in service "payment" (did you mean "timeout"?)'),
    ("routes:\n  - nme: canary\n    to: v2",
     ("MESH0101", 5, 9), 'unknown field "nme" in service "payment" route 1 (did you mean "name"?)'),
    ("retries: {attempts: 3, perTryTimout: 1s}",
     ("MESH0101", 4, 28), 'unknown field "perTryTimout" in service "payment" retries (did you mean "perTryTimeout"?)'),
    ("fault: {delay: {fixed: 1s, percnt: 5}}",
     ("MESH0101", 4, 32), 'unknown field "percnt" in service "payment" fault.delay (did you mean "percent"?)'),
    ("circuitBreaker: {maxConnection: 5}",
     ("MESH0101", 4, 22), '(did you mean "maxConnections"?)'),
    ("routes:\n  - match:\n      - header: {x: {exact: a}}",
     ("MESH0101", 6, 13), 'unknown field "header" in service "payment" route 1 match 1 (did you mean "headers"?)'),
    # wrong types
    ("retries: 3", ("MESH0102", 4, 5), 'service "payment" retries must be a mapping, got a number'),
    ("routes: {canary: {to: v2}}", ("MESH0102", 4, 5), 'service "payment": routes must be a list of rules, got a mapping'),
    ("retries: {attempts: true}", ("MESH0102", 4, 15), "retries.attempts must be a whole number, got a boolean"),
    ("retries: {attempts: 1, retryNonIdempotent: yes}",
     ("MESH0102", 4, 28), "retries.retryNonIdempotent must be true or false, got a string"),
    ("to: [v1]", ("MESH0102", 4, 5), 'service "payment": to must be a non-empty string, got a list'),
    ("split: [v1, v2]", ("MESH0102", 4, 5), "split must map version names to percentages, e.g. `split: {v1: 90, v2: 10}`"),
    ("split: {v1: 50.5, v2: 50}", ("MESH0102", 4, 13), 'split weight of version "v1" must be a whole number, got a number'),
    ("mirror: {version: v2, percent: half}", ("MESH0102", 4, 27), "mirror.percent must be a number, got a string"),
    # durations
    ("timeout: 2 s", ("MESH0105", 4, 5),
     'service "payment": timeout: "2 s" is not a duration; expected a number with a unit: 250ms, 2s, 1.5s, 1m'),
    ("timeout: 2", ("MESH0105", 4, 5), "timeout: 2 is not a duration; expected a number with a unit"),
    ("retries: {attempts: 2, perTryTimeout: 5sec}",
     ("MESH0105", 4, 28), 'retries.perTryTimeout: "5sec" is not a duration'),
    ("fault: {delay: {fixed: -1s}}", ("MESH0105", 4, 21), 'fault.delay.fixed: "-1s" is not a duration'),
    ("outlierDetection: {baseEjectionTime: 30}", ("MESH0105", 4, 24), "baseEjectionTime: 30 is not a duration"),
    # percentages and other numbers out of range, negative numbers
    ("mirror: {version: v2, percent: 120}",
     ("MESH0106", 4, 27), 'service "payment": mirror.percent is 120; it must be from 0 to 100'),
    ("fault: {abort: {httpStatus: 503, percent: -5}}", ("MESH0106", 4, 38), "fault.abort.percent is -5"),
    ("fault: {delay: {fixed: 1s, percent: 100.5}}", ("MESH0106", 4, 32), "fault.delay.percent is 100.5"),
    ("split: {v1: 110, v2: 0}", ("MESH0106", 4, 13), 'split weight of version "v1" is 110; it must be from 0 to 100'),
    ("split: {v1: 100, v2: -10}", ("MESH0106", 4, 22), 'split weight of version "v2" is -10'),
    ("retries: {attempts: -1}", ("MESH0106", 4, 15), "retries.attempts is -1; it must be from 0 to 10"),
    ("circuitBreaker: {maxConnections: -1}", ("MESH0106", 4, 22), "circuitBreaker.maxConnections is -1; it must be from 0 to 2147483647"),
    ("outlierDetection: {maxEjectionPercent: 150}", ("MESH0106", 4, 24), "maxEjectionPercent is 150"),
    ("tcpFault: {kind: limit-data, bytes: -1}", ("MESH0106", 4, 34), "tcpFault.bytes is -1; it must be from 0 to 2147483647"),
    ("retries: {attempts: 1, retriableStatusCodes: [409, 700]}",
     ("MESH0106", 4, 56), "retries.retriableStatusCodes: 700 is not an HTTP status code (100-599)"),
    # abort status
    ("fault: {abort: {httpStatus: 600}}",
     ("MESH0106", 4, 21), 'service "payment": fault.abort.httpStatus is 600; it must be from 200 to 599'),
    ("fault: {abort: {httpStatus: 101}}", ("MESH0106", 4, 21), "fault.abort.httpStatus is 101"),
    ("fault: {abort: {httpStatus: 503, reset: true}}", ("MESH0108", 4, 38), "use httpStatus or reset, not both"),
    ("fault: {abort: {percent: 10}}", ("MESH0103", 4, 13), 'fault.abort: missing "httpStatus" (or "reset: true")'),
    ("fault: {abort: {reset: false}}", ("MESH0102", 4, 21), "fault.abort.reset must be true"),
    ("fault: {}", ("MESH0103", 4, 5), "fault needs delay, abort or both"),
    # weights
    ("split: {v1: 90, v2: 20}",
     ("MESH0107", 4, 5), 'split weights of service "payment" sum to 110; they must sum to 100'),
    ("routes:\n  - name: canary\n    split: {v1: 50}",
     ("MESH0107", 6, 9), 'split weights of service "payment" route "canary" sum to 50; they must sum to 100'),
    # to and split together
    ("split: {v1: 100}\nto: v2",
     ("MESH0108", 5, 5), 'service "payment": `to` and `split` cannot be used together; `to: v2` is short for'),
    # regex
    ("routes:\n  - match: [{path: {regex: \"/api/(\"}}]\n    to: v2",
     ("MESH0109", 5, 25), 'service "payment" route 1 match 1 path: invalid regex "/api/(": missing ), unterminated'),
    ("routes:\n  - match: [{headers: {x-id: {regex: '[a-'}}}]\n    to: v2",
     ("MESH0109", 5, 35), 'header "x-id": invalid regex "[a-"'),
    # match kinds and conditions
    ("routes:\n  - match: [{headers: {x-canary: {exakt: \"true\"}}}]\n    to: v2",
     ("MESH0101", 5, 39), 'unknown match kind "exakt" in service "payment" route 1 match 1 header "x-canary" '
                          '(did you mean "exact"?); expected one of: exact, prefix, regex, present'),
    ("routes:\n  - match: [{path: {present: true}}]\n    to: v2",
     ("MESH0101", 5, 25), 'unknown match kind "present" in service "payment" route 1 match 1 path'),
    ("routes:\n  - match: [{headers: {x-canary: {exact: true}}}]\n    to: v2",
     ("MESH0102", 5, 39), 'header "x-canary": exact must be a string, got a boolean; quote it, e.g. "true"'),
    ("routes:\n  - match: [{headers: {x-canary: {exact: a, prefix: b}}}]\n    to: v2",
     ("MESH0102", 5, 28), 'header "x-canary" must be one condition: {exact: ...}, {prefix: ...}, {regex: ...}, '
                          "{present: true}; got a mapping"),
    ("routes:\n  - match: [{query: {debug: {present: false}}}]\n    to: v2",
     ("MESH0102", 5, 34), 'query parameter "debug": present must be true'),
    ("routes:\n  - match: [{method: get}]\n    to: v2",
     ("MESH0102", 5, 18), 'method "get" is not one of: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH '
                          '(did you mean "GET"?)'),
    ("routes:\n  - match: [{method: [GET, FETCH]}]\n    to: v2", ("MESH0102", 5, 32), 'method "FETCH" is not one of'),
    ("routes:\n  - match: []\n    to: v2", ("MESH0102", 5, 9), "match must be a non-empty list of conditions"),
    ("routes:\n  - match: [{}]\n    to: v2",
     ("MESH0103", 5, 17), "match 1 needs at least one of: headers, path, method, query, source"),
    # a route without match must be the last
    ("routes:\n  - name: catch-all\n    to: v1\n  - match: [{path: {prefix: /api}}]\n    to: v2",
     ("MESH0110", 5, 9), 'service "payment" route "catch-all" has no match, so it takes every request and the '
                         "routes after it are never used; give it a match or move it last"),
    ("routes:\n  - {name: a, match: [{source: x}], to: v1}\n  - {name: a, match: [{source: y}], to: v1}",
     ("MESH0111", 6, 10), 'route name "a" is already used by route 1'),
    # retries
    ("retries: {attempts: 3, retryOn: [5xxx]}",
     ("MESH0102", 4, 38), 'retries.retryOn: "5xxx" is not one of: 5xx, gateway-error, connect-failure, reset, '
                          'retriable-status-codes (did you mean "5xx"?)'),
    ("retries: {attempts: 3, retryOn: 5xx}", ("MESH0102", 4, 28), "retries.retryOn must be a list, got a string"),
    ("retries: {perTryTimeout: 1s}", ("MESH0103", 4, 5), 'service "payment": retries: missing "attempts"'),
    ("mirror: {percent: 5}", ("MESH0103", 4, 5), 'mirror: missing "version"'),
    # TCP faults
    ("tcpFault: {kind: latncy, latency: 1s}",
     ("MESH0102", 4, 16), 'tcpFault.kind "latncy" is not one of: latency, bandwidth, reset, blackhole, limit-data, '
                          'slicer (did you mean "latency"?)'),
    ("tcpFault: {latency: 1s}", ("MESH0103", 4, 5), 'tcpFault: missing "kind"; expected one of: latency, bandwidth'),
    ("tcpFault: {kind: reset, latency: 1s}",
     ("MESH0101", 4, 29), 'tcpFault: a reset fault does not take "latency"; it takes: kind, percent'),
    ("tcpFault: {kind: bandwidth}", ("MESH0103", 4, 5), 'tcpFault of kind bandwidth: missing "rate"'),
    ("tcpFault: {kind: slicer, latency: 5ms}", ("MESH0103", 4, 5), 'tcpFault of kind slicer: missing "bytes"'),
    ("tcpFault: {kind: bandwidth, rate: 64 KB}", ("MESH0105", 4, 33), 'tcpFault.rate: "64 KB" is not a byte rate'),
    # mTLS and authorization
    ("mtls: STRIC", ("MESH0102", 4, 5), 'mtls "STRIC" is not one of: STRICT, PERMISSIVE, DISABLE (did you mean "STRICT"?)'),
    ("authorization:\n  - {name: a, action: ALOW}", ("MESH0102", 5, 19), 'action "ALOW" is not one of: ALLOW, DENY'),
    ("authorization:\n  - {name: a, action: DENY, rules: [{path: {regex: x}}]}",
     ("MESH0101", 5, 49), 'unknown match kind "regex" in service "payment" authorization policy "a" rule 1 path; '
                          "expected one of: exact, prefix, present, suffix"),
    ("authorization:\n  - {action: DENY}", ("MESH0103", 5, 9), 'authorization policy 1: missing "name"'),
    ("authorization:\n  - {name: a, action: DENY, rules: [{port: 0}]}",
     ("MESH0102", 5, 42), "rule 1: port must be a port number (1-65535) or a list of them"),
    ("authorization:\n  - {name: a, action: DENY, rules: [{sourc: x}]}",
     ("MESH0101", 5, 42), 'unknown field "sourc" in service "payment" authorization policy "a" rule 1 (did you mean '
                          '"source"?)'),
    ("tcpFault: {kind: latency, latency: 1s, speed: 2}",
     ("MESH0101", 4, 44), 'unknown field "speed" in service "payment" tcpFault; expected one of: kind, latency'),
]


@pytest.mark.parametrize("text, expected, message", RULE_PROBLEMS, ids=[case[0] for case in RULE_PROBLEMS])
def test_each_rule_gives_one_diagnostic_at_its_position(files, text, expected, message):
    body = "".join(f"    {line}\n" for line in text.splitlines())
    [diag] = files.mesh_errors(HEADER + "services:\n  payment:\n" + body)
    assert located(diag) == expected, diag.message
    assert message in diag.message
    assert diag.file == files.root / "mesh.yaml"


# --- traffic rules against the compose project: versions and sources must exist -------------


@pytest.mark.parametrize("mesh_text, expected, message", [
    ("services:\n  payment:\n    versions: {stable: payment-v1, canary: payment-v2}\n    split: {stable: 90, canery: 10}\n",
     ("MESH0205", 5, 25), 'service "payment": unknown version "canery" (did you mean "canary"?); '
                          "payment has: canary, stable"),
    ("services:\n  payment:\n    to: v3\n", ("MESH0205", 4, 5), 'service "payment": unknown version "v3"; payment has: v1, v2'),
    ("services:\n  payment:\n    mirror: {version: v9}\n",
     ("MESH0205", 4, 14), 'service "payment": mirror to unknown version "v9"; payment has: v1, v2'),
    ("services:\n  payment:\n    routes:\n      - name: beta\n        match: [{source: orders}]\n        split: {v1: 50, v2: 25, v4: 25}\n",
     ("MESH0205", 7, 33), 'service "payment" route "beta": unknown version "v4"'),
    ("services:\n  payment:\n    routes:\n      - match: [{source: order}]\n        to: v2\n",
     ("MESH0206", 5, 18), 'service "payment" route "route-1": unknown source "order": no service of the mesh has '
                          'that name (did you mean "orders"?)'),
    ("services:\n  orders:\n    to: v2\n", ("MESH0205", 4, 5), 'service "orders": unknown version "v2"; orders has: v1'),
], ids=["split", "to", "mirror", "route-split", "source", "single-version"])
def test_rules_name_known_versions_and_sources(files, mesh_text, expected, message):
    [diag] = files.resolve_errors(COMPOSE, HEADER + mesh_text)
    assert located(diag) == expected, diag.message
    assert message in diag.message


def test_regrouped_versions_are_the_ones_rules_may_name(files):
    mesh = files.resolve(COMPOSE, versioned("""
        services:
          billing:
            versions: {stable: payment-v1, next: orders}
            split: {stable: 80, next: 20}
            routes:
              - match: [{source: payment}]
                to: next
    """))
    assert mesh.services["billing"].policy.default_route.split == (
        WeightedVersion("next", 20), WeightedVersion("stable", 80))


def test_parse_and_resolve_reports_the_problems_of_both_at_once(files):
    path = files.write("mesh.yaml", versioned("""
        services:
          paymnt: {}
          payment:
            timeout: 2 s
            split: {v1: 90, v3: 10}
            retries: {attempts: 3, retryOn: [5xxx]}
    """))
    project = files.compose(COMPOSE)
    diags = diagnostics_of(mesh_config.parse_and_resolve, yaml_source.load(path), project)
    assert [located(d) for d in diags] == [
        ("MESH0201", 3, 3), ("MESH0105", 5, 5), ("MESH0205", 6, 21), ("MESH0102", 7, 38)]


def test_parse_and_resolve_of_a_valid_file(files):
    path = files.write("mesh.yaml", docs_example())
    config, mesh = mesh_config.parse_and_resolve(yaml_source.load(path), files.compose(DOCS_COMPOSE))
    assert config.services["payment"].policy == mesh.services["payment"].policy
    assert mesh_config.parse_and_resolve(None, files.compose(DOCS_COMPOSE))[0] is None


# --- meshcli init: the commented examples are valid rules ------------------------------------


def test_the_starter_files_rule_examples_validate_when_uncommented(files):
    project = files.compose(COMPOSE)
    text = mesh_init.starter(project)
    assert "    # split: {v1: 90, v2: 10}" in text and "    # timeout: 2s" in text and "    # retries: {" in text
    uncommented = re.sub(r"^    # ((?:split|timeout|retries): .*?)(?:   # .*)?$", r"    \1", text, flags=re.M)
    assert uncommented != text
    config = mesh_config.parse(yaml_source.load(files.root / "mesh.yaml", uncommented))
    mesh = mesh_config.resolve(config, project)
    payment = mesh.services["payment"].policy.default_route
    assert (payment.split, payment.timeout_ms, payment.retries.attempts) == (
        (WeightedVersion("v1", 90), WeightedVersion("v2", 10)), 2000, 3)


# --- meshcli validate ----------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, "".join(captured.err.splitlines())  # undo rich's wrapping of long lines


BAD_RULES = """
    apiVersion: meshcli/v1
    services:
      paymnt: {}
      payment:
        split: {v1: 90, v2: 20}
        timeout: soon
        routes:
          - to: v1
          - match: [{headers: {x-canary: {exakt: "true"}}}]
            to: v3
"""


def test_validate_prints_every_error_with_its_position_and_exits_2(capsys, files):
    compose = files.write("compose.yaml", COMPOSE)
    files.write("mesh.yaml", BAD_RULES)
    code, out, err = run(capsys, "validate", "-f", str(compose))
    assert code == 2 and out == ""
    mesh = files.root / "mesh.yaml"
    for expected in (f"{mesh}:3:3: error MESH0201: unknown service \"paymnt\"",
                     f'{mesh}:5:5: error MESH0107: split weights of service "payment" sum to 110',
                     f'{mesh}:6:5: error MESH0105: service "payment": timeout: "soon" is not a duration',
                     f"{mesh}:8:9: error MESH0110: service \"payment\" route 1 has no match",
                     f'{mesh}:9:39: error MESH0101: unknown match kind "exakt"',
                     f'{mesh}:10:9: error MESH0205: service "payment" route "route-2": unknown version "v3"'):
        assert expected in err
    assert "6 errors; nothing was changed" in err


def test_validate_json_lists_the_same_diagnostics(capsys, files):
    compose = files.write("compose.yaml", COMPOSE)
    files.write("mesh.yaml", BAD_RULES)
    code, out, _ = run(capsys, "validate", "-f", str(compose), "--json")
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False
    assert [(d["code"], d["line"], d["column"]) for d in report["diagnostics"]] == [
        ("MESH0201", 3, 3), ("MESH0107", 5, 5), ("MESH0105", 6, 5), ("MESH0110", 8, 9), ("MESH0101", 9, 39),
        ("MESH0205", 10, 9)]


def test_validate_accepts_the_docs_example(capsys, files):
    compose = files.write("compose.yaml", DOCS_COMPOSE)
    files.write("mesh.yaml", docs_example())
    code, _, err = run(capsys, "validate", "-f", str(compose))
    assert code == 0
    assert "valid (2 services, 3 workloads)" in err


def test_every_problem_of_one_block_is_reported(files):
    diags = files.mesh_errors(HEADER + "services:\n  payment:\n"
                              "    retries: {perTryTimeout: 5, retryOn: [x], backoff: soon, retryNonIdempotent: 1}\n")
    assert [located(d) for d in diags] == [
        ("MESH0103", 4, 5), ("MESH0102", 4, 43), ("MESH0105", 4, 15), ("MESH0105", 4, 47), ("MESH0102", 4, 62)]


@pytest.mark.parametrize("text, location, says", [
    ("apiVersion: meshcli/v1\nservices:\n  payment:\n    split: {v1: 90, v2: 10\n    timeout: 2s\n",
     ":5:12:", "(a flow mapping that starts at line 4, column 12)"),
    ("apiVersion: meshcli/v1\nservices:\n\tpayment: {}\n", ":3:1:", "indent with spaces, not tabs"),
    ("apiVersion: meshcli/v1\nservices:\n  payment:\n    timeout: 1s\n   retries: {attempts: 2}\n",
     ":5:4:", "check the indentation"),
])
def test_yaml_syntax_errors_say_where_the_construct_began_and_the_usual_cause(text, location, says):
    from meshcli.errors import InvalidFileError

    with pytest.raises(InvalidFileError) as raised:
        yaml_source.load(Path("mesh.yaml"), text)
    [diagnostic] = raised.value.diagnostics
    assert diagnostic.location.endswith(location[:-1]) and says in diagnostic.message
