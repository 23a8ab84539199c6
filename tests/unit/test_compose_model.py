"""Discovery in the user's compose file: workloads, versions, ports, opt-outs and bad input."""

from __future__ import annotations

import json

import pytest

from meshcli import compose_model
from meshcli.compose_model import Workload
from meshcli.diagnostics import Level
from meshcli.errors import InputError, InvalidFileError


def only_service(files, body: str, name: str = "web"):
    """Load a compose file with one service `name` whose body is the given YAML."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return files.compose(f"services:\n  {name}:\n{indented}\n")


# --- versions --------------------------------------------------------------------------


@pytest.mark.parametrize("name, service, version", [
    ("payment-v1", "payment", "v1"),
    ("payment-v12", "payment", "v12"),
    ("my-shop-api-v3", "my-shop-api", "v3"),
    ("payment", "payment", "v1"),  # no suffix: the default version
    ("payment-va", "payment-va", "v1"),  # not -v<digits>
    ("payment-V2", "payment-V2", "v1"),  # case matters, like in Kubernetes labels
    ("v2", "v2", "v1"),  # a suffix needs a name before it
])
def test_version_is_inferred_from_a_vN_suffix(files, name, service, version):
    project = only_service(files, "image: app", name=name)
    assert project.workloads[name] == Workload(name, service, version, ())


@pytest.mark.parametrize("labels", [
    "labels: {mesh.service: billing, mesh.version: canary}",
    "labels: [mesh.service=billing, mesh.version=canary]",
    "labels:\n  - mesh.service=billing\n  - mesh.version=canary\n  - team=core",
], ids=["dict", "flow-list", "block-list"])
def test_labels_name_the_service_and_version_and_win_over_the_suffix(files, labels):
    project = only_service(files, f"image: app\n{labels}", name="payment-v3")
    workload = project.workloads["payment-v3"]
    assert (workload.service, workload.version) == ("billing", "canary")


@pytest.mark.parametrize("name, labels, expected", [
    ("payment-v3", "{mesh.service: billing}", ("billing", "v3")),  # version still from the suffix
    ("payment", "{mesh.version: beta}", ("payment", "beta")),  # service from the name
    ("payment-v2", "[mesh.version=v9]", ("payment", "v9")),
])
def test_one_label_combines_with_the_name(files, name, labels, expected):
    project = only_service(files, f"image: app\nlabels: {labels}", name=name)
    assert (project.workloads[name].service, project.workloads[name].version) == expected


def test_workloads_are_grouped_into_logical_services(files):
    project = files.compose("""
        services:
          payment-v1: {image: pay, expose: ["8080"]}
          payment-v2: {image: pay, expose: ["8081"]}
          ledger: {image: pay, labels: {mesh.service: payment, mesh.version: v3}}
          orders: {image: orders, profiles: [full]}
    """)
    assert "orders" not in project.services  # its profile is off, as for `docker compose up`
    project = compose_model.load(compose_model.ComposeOptions(files=(str(files.root / "compose.yaml"),),
                                                              profiles=("full",)))
    grouped = project.logical_services()
    assert sorted(grouped) == ["orders", "payment"]
    assert sorted((w.name, w.version) for w in grouped["payment"]) == [
        ("ledger", "v3"), ("payment-v1", "v1"), ("payment-v2", "v2")]
    assert project.workloads["payment-v2"].ports == (8081,)
    assert project.workloads["orders"].profiles == ("full",)
    assert project.skipped == {} and project.diagnostics == []


# --- services that are left alone --------------------------------------------------------


@pytest.mark.parametrize("setting, reason", [
    ("x-mesh: {inject: false}", "opted out with x-mesh.inject: false"),
    ('x-mesh: {inject: "false"}', "opted out with x-mesh.inject: false"),
    ('labels: {mesh.inject: "false"}', 'opted out with label mesh.inject: "false"'),
    ("labels: [mesh.inject=false]", 'opted out with label mesh.inject: "false"'),
    ('labels: {mesh.inject: "FALSE"}', 'opted out with label mesh.inject: "false"'),
])
def test_a_service_can_opt_out(files, setting, reason):
    project = files.compose(f"""
        services:
          web: {{image: app}}
          legacy:
            image: old
            {setting}
    """)
    assert list(project.workloads) == ["web"]
    assert project.skipped == {"legacy": reason}
    [diag] = project.diagnostics
    assert (diag.code, diag.level, diag.line, diag.column) == ("MESH0302", Level.INFO, 3, 3)
    assert diag.message == f"service 'legacy' is not meshed: {reason}"
    assert diag.file == files.root / "compose.yaml"


@pytest.mark.parametrize("setting", [
    "x-mesh: {inject: true}", 'labels: {mesh.inject: "true"}', "x-mesh: {}", "labels: [mesh.inject]",
])
def test_anything_but_false_keeps_a_service_in_the_mesh(files, setting):
    project = only_service(files, f"image: app\n{setting}")
    assert list(project.workloads) == ["web"] and project.skipped == {}


@pytest.mark.parametrize("mode", ["host", "none", "container:abc123", "service:db"])
def test_a_network_mode_without_an_own_namespace_cannot_be_meshed(files, mode):
    project = files.compose(f"""
        services:
          db: {{image: postgres}}
          # a comment line, so the service sits on line 4
          web:
            image: app
            network_mode: "{mode}"
    """)
    assert list(project.workloads) == ["db"]
    reason = f'network_mode "{mode}" leaves no network namespace of its own to intercept'
    assert project.skipped == {"web": reason}
    [diag] = project.diagnostics
    assert (diag.code, diag.level, diag.line, diag.column) == ("MESH0301", Level.WARNING, 4, 3)
    assert reason in diag.message


def test_a_network_mode_with_an_own_namespace_is_meshed(files):
    project = only_service(files, "image: app\nnetwork_mode: bridge")
    assert list(project.workloads) == ["web"]


def test_network_mode_is_reported_before_an_opt_out(files):
    project = only_service(files, "image: app\nnetwork_mode: host\nx-mesh: {inject: false}")
    assert [d.code for d in project.diagnostics] == ["MESH0301"]


@pytest.mark.parametrize("setting, count", [
    ("deploy: {replicas: 3}", "3"),
    ('deploy: {replicas: "2"}', "2"),
    ("scale: 2", "2"),
])
def test_more_than_one_replica_is_a_warning_and_not_meshed(files, setting, count):
    project = only_service(files, f"image: app\n{setting}")
    assert project.workloads == {}
    assert project.skipped == {"web": f"{count} replicas: one pod per replica is not supported yet"}
    assert [(d.code, d.level) for d in project.diagnostics] == [("MESH0303", Level.WARNING)]


@pytest.mark.parametrize("setting", ["deploy: {replicas: 1}", "scale: 1", "deploy: {resources: {}}"])
def test_a_single_replica_is_meshed(files, setting):
    assert list(only_service(files, f"image: app\n{setting}").workloads) == ["web"]


# --- container ports ---------------------------------------------------------------------


@pytest.mark.parametrize("service, ports", [
    ({"ports": ["8080"]}, (8080,)),
    ({"ports": [8080]}, (8080,)),
    ({"ports": ["80:8080"]}, (8080,)),
    ({"ports": ["127.0.0.1:80:8080/tcp"]}, (8080,)),
    ({"ports": ["127.0.0.1::8080"]}, (8080,)),
    ({"ports": ["[::1]:80:8080"]}, (8080,)),
    ({"ports": ["${WEB_PORT:-80}:8080"]}, (8080,)),
    ({"ports": ["53:53/udp"]}, ()),
    ({"ports": ["9999/sctp"]}, ()),
    ({"ports": ["3000-3002"]}, (3000, 3001, 3002)),
    ({"ports": ["4000-4001:3000-3001"]}, (3000, 3001)),
    ({"ports": [{"target": 8080, "published": 80}]}, (8080,)),
    ({"ports": [{"target": "9090", "protocol": "tcp"}]}, (9090,)),
    ({"ports": [{"target": 53, "protocol": "udp"}]}, ()),
    ({"expose": ["9000"]}, (9000,)),
    ({"expose": [9000, "9001/tcp", "53/udp"]}, (9000, 9001)),
    ({"expose": ["7000-7001"]}, (7000, 7001)),
    ({"ports": ["80:8080", "8443:8443"], "expose": ["8080", "22"]}, (22, 8080, 8443)),
    ({}, ()),
], ids=lambda value: str(value) if isinstance(value, dict) else None)
def test_container_ports(files, service, ports):
    """As compose resolves them: read from the canonical model."""
    assert only_service(files, json.dumps({"image": "app", **service})).workloads["web"].ports == ports


def test_workload_ports_are_read_from_the_yaml(files):
    project = only_service(files, 'image: app\nports:\n  - "127.0.0.1:80:8080"\n  - 53:53/udp\nexpose: [9000]')
    assert project.workloads["web"].ports == (8080, 9000)


# --- project name ------------------------------------------------------------------------


def test_project_name_is_the_one_compose_gives(files, tmp_path):
    """The directory's name normalised, the file's `name:`, then -p: compose's rules, not ours."""
    assert files.compose("services: {}").name == "shop"
    assert files.compose("name: big-shop\nservices: {}").name == "big-shop"
    odd = tmp_path / "My Shop.2"
    odd.mkdir()
    (odd / "compose.yaml").write_text("services: {}\n")
    assert compose_model.load(odd / "compose.yaml").name == "myshop2"
    options = compose_model.ComposeOptions(files=(str(files.root / "compose.yaml"),), project_name="over_ride")
    assert compose_model.load(options).name == "over_ride"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, line, column", [
    ("services:\n  web: {image: app\n", 3, 1),
    ("services:\n\tweb: {}\n", 2, 1),
    ("services: x: y\n", 1, 12),
    ("services:\n  web:\n    image: app\n   bad\n", 4, 4),
])
def test_not_yaml_is_mesh0001_with_line_and_column(files, text, line, column):
    [diag] = files.compose_errors(text)
    assert (diag.code, diag.line, diag.column) == ("MESH0001", line, column)
    assert diag.message.startswith("invalid YAML: ")
    assert diag.file == files.root / "compose.yaml"


@pytest.mark.parametrize("text, line, column, message", [
    ("- web\n- db\n", 1, 1, "a compose file must be a mapping"),
    ("", None, None, "a compose file must be a mapping"),
    ("just a string\n", None, None, "a compose file must be a mapping"),
    ("name: shop\nservices:\n  - web\n", 2, 1, "not a compose file: expected a top-level `services` mapping"),
], ids=["list", "empty", "scalar", "services-list"])
def test_not_a_compose_file_is_mesh0002(files, text, line, column, message):
    [diag] = files.compose_errors(text)
    assert (diag.code, diag.line, diag.column) == ("MESH0002", line, column)
    assert message in diag.message


def test_every_service_that_is_not_a_mapping_is_reported(files):
    diags = files.compose_errors("""
        services:
          web: {image: app}
          db: postgres
          cache:
          queue: [rabbitmq]
    """)
    assert [(d.code, d.line, d.column) for d in diags] == [
        ("MESH0002", 3, 3), ("MESH0002", 4, 3), ("MESH0002", 5, 3)]
    assert [d.message for d in diags] == [
        "service 'db' must be a mapping", "service 'cache' must be a mapping", "service 'queue' must be a mapping"]


def test_a_missing_file_is_reported_as_compose_reports_it(files):
    with pytest.raises(InputError) as info:
        compose_model.load(files.root / "missing.yaml")
    assert info.value.message == f"open {files.root / 'missing.yaml'}: no such file or directory"
    assert info.value.exit_code == 2


def test_the_error_summary_names_the_first_problem_and_counts_the_rest(files):
    with pytest.raises(InvalidFileError) as info:
        files.compose("services:\n  a: 1\n  b: 2\n  c: 3\n")
    assert str(info.value) == f"{files.root / 'compose.yaml'}:2:3: service 'a' must be a mapping (and 2 more errors)"
    assert info.value.exit_code == 2
