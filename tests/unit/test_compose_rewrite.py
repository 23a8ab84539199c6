"""The compose rewrite: pods, sidecars and apps from the canonical model, and the file workspace.write_rendered writes."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from meshcli import compose_model, compose_rewrite, demo, mesh_config, workspace, yaml_source
from meshcli.compose_rewrite import RenderOptions
from meshcli.errors import InvalidFileError

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "demo-rendered.yaml"
IMAGE = "meshcli-sidecar:test"


def options_for(config_dir: Path) -> RenderOptions:
    return RenderOptions(IMAGE, config_dir)


def render(files, compose_text: str, mesh_text: str | None = None, profiles: tuple[str, ...] = ()) -> dict:
    """Load the files into the `files` project and render them as plain data."""
    files.write("compose.yaml", compose_text)
    files.write("web.env", "FROM_FILE=1\n")
    project = compose_model.load(compose_model.ComposeOptions((str(files.root / "compose.yaml"),), profiles=profiles))
    mesh = mesh_config.resolve(files.mesh(mesh_text) if mesh_text else None, project)
    return compose_rewrite.render(project, mesh, options_for(files.root / ".mesh" / "shop" / "config"))


# --- one meshed service with everything ----------------------------------------------------

SHOP = """
    name: Shop
    x-owner: {team: core}
    services:
      web:
        image: web:1
        build: ./web
        container_name: shop-web
        networks:
          front:
            aliases: [www]
          back:
        ports: ["8080:80"]
        expose: ["9000"]
        hostname: web-host
        domainname: shop.test
        dns: [10.0.0.53]
        dns_search: [shop.test]
        dns_opt: [ndots:1]
        extra_hosts: ["db.local:10.0.0.2"]
        mac_address: "02:42:ac:11:00:02"
        links: [db]
        sysctls:
          net.core.somaxconn: "1024"
          kernel.msgmax: "65536"
        environment: {MODE: prod}
        env_file: web.env
        volumes: ["./data:/data", "cache:/cache"]
        secrets: [token]
        configs: [settings]
        healthcheck: {test: ["CMD", "true"], interval: 5s}
        profiles: [full]
        labels: {team: core}
        depends_on: [db]
        x-notes: keep me
      db:
        image: postgres:16
        x-mesh: {inject: false}
        volumes: ["pgdata:/var/lib/postgresql/data"]
        healthcheck: {test: ["CMD", "pg_isready"]}
    volumes:
      cache: {}
      pgdata: {labels: {keep: "yes"}}
    networks:
      front: {}
      back: {driver: bridge}
    secrets:
      token: {environment: TOKEN}
    configs:
      settings: {content: "a=1"}
"""

NAMESPACE = ("ports", "expose", "hostname", "domainname", "dns", "dns_search", "dns_opt", "extra_hosts",
             "mac_address", "links")


@pytest.fixture
def canonical(files) -> dict:
    """SHOP as docker compose resolves it."""
    files.write("compose.yaml", SHOP)
    files.write("web.env", "FROM_FILE=1\n")
    return compose_model.config(compose_model.ComposeOptions((str(files.root / "compose.yaml"),),
                                                             profiles=("full",)))["services"]


@pytest.fixture
def shop(files, canonical) -> dict:
    return render(files, SHOP, profiles=("full",))


def test_the_pod_owns_the_network_namespace(shop, canonical):
    pod = shop["services"]["web-pod"]
    assert {key: pod[key] for key in NAMESPACE} == {key: canonical["web"][key] for key in NAMESPACE}
    # Callers still reach the app by its name, on every network it was on.
    assert pod["networks"] == {"front": {"aliases": ["www", "web"]}, "back": {"aliases": ["web"]}}
    assert pod["sysctls"] == {"net.core.somaxconn": "1024"}


def test_the_pod_is_an_idle_sidecar_image_container(shop):
    pod = shop["services"]["web-pod"]
    assert (pod["image"], pod["command"], pod["restart"]) == (IMAGE, ["pod"], "unless-stopped")
    assert pod["container_name"] == "shop-web-pod"
    assert pod["profiles"] == ["full"]
    assert pod["environment"] == {"MESH_WORKLOAD": "web"}
    assert "healthcheck" not in pod and "cap_add" not in pod  # nothing polls an idle pod
    assert pod["labels"] == {"io.meshcli.role": "pod", "io.meshcli.workload": "web", "io.meshcli.service": "web",
                             "io.meshcli.version": "v1", "io.meshcli.project": "shop"}


def test_the_app_keeps_everything_else_and_joins_the_pod(shop, canonical):
    moved = set(NAMESPACE) | {"networks", "sysctls", "depends_on"}
    app = shop["services"]["web"]
    assert {k: v for k, v in app.items() if k not in moved | {"network_mode"}} == {
        k: v for k, v in canonical["web"].items() if k not in moved}
    assert app["sysctls"] == {"kernel.msgmax": "65536"}
    assert app["network_mode"] == "service:web-pod"
    assert app["depends_on"] == {
        **canonical["web"]["depends_on"],
        "web-pod": {"condition": "service_started"},
        "web-init": {"condition": "service_completed_successfully"},
    }


def test_the_init_installs_the_rules_in_the_pod_and_ends_once_the_sidecar_is_ready(shop):
    init = shop["services"]["web-init"]
    assert (init["image"], init["command"], init["cap_add"]) == (IMAGE, ["init"], ["NET_ADMIN"])
    assert init["network_mode"] == "service:web-pod"
    assert init["depends_on"] == {"web-pod": {"condition": "service_started"},
                                  "web-sidecar": {"condition": "service_started"}}
    assert "restart" not in init  # it runs to its end once per `up`
    assert (init["container_name"], init["profiles"]) == ("shop-web-init", ["full"])
    assert init["labels"]["io.meshcli.role"] == "init"


def test_the_sidecar_joins_the_pod_as_uid_1337(shop, files):
    sidecar = shop["services"]["web-sidecar"]
    assert sidecar["image"] == IMAGE and sidecar["command"] == ["sidecar"]
    assert sidecar["user"] == "1337:1337"
    assert sidecar["network_mode"] == "service:web-pod"
    assert sidecar["depends_on"] == {"web-pod": {"condition": "service_started"}}
    assert sidecar["volumes"] == [f"{files.root}/.mesh/shop/config:/etc/meshcli:ro"]
    assert sidecar["restart"] == "unless-stopped"
    assert sidecar["container_name"] == "shop-web-sidecar"
    assert sidecar["profiles"] == ["full"]
    assert sidecar["environment"] == {"MESH_PROJECT": "shop", "MESH_WORKLOAD": "web", "MESH_SERVICE": "web",
                                      "MESH_VERSION": "v1", "MESH_CONFIG_DIR": "/etc/meshcli"}
    assert "healthcheck" not in sidecar  # readiness is the init's business, `meshcli status` asks the sidecar
    assert sidecar["labels"]["io.meshcli.role"] == "sidecar"
    assert not {"ports", "networks", "cap_add"} & set(sidecar)


def test_an_unmeshed_service_and_the_top_level_are_left_as_compose_resolves_them(shop, canonical, files):
    assert shop["services"]["db"] == canonical["db"]
    assert shop["name"] == "shop"
    whole = compose_model.config(compose_model.ComposeOptions((str(files.root / "compose.yaml"),),
                                                              profiles=("full",)))
    for key in ("x-owner", "volumes", "networks", "secrets", "configs"):
        assert shop[key] == whole[key], key
    assert list(shop["services"]) == ["db", "web", "web-pod", "web-init", "web-sidecar", "meshcli-controller"]


def test_render_is_pure(files):
    files.write("web.env", "FROM_FILE=1\n")
    project = files.compose(SHOP.replace("profiles: [full]", ""))
    mesh = mesh_config.resolve(None, project)
    before = copy.deepcopy(project.data)
    options = options_for(files.root / ".mesh" / "shop" / "config")
    assert compose_rewrite.render(project, mesh, options) == compose_rewrite.render(project, mesh, options)
    assert project.data == before
    assert not (files.root / ".mesh").exists()


def test_the_project_name_is_set_even_when_the_file_has_none(files):
    assert render(files, "services:\n  web: {image: app}\n")["name"] == "shop"


# --- variations ------------------------------------------------------------------------------


@pytest.mark.parametrize("networks, expected", [
    (None, {"default": {"aliases": ["payment-v1", "payment"]}}),
    (["front", "back"], {"front": {"aliases": ["payment-v1", "payment"]},
                         "back": {"aliases": ["payment-v1", "payment"]}}),
    ({"front": {"aliases": ["pay", "payment"], "priority": 10}},
     {"front": {"aliases": ["pay", "payment", "payment-v1"], "priority": 10}}),
], ids=["default", "list", "mapping"])
def test_a_versioned_workload_is_also_reachable_by_its_service_name(files, networks, expected):
    service = {"image": "pay", **({"networks": networks} if networks else {})}
    declared = {"networks": {"front": {}, "back": {}}} if networks else {}
    rendered = render(files, yaml.safe_dump({"services": {"payment-v1": service}, **declared}))
    assert rendered["services"]["payment-v1-pod"]["networks"] == expected


def test_a_bridge_network_mode_moves_to_the_pod_without_aliases(files):
    rendered = render(files, "services:\n  web: {image: app, network_mode: bridge}\n")
    pod = rendered["services"]["web-pod"]
    assert pod["network_mode"] == "bridge" and "networks" not in pod
    assert rendered["services"]["web"]["network_mode"] == "service:web-pod"


def test_depends_on_in_mapping_form_is_merged(files):
    rendered = render(files, """
        services:
          web:
            image: app
            depends_on:
              db: {condition: service_healthy, restart: true}
          db: {image: postgres, x-mesh: {inject: false}}
    """)
    assert rendered["services"]["web"]["depends_on"] == {
        "db": {"condition": "service_healthy", "restart": True, "required": True},
        "web-pod": {"condition": "service_started"},
        "web-init": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize("sysctls, pod, app", [
    (["net.ipv4.ip_forward=1", "kernel.shmmax=1024"], {"net.ipv4.ip_forward": "1"}, {"kernel.shmmax": "1024"}),
    ({"net.ipv4.tcp_syncookies": 0}, {"net.ipv4.tcp_syncookies": "0"}, None),
    ({"kernel.sem": "250 32000 100 128"}, None, {"kernel.sem": "250 32000 100 128"}),
], ids=["list", "only-net", "no-net"])
def test_net_sysctls_move_to_the_pod(files, sysctls, pod, app):
    rendered = render(files, yaml.safe_dump({"services": {"web": {"image": "app", "sysctls": sysctls}}}))
    assert rendered["services"]["web-pod"].get("sysctls") == pod
    assert rendered["services"]["web"].get("sysctls") == app


def test_profiles_and_container_name_are_only_copied_when_present(files):
    services = render(files, "services:\n  web: {image: app}\n")["services"]
    for name in ("web-pod", "web-init", "web-sidecar"):
        assert "profiles" not in services[name] and "container_name" not in services[name]


def test_one_controller_watches_the_sidecars_that_always_run(files):
    services = render(files, """
        services:
          web: {image: app}
          admin: {image: app, profiles: [ops]}
          db: {image: postgres, x-mesh: {inject: false}}
    """)["services"]
    controller = services["meshcli-controller"]
    assert controller["command"] == ["controller"] and controller["image"] == IMAGE
    assert controller["network_mode"] == "none"
    assert controller["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock"]
    assert controller["depends_on"] == {"web-sidecar": {"condition": "service_started"}}
    assert controller["environment"] == {"MESH_PROJECT": "shop"}


def test_no_controller_without_meshed_services(files):
    services = render(files, "services:\n  db: {image: postgres, x-mesh: {inject: false}}\n")["services"]
    assert list(services) == ["db"]


def test_references_to_a_meshed_namespace_are_retargeted_to_its_pod(files):
    rendered = render(files, """
        services:
          web: {image: app}
          db: {image: postgres, x-mesh: {inject: false}}
          debug: {image: busybox, network_mode: "service:web"}
          dbtool: {image: busybox, network_mode: "service:db"}
          client:
            image: busybox
            x-mesh: {inject: false}
            links: [web, "web:frontend", db, "db:database"]
    """)
    services = rendered["services"]
    assert services["debug"]["network_mode"] == "service:web-pod"
    assert services["dbtool"]["network_mode"] == "service:db"
    assert services["client"]["links"] == ["web-pod:web", "web-pod:frontend", "db", "db:database"]


def test_a_meshed_services_links_move_to_its_pod_retargeted(files):
    rendered = render(files, "services:\n  web: {image: app, links: [api]}\n  api: {image: api}\n")
    assert rendered["services"]["web-pod"]["links"] == ["api-pod:api"]


def test_mesh_file_versions_set_the_identity_of_pod_and_sidecar(files):
    rendered = render(files, "services:\n  ledger: {image: pay}\n",
                      "apiVersion: meshcli/v1\nservices:\n  payment:\n    versions: {stable: ledger}\n")
    services = rendered["services"]
    assert services["ledger-pod"]["networks"] == {"default": {"aliases": ["ledger", "payment"]}}
    assert services["ledger-sidecar"]["environment"]["MESH_SERVICE"] == "payment"
    assert services["ledger-sidecar"]["environment"]["MESH_VERSION"] == "stable"
    assert services["ledger-pod"]["labels"]["io.meshcli.version"] == "stable"


# --- the demo, against a golden file -------------------------------------------------------


def machine_independent(value, root: Path):
    """Absolute paths under `root` (the demo's copy) shown as `<demo>/...`."""
    if isinstance(value, dict):
        return {key: machine_independent(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [machine_independent(item, root) for item in value]
    if isinstance(value, str) and value.startswith(str(root)):
        return "<demo>" + value[len(str(root)):]
    return value


def test_the_demo_renders_like_the_golden_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MESHCLI_BASE_IMAGE", "python:3.11-slim")  # what a machine with a registry uses
    monkeypatch.delenv("FRONTEND_PORT", raising=False)
    copy = demo.copy(tmp_path / "demo")
    loaded = workspace.load(workspace.locate(copy.compose_file))
    rendered = compose_rewrite.render(loaded.project, loaded.mesh,
                                      RenderOptions("meshcli-sidecar:golden", loaded.workspace.config_dir))
    text = ("# compose/compose.yaml + compose/mesh.yaml rendered by tests/unit/test_compose_rewrite.py.\n"
            "# <demo> is the directory `meshcli demo` copied the demo to.\n"
            "# Regenerate with: MESHCLI_UPDATE_GOLDEN=1 pytest tests/unit/test_compose_rewrite.py\n"
            + yaml.safe_dump(machine_independent(rendered, copy.directory), sort_keys=False,
                             default_flow_style=False, width=4096))
    if os.environ.get("MESHCLI_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.is_file(), "no golden file: run with MESHCLI_UPDATE_GOLDEN=1 to create it"
    assert text == GOLDEN.read_text(encoding="utf-8")


# --- workspace.write_rendered: validate first, then write atomically; never the sidecars' config ---


def test_nothing_is_written_when_validation_fails(files):
    compose = files.write("compose.yaml", "services:\n  payment-v1: {image: pay}\n")
    files.write("mesh.yaml", "apiVersion: meshcli/v1\nservices:\n  paymnt: {}\n")
    located = workspace.locate(compose)
    with pytest.raises(InvalidFileError) as info:
        workspace.write_rendered(workspace.load(located), IMAGE)
    assert [d.code for d in info.value.diagnostics] == ["MESH0201"]
    assert sorted(p.name for p in files.root.iterdir()) == ["compose.yaml", "mesh.yaml"]
    assert not located.rendered_file.exists()


def test_render_writes_the_compose_file_and_nothing_the_sidecars_read(files):
    files.write("compose.yaml", "services:\n  payment-v1: {image: pay, expose: ['8080']}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    path = workspace.write_rendered(loaded, IMAGE)
    assert path == files.root / ".mesh" / "shop" / "compose.yaml"
    text = path.read_text()
    assert text.startswith("# Generated by meshcli from compose.yaml (project shop). Do not edit:\n")
    rendered = yaml.safe_load(text)
    assert sorted(rendered["services"]) == ["meshcli-controller", "payment-v1", "payment-v1-init", "payment-v1-pod",
                                           "payment-v1-sidecar"]
    assert (files.root / ".mesh" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not (files.root / ".mesh" / "shop" / "config").exists()


def test_render_replaces_the_old_file_atomically(files):
    files.write("compose.yaml", "services:\n  web: {image: app}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    old = files.write(".mesh/shop/compose.yaml", "old: content\n")
    old.chmod(0o600)
    old_inode = old.stat().st_ino
    path = workspace.write_rendered(loaded, IMAGE)
    assert "web-sidecar" in yaml.safe_load(path.read_text())["services"]
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["compose.yaml"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(files):
    target = files.write(".mesh/compose.yaml", "old: content\n")
    with pytest.raises(UnicodeEncodeError):
        yaml_source.atomic_write(target, "new: \ud800\n")
    assert target.read_text() == "old: content\n"
    assert [p.name for p in target.parent.iterdir()] == ["compose.yaml"]


def test_render_to_another_output_works_from_there(files, tmp_path):
    files.write("compose.yaml", "services:\n  web: {image: app, build: ./web}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    output = tmp_path / "elsewhere" / "meshed.yaml"
    output.parent.mkdir()
    assert workspace.write_rendered(loaded, IMAGE, output) == output
    services = yaml.safe_load(output.read_text())["services"]
    assert services["web"]["build"]["context"] == str(files.root / "web")  # absolute, as compose resolved it
    assert services["web-sidecar"]["volumes"][0].partition(":")[0] == str(files.root / ".mesh" / "shop" / "config")
    assert not (files.root / ".mesh").exists()
