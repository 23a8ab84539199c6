"""The CLI for render, validate, init and --version, through main(argv) and its exit codes."""

from __future__ import annotations

import json

import pytest
import yaml

from meshcli import __version__, mesh_config, yaml_source
from meshcli.cli.main import main

COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080"]}
      orders: {image: orders, ports: ["9090:9090"]}
      debug: {image: busybox, network_mode: "service:orders"}
      legacy: {image: old, x-mesh: {inject: false}}
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr with rich's line wrapping undone) of `meshcli argv...`."""
    code = main(list(argv))
    captured = capsys.readouterr()
    # Rich wraps stderr at the console width; a location has no spaces, so joining the lines
    # without a separator restores any "file:line:column" it folded.
    return code, captured.out, "".join(captured.err.splitlines())


@pytest.fixture
def compose(files):
    return files.write("compose.yaml", COMPOSE)


def test_render_writes_the_meshed_compose_file(capsys, files, compose):
    code, _, err = run(capsys, "render", "-f", str(compose))
    rendered = files.root / ".mesh" / "shop" / "compose.yaml"
    assert code == 0
    assert f"wrote {rendered} (3 meshed, 2 left alone)" in err
    # the services left alone are mentioned, with their location
    assert f"{compose}:5:3: warning MESH0301" in err and f"{compose}:6:3: info MESH0302" in err
    services = yaml.safe_load(rendered.read_text())["services"]
    assert {"payment-v1-pod", "payment-v2-sidecar", "orders-pod", "orders-sidecar"} <= set(services)
    assert services["debug"]["network_mode"] == "service:orders-pod"
    assert not {"legacy-pod", "debug-pod"} & set(services)


def test_render_json_to_another_output(capsys, files, compose):
    target = files.root / "out" / "meshed.yaml"
    target.parent.mkdir(parents=True)
    code, out, _ = run(capsys, "render", "-f", str(compose), "-o", str(target), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["output"] == str(target) and target.is_file()
    assert report["project"] == "shop"
    assert report["workloads"]["payment-v2"] == {"service": "payment", "version": "v2"}
    assert report["skipped"] == {
        "debug": 'network_mode "service:orders" leaves no network namespace of its own to intercept',
        "legacy": "opted out with x-mesh.inject: false",
    }


@pytest.mark.parametrize("compose_text, mesh_text, location, code", [
    ("services:\n  web: {image: app\n", None, ("compose.yaml", 3, 1), "MESH0001"),
    ("services:\n  web: nginx\n", None, ("compose.yaml", 2, 3), "MESH0002"),
    ("services:\n  web: {image: app}\n", "apiVersion: meshcli/v1\nservices:\n  wbe: {}\n", ("mesh.yaml", 3, 3),
     "MESH0201"),
    ("services:\n  web: {image: app}\n", "apiVersion: meshcli/v1\nservices:\n  web: {loadBalancr: random}\n",
     ("mesh.yaml", 3, 9), "MESH0101"),
], ids=["not-yaml", "service-not-mapping", "unknown-mesh-service", "unknown-mesh-field"])
def test_render_of_a_bad_file_exits_2_with_its_location_and_writes_nothing(
        capsys, files, compose_text, mesh_text, location, code):
    compose = files.write("compose.yaml", compose_text)
    if mesh_text:
        files.write("mesh.yaml", mesh_text)
    exit_code, out, err = run(capsys, "render", "-f", str(compose))
    name, line, column = location
    assert exit_code == 2
    assert f"{files.root / name}:{line}:{column}: error {code}" in err
    assert "nothing was changed" in err
    assert out == ""
    assert not (files.root / ".mesh").exists()


def test_render_of_a_missing_file_exits_2(capsys, files):
    code, _, err = run(capsys, "render", "-f", str(files.root / "nope.yaml"))
    assert code == 2 and f"open {files.root / 'nope.yaml'}: no such file or directory" in err


def test_init_stdout_prints_a_mesh_file_that_validates(capsys, files, compose):
    code, out, _ = run(capsys, "init", "-f", str(compose), "--stdout")
    assert code == 0
    assert not (files.root / "mesh.yaml").exists()
    config = mesh_config.parse(yaml_source.load(files.root / "mesh.yaml", out))
    assert config.services["payment"].versions == {"v1": "payment-v1", "v2": "payment-v2"}
    assert sorted(config.services) == ["orders", "payment"]
    assert "# legacy: not meshed - opted out with x-mesh.inject: false" in out

    files.write("mesh.yaml", out)
    code, _, err = run(capsys, "validate", "-f", str(compose))
    assert code == 0
    assert f"{files.root / 'mesh.yaml'}: valid (2 services, 3 workloads)" in err


def test_init_writes_once_and_overwrites_only_with_force(capsys, files, compose):
    mesh = files.root / "mesh.yaml"
    assert run(capsys, "init", "-f", str(compose))[0] == 0
    first = mesh.read_text()
    assert "apiVersion: meshcli/v1" in first

    mesh.write_text("# mine\n")
    code, _, err = run(capsys, "init", "-f", str(compose))
    assert code == 2
    assert f"{mesh} exists" in err and "--force" in err
    assert mesh.read_text() == "# mine\n"

    assert run(capsys, "init", "-f", str(compose), "--force")[0] == 0
    assert mesh.read_text() == first


BAD_MESH = """
    apiVersion: meshcli/v2
    services:
      paymnt: {}
      payment: {loadBalancer: fastest}
"""


def test_validate_json_lists_every_error(capsys, files, compose):
    files.write("mesh.yaml", BAD_MESH)
    _, out, _ = run(capsys, "validate", "-f", str(compose), "--json")
    report = json.loads(out)
    assert report["ok"] is False
    assert sorted((d["code"], d["line"], d["column"]) for d in report["diagnostics"]) == [
        ("MESH0102", 4, 13), ("MESH0104", 1, 1), ("MESH0201", 3, 3)]  # the file's shape and its services at once
    assert all(d["level"] == "error" and d["file"] == str(files.root / "mesh.yaml") for d in report["diagnostics"])


def test_validate_json_exits_2_on_errors(capsys, files, compose):
    files.write("mesh.yaml", BAD_MESH)
    assert run(capsys, "validate", "-f", str(compose), "--json")[0] == 2


def test_validate_json_of_a_valid_project_exits_0_with_its_warnings(capsys, files, compose):
    code, out, _ = run(capsys, "validate", "-f", str(compose), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert [(d["code"], d["level"], d["line"]) for d in report["diagnostics"]] == [
        ("MESH0301", "warning", 5), ("MESH0302", "info", 6)]


def test_validate_without_json_prints_errors_and_exits_2(capsys, files, compose):
    files.write("mesh.yaml", "apiVersion: meshcli/v1\nservices:\n  paymnt: {}\n")
    code, out, err = run(capsys, "validate", "-f", str(compose))
    assert code == 2 and out == ""
    assert f'{files.root / "mesh.yaml"}:3:3: error MESH0201: unknown service "paymnt"' in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out == f"meshcli {__version__}\n"


def test_init_quotes_service_names_that_yaml_would_read_as_other_types(capsys, files):
    compose = files.write("compose.yaml", "services:\n  '123':\n    image: x\n  'true':\n    image: y\n")
    code, out, _ = run(capsys, "init", "-f", str(compose), "--stdout")
    assert code == 0
    files.write("mesh.yaml", out)
    assert run(capsys, "validate", "-f", str(compose))[0] == 0
