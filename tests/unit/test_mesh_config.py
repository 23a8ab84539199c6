"""The mesh file: parse() checks its shape, resolve() checks it against the compose project."""

from __future__ import annotations

import textwrap

import pytest

from meshcli.mesh_config import DEFAULT_LOAD_BALANCER, Service, ServiceConfig, Version

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
        "payment": ServiceConfig("payment", {"stable": "payment-v1", "next": "payment-v2"}, "least-request"),
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
    ("services:\n  payment:\n    timeout: 3s\n",
     ("MESH0101", 4, 5, 'unknown field "timeout" in service "payment"; expected one of: versions, ports, loadBalancer')),
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
