"""meshcli sees a project exactly as `docker compose` does (issue 11): every way of naming
the project, through the CLI (main(argv)), with `docker compose config` as the reference."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from meshcli.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, "".join(captured.err.splitlines())


def rendered(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, "render", "-o", "-", *argv)
    assert code == 0, err
    return yaml.safe_load(out)


@pytest.fixture
def shop(files, monkeypatch):
    for name in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR"):
        monkeypatch.delenv(name, raising=False)
    files.root.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(files.root)
    return files


def test_every_f_is_merged_in_order(capsys, shop):
    shop.write("compose.yaml", "services:\n  web: {image: app, ports: ['8080:80']}\n")
    shop.write("extra.yaml", "services:\n  api: {image: api, expose: ['9000']}\n  web: {environment: {A: '1'}}\n")
    data = rendered(capsys, "-f", "compose.yaml", "-f", "extra.yaml")
    assert {"web", "web-pod", "api", "api-pod"} <= set(data["services"])
    assert data["services"]["web"]["environment"] == {"A": "1"}
    assert data["services"]["web-pod"]["ports"][0]["published"] == "8080"


def test_the_override_file_is_read(capsys, shop):
    shop.write("compose.yaml", "services:\n  web: {image: app}\n")
    shop.write("compose.override.yaml", "services:\n  web: {ports: ['8081:80']}\n  debug: {image: busybox}\n")
    data = rendered(capsys)
    assert data["services"]["web-pod"]["ports"][0]["published"] == "8081"
    assert "debug-pod" in data["services"]


def test_compose_variables_from_the_environment_and_dot_env(capsys, shop, monkeypatch):
    shop.write("deploy/stack.yaml", "services:\n  web: {image: 'app:${TAG:-latest}', profiles: [web]}\n")
    shop.write(".env", "COMPOSE_FILE=deploy/stack.yaml\nCOMPOSE_PROJECT_NAME=fromdotenv\nTAG=2\n")
    monkeypatch.setenv("COMPOSE_PROFILES", "web")
    data = rendered(capsys)
    assert data["name"] == "fromdotenv"
    assert data["services"]["web"]["image"] == "app:2"
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "fromenv")
    assert rendered(capsys)["name"] == "fromenv"
    assert rendered(capsys, "-p", "fromflag")["name"] == "fromflag"


def test_env_file_and_project_directory(capsys, shop, tmp_path):
    shop.write("compose.yaml", "services:\n  web: {image: 'app:${TAG}'}\n")
    shop.write("prod.env", "TAG=prod\n")
    assert rendered(capsys, "--env-file", "prod.env")["services"]["web"]["image"] == "app:prod"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("TAG=there\n")
    data = rendered(capsys, "-f", "compose.yaml", "--project-directory", str(elsewhere))
    assert data["name"] == "elsewhere" and data["services"]["web"]["image"] == "app:there"


def test_profiles_are_repeatable(capsys, shop):
    shop.write("compose.yaml", "services:\n  web: {image: app}\n  a: {image: a, profiles: [one]}\n"
                               "  b: {image: b, profiles: [two]}\n")
    assert {"a", "b"}.isdisjoint(rendered(capsys)["services"])
    services = rendered(capsys, "--profile", "one", "--profile", "two")["services"]
    assert {"a-pod", "b-pod"} <= set(services) and services["a-pod"]["profiles"] == ["one"]


def test_included_services_are_meshed(capsys, shop):
    shop.write("compose.yaml", "include: [lib/db.yaml]\nservices:\n  web: {image: app}\n")
    shop.write("lib/db.yaml", "services:\n  cache: {image: redis, expose: ['6379']}\n")
    assert {"cache", "cache-pod", "cache-sidecar"} <= set(rendered(capsys)["services"])


def test_extends_from_another_file_puts_the_ports_on_the_pod_and_keeps_opt_outs(capsys, shop):
    shop.write("base.yaml", "services:\n  base: {image: app, ports: ['8080:80']}\n"
                            "  quiet: {image: app, labels: {mesh.inject: 'false'}}\n"
                            "  hidden: {image: app, x-mesh: {inject: false}}\n")
    shop.write("compose.yaml", "services:\n  web: {extends: {file: base.yaml, service: base}}\n"
                               "  worker: {extends: {file: base.yaml, service: quiet}}\n"
                               "  job: {extends: {file: base.yaml, service: hidden}}\n")
    code, out, err = run(capsys, "render", "-o", "-")
    services = yaml.safe_load(out)["services"]
    assert "ports" not in services["web"] and services["web"]["network_mode"] == "service:web-pod"
    assert services["web-pod"]["ports"][0]["published"] == "8080"
    assert "worker-pod" not in services and "job-pod" not in services
    assert "opted out with x-mesh.inject: false" in err and "compose.yaml:4:3" in err


def test_stdin(capsys, shop, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("services:\n  web: {image: app}\n"))
    data = rendered(capsys, "-f", "-")
    assert data["name"] == "shop" and "web-pod" in data["services"]


def test_no_compose_file_fails_as_compose_does(capsys, shop):
    code, out, err = run(capsys, "render")
    assert code == 2 and out == ""
    assert "no configuration file provided: not found" in err and "meshcli demo" in err
    assert list(shop.root.iterdir()) == []


def test_render_is_a_preview_that_never_touches_the_live_config(capsys, shop, tmp_path):
    shop.write("compose.yaml", "services:\n  payment-v1: {image: pay}\n  payment-v2: {image: pay}\n")
    assert run(capsys, "fault", "payment", "--abort", "503", "--no-wait")[0] == 0
    live = shop.root / ".mesh" / "shop" / "config" / "sidecar.json"
    before = live.read_bytes()
    assert [f["service"] for f in json.loads(before)["faults"]] == ["payment"]
    assert run(capsys, "render", "-o", str(tmp_path / "preview.yaml"))[0] == 0
    assert run(capsys, "render", "-o", "-")[0] == 0
    assert run(capsys, "render", "-o", "/nonexistent/x")[0] == 2 and not Path("/nonexistent").exists()
    assert live.read_bytes() == before
    assert not (shop.root / "-").exists()


def test_two_project_names_from_one_directory_share_no_state(capsys, shop):
    shop.write("compose.yaml", "services:\n  payment-v1: {image: pay}\n")
    assert run(capsys, "fault", "payment", "--abort", "503", "--no-wait", "-p", "one")[0] == 0
    assert run(capsys, "fault", "list", "--json", "-p", "two")[1] == '{\n  "ok": true,\n  "faults": []\n}\n'
    assert (shop.root / ".mesh" / "one" / "faults.json").is_file()
    assert not (shop.root / ".mesh" / "two" / "faults.json").exists()


def test_the_rendered_file_means_what_the_users_project_means(capsys, shop, tmp_path):
    """A multi-file project: `docker compose config` of the rendered file, minus the mesh's
    own services and keys, is `docker compose config` of the project."""
    from test_corpus import assert_same_project, compose_config

    shop.write("compose.yaml", "name: multi\nservices:\n  web: {image: 'app:${TAG:-1}', ports: ['8080:80'],"
                               " depends_on: [db], volumes: ['./data:/data', 'v:/v']}\n"
                               "  db: {image: postgres, profiles: [full], environment: {A: b}}\nvolumes: {v: {}}\n")
    shop.write("compose.override.yaml", "services:\n  web: {environment: {B: c}, build: ./web}\n")
    out = tmp_path / "meshed.yaml"
    assert run(capsys, "render", "--profile", "full", "-o", str(out))[0] == 0
    original = json.loads(subprocess.run(["docker", "compose", "--profile", "full", "config", "--format", "json"],
                                         capture_output=True, text=True, check=True, cwd=shop.root).stdout)
    meshed = compose_config(out, profiles=("full",))
    assert meshed.returncode == 0, meshed.stderr
    assert_same_project(original, json.loads(meshed.stdout))


def test_compose_errors_point_at_the_service_in_the_users_file(capsys, shop):
    shop.write("compose.yaml", "services:\n  api: {image: a}\n")
    shop.write("compose.override.yaml", "services:\n  web: {image: a, depends_on: [db]}\n")
    code, out, err = run(capsys, "validate")
    assert code == 2
    assert (f"{shop.root / 'compose.override.yaml'}:2:3: error MESH0007: docker compose: "
            'service "web" depends on undefined service "db"') in err


def test_compose_file_with_its_separator(capsys, shop, monkeypatch):
    shop.write("a.yaml", "services:\n  web: {image: app}\n")
    shop.write("b.yaml", "services:\n  api: {image: api}\n")
    monkeypatch.setenv("COMPOSE_FILE", "a.yaml;b.yaml")
    monkeypatch.setenv("COMPOSE_PATH_SEPARATOR", ";")
    assert {"web-pod", "api-pod"} <= set(rendered(capsys)["services"])


def test_anchors_merge_keys_reset_override_interpolation_and_same_file_extends(capsys, shop, monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    shop.write("compose.yaml", """\
x-app: &app
  image: "app:${TAG:-7}"
  environment: {A: "1"}
  ports: ["${PORT:-8080}:80"]
services:
  web:
    <<: *app
  quiet: {image: app, x-mesh: {inject: false}}
  child: {extends: quiet}
""")
    shop.write("compose.override.yaml", "services:\n  web:\n    environment: !reset {}\n"
                                        "    ports: !override ['9090:80']\n")
    code, out, err = run(capsys, "render", "-o", "-")
    services = yaml.safe_load(out)["services"]
    assert services["web"]["image"] == "app:7" and "environment" not in services["web"]
    assert [p["published"] for p in services["web-pod"]["ports"]] == ["9090"]
    assert "quiet-pod" not in services and "child-pod" not in services  # the opt-out is inherited


def test_compose_warnings_are_shown_as_warnings(capsys, shop, monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    shop.write("compose.yaml", "services:\n  web: {image: 'app:${NOPE}'}\n")
    code, out, err = run(capsys, "validate", "--json")
    assert code == 0
    [warning] = json.loads(out)["diagnostics"]
    assert (warning["code"], warning["level"]) == ("MESH0008", "warning")
    assert warning["message"] == 'docker compose: The "NOPE" variable is not set. Defaulting to a blank string.'
