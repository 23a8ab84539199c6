"""The compose rewrite: pods, sidecars, apps, re-based paths, and the files workspace.render writes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from meshcli import compose_model, compose_rewrite, mesh_config, workspace, yaml_source
from meshcli.compose_rewrite import RenderOptions
from meshcli.errors import InvalidFileError

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "demo-rendered.yaml"
IMAGE = "meshcli-sidecar:test"


def options_for(output: Path) -> RenderOptions:
    return RenderOptions(output, IMAGE, output.parent / "config")


def render(files, compose_text: str, mesh_text: str | None = None, output: Path | None = None) -> dict:
    """Load the files into the `files` project and render them as plain data."""
    project = files.compose(compose_text)
    mesh = mesh_config.resolve(files.mesh(mesh_text) if mesh_text else None, project)
    return compose_rewrite.render(project, mesh, options_for(output or files.root / ".mesh" / "compose.yaml"))


def as_written(text: str) -> dict:
    """The user's file as an independent YAML parser (PyYAML) reads it."""
    return yaml.safe_load(textwrap.dedent(text))


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

NAMESPACE = {
    "ports": ["8080:80"],
    "expose": ["9000"],
    "hostname": "web-host",
    "domainname": "shop.test",
    "dns": ["10.0.0.53"],
    "dns_search": ["shop.test"],
    "dns_opt": ["ndots:1"],
    "extra_hosts": ["db.local:10.0.0.2"],
    "mac_address": "02:42:ac:11:00:02",
    "links": ["db"],
}


@pytest.fixture
def shop(files) -> dict:
    return render(files, SHOP)


def test_the_pod_owns_the_network_namespace(shop):
    pod = shop["services"]["web-pod"]
    assert {key: pod[key] for key in NAMESPACE} == NAMESPACE
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


def test_the_app_keeps_everything_else_and_joins_the_pod(shop):
    assert shop["services"]["web"] == {
        "image": "web:1",
        "build": "../web",
        "container_name": "shop-web",
        "sysctls": {"kernel.msgmax": "65536"},
        "environment": {"MODE": "prod"},
        "env_file": "../web.env",
        "volumes": ["../data:/data", "cache:/cache"],
        "secrets": ["token"],
        "configs": ["settings"],
        "healthcheck": {"test": ["CMD", "true"], "interval": "5s"},
        "profiles": ["full"],
        "labels": {"team": "core"},
        "x-notes": "keep me",
        "network_mode": "service:web-pod",
        "depends_on": {
            "db": {"condition": "service_started"},
            "web-pod": {"condition": "service_started"},
            "web-init": {"condition": "service_completed_successfully"},
        },
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


def test_the_sidecar_joins_the_pod_as_uid_1337(shop):
    sidecar = shop["services"]["web-sidecar"]
    assert sidecar["image"] == IMAGE and sidecar["command"] == ["sidecar"]
    assert sidecar["user"] == "1337:1337"
    assert sidecar["network_mode"] == "service:web-pod"
    assert sidecar["depends_on"] == {"web-pod": {"condition": "service_started"}}
    assert sidecar["volumes"] == ["./config:/etc/meshcli:ro"]
    assert sidecar["restart"] == "unless-stopped"
    assert sidecar["container_name"] == "shop-web-sidecar"
    assert sidecar["profiles"] == ["full"]
    assert sidecar["environment"] == {"MESH_PROJECT": "shop", "MESH_WORKLOAD": "web", "MESH_SERVICE": "web",
                                      "MESH_VERSION": "v1", "MESH_CONFIG_DIR": "/etc/meshcli"}
    assert "healthcheck" not in sidecar  # readiness is the init's business, `meshcli status` asks the sidecar
    assert sidecar["labels"]["io.meshcli.role"] == "sidecar"
    assert not {"ports", "networks", "cap_add"} & set(sidecar)


def test_an_unmeshed_service_and_the_top_level_are_left_as_written(shop):
    written = as_written(SHOP)
    assert shop["services"]["db"] == written["services"]["db"]
    assert shop["name"] == "shop"
    for key in ("x-owner", "volumes", "networks", "secrets", "configs"):
        assert shop[key] == written[key], key
    assert list(shop["services"]) == ["web", "web-pod", "web-init", "web-sidecar", "db", "meshcli-controller"]


def test_render_is_pure(files):
    project = files.compose(SHOP)
    mesh = mesh_config.resolve(None, project)
    before = yaml_source.dump_round_trip(project.doc.data)
    options = options_for(files.root / ".mesh" / "compose.yaml")
    assert compose_rewrite.render(project, mesh, options) == compose_rewrite.render(project, mesh, options)
    assert yaml_source.dump_round_trip(project.doc.data) == before == textwrap.dedent(SHOP).lstrip("\n")
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
    rendered = render(files, yaml.safe_dump({"services": {"payment-v1": service}}))
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
        "db": {"condition": "service_healthy", "restart": True},
        "web-pod": {"condition": "service_started"},
        "web-init": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize("sysctls, pod, app", [
    (["net.ipv4.ip_forward=1", "kernel.shmmax=1024"], {"net.ipv4.ip_forward": "1"}, {"kernel.shmmax": "1024"}),
    ({"net.ipv4.tcp_syncookies": 0}, {"net.ipv4.tcp_syncookies": 0}, None),
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


# --- values keep the meaning Compose gives them --------------------------------------------


def test_anchored_booleans_stay_booleans(files):
    rendered = render(files, """
        x-on: &on true
        services:
          web: {image: app, tty: *on, stdin_open: *on, init: false}
    """)
    app = rendered["services"]["web"]
    assert (app["tty"], app["stdin_open"], app["init"]) == (True, True, False)
    assert all(type(app[key]) is bool for key in ("tty", "stdin_open", "init"))
    assert rendered["x-on"] is True


@pytest.mark.parametrize("written, mode", [("0440", 0o440), ("00640", 0o640), ("0o600", 0o600), ("288", 288),
                                           ("0", 0), ("089", 89)])
def test_file_modes_are_read_as_compose_reads_them(files, written, mode):
    rendered = render(files, f"""
        services:
          web:
            image: app
            secrets: [{{source: token, mode: {written}}}]
        secrets:
          token: {{file: ./token.txt}}
    """)
    assert rendered["services"]["web"]["secrets"][0]["mode"] == mode


def test_strings_that_look_like_other_types_stay_strings(files):
    env = {"A": "yes", "B": "on", "C": "1.0", "D": "true", "E": "0440", "F": "null", "G": "22:22"}
    files.write("compose.yaml", yaml.safe_dump({"services": {"web": {"image": "app", "environment": env}}}))
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    written = yaml.safe_load(workspace.render(loaded, IMAGE).read_text())
    assert written["services"]["web"]["environment"] == env


# --- relative paths are re-based onto the output directory ---------------------------------

def svc(*keys):
    """A getter for data["services"]["app"][keys...]."""
    def get(data):
        value = data["services"]["app"]
        for key in keys:
            value = value[key]
        return value
    return get


def top(*keys):
    """A getter for data[keys...]."""
    def get(data):
        for key in keys:
            data = data[key]
        return data
    return get


def before(separator: str, getter):
    """The part of a `source<separator>rest` string before the separator."""
    return lambda data: getter(data).partition(separator)[0]


# (id, service fields, top-level fields, getter of the path, the path as written)
REBASED = [
    ("build", {"build": "./app"}, {}, svc("build"), "./app"),
    ("build-dot", {"build": "."}, {}, svc("build"), "."),
    ("build-parent", {"build": "../shared/app"}, {}, svc("build"), "../shared/app"),
    ("build-context", {"build": {"context": "app", "dockerfile": "Dockerfile.dev"}}, {},
     svc("build", "context"), "app"),
    ("build-no-context", {"build": {"dockerfile": "Dockerfile"}}, {}, svc("build", "context"), "."),
    ("additional-contexts-dict", {"build": {"context": ".", "additional_contexts": {"assets": "./assets"}}}, {},
     svc("build", "additional_contexts", "assets"), "./assets"),
    ("additional-contexts-list", {"build": {"context": ".", "additional_contexts": ["assets=../assets"]}}, {},
     lambda d: svc("build", "additional_contexts", 0)(d).partition("=")[2], "../assets"),
    ("env-file", {"env_file": ".env.app"}, {}, svc("env_file"), ".env.app"),
    ("env-file-list", {"env_file": ["a.env", "./conf/b.env"]}, {}, svc("env_file", 1), "./conf/b.env"),
    ("env-file-entry", {"env_file": [{"path": "./c.env", "required": False}]}, {},
     svc("env_file", 0, "path"), "./c.env"),
    ("volume-short", {"volumes": ["./data:/data:ro"]}, {}, before(":", svc("volumes", 0)), "./data"),
    ("volume-short-parent", {"volumes": ["..:/src"]}, {}, before(":", svc("volumes", 0)), ".."),
    ("volume-long-bind", {"volumes": [{"type": "bind", "source": "./logs", "target": "/logs"}]}, {},
     svc("volumes", 0, "source"), "./logs"),
    ("label-file", {"label_file": "./app.labels"}, {}, svc("label_file"), "./app.labels"),
    ("extends", {"extends": {"file": "common/base.yaml", "service": "base"}}, {},
     svc("extends", "file"), "common/base.yaml"),
    ("develop-watch", {"develop": {"watch": [{"action": "sync", "path": "./src", "target": "/app/src"}]}}, {},
     svc("develop", "watch", 0, "path"), "./src"),
    ("secret-file", {}, {"secrets": {"token": {"file": "./token.txt"}}}, top("secrets", "token", "file"),
     "./token.txt"),
    ("config-file", {}, {"configs": {"settings": {"file": "conf/app.ini"}}}, top("configs", "settings", "file"),
     "conf/app.ini"),
    ("include", {}, {"include": ["other/compose.yaml"]}, top("include", 0), "other/compose.yaml"),
    ("include-path", {}, {"include": [{"path": ["a/compose.yaml", "./b.yaml"]}]}, top("include", 0, "path", 1),
     "./b.yaml"),
    ("include-project-directory", {}, {"include": [{"path": "a/compose.yaml", "project_directory": "a"}]},
     top("include", 0, "project_directory"), "a"),
    ("include-env-file", {}, {"include": [{"path": "a/compose.yaml", "env_file": "a/.env"}]},
     top("include", 0, "env_file"), "a/.env"),
    ("local-bind-volume", {}, {"volumes": {"data": {"driver": "local",
                                                    "driver_opts": {"type": "none", "o": "bind", "device": "./data"}}}},
     top("volumes", "data", "driver_opts", "device"), "./data"),
]

# (id, service fields, top-level fields, getter) of values that are not relative paths.
UNTOUCHED = [
    ("build-absolute", {"build": "/srv/app"}, {}, svc("build")),
    ("build-home", {"build": "~/app"}, {}, svc("build")),
    ("build-url", {"build": "https://github.com/docker/awesome-compose.git#master:flask"}, {}, svc("build")),
    ("build-git-ssh", {"build": "git@github.com:docker/awesome-compose.git"}, {}, svc("build")),
    ("build-github", {"build": {"context": "github.com/docker/awesome-compose"}}, {}, svc("build", "context")),
    ("build-variable", {"build": "${APP_DIR:-.}"}, {}, svc("build")),
    ("context-image", {"build": {"context": ".", "additional_contexts": {"base": "docker-image://alpine:3"}}}, {},
     svc("build", "additional_contexts", "base")),
    ("context-service", {"build": {"context": ".", "additional_contexts": ["base=service:base"]}}, {},
     svc("build", "additional_contexts", 0)),
    ("named-volume", {"volumes": ["data:/data"]}, {}, svc("volumes", 0)),
    ("anonymous-volume", {"volumes": ["/data"]}, {}, svc("volumes", 0)),
    ("absolute-bind", {"volumes": ["/srv/data:/data"]}, {}, svc("volumes", 0)),
    ("home-bind", {"volumes": ["~/data:/data"]}, {}, svc("volumes", 0)),
    ("long-named-volume", {"volumes": [{"type": "volume", "source": "data", "target": "/data"}]}, {},
     svc("volumes", 0, "source")),
    ("env-file-absolute", {"env_file": "/etc/app.env"}, {}, svc("env_file")),
    ("volume-not-bind", {}, {"volumes": {"data": {"driver": "local", "driver_opts": {"type": "tmpfs",
                                                                                      "device": "tmpfs"}}}},
     top("volumes", "data", "driver_opts", "device")),
    ("volume-not-local", {}, {"volumes": {"data": {"driver_opts": {"o": "bind", "device": "./data"}}}},
     top("volumes", "data", "driver_opts", "device")),
]

OUTPUTS = {"state-dir": ".mesh/compose.yaml", "elsewhere": "../elsewhere/deep/meshed.yaml"}


def render_fields(files, service: dict, top_level: dict, output: str) -> dict:
    compose = {"services": {"app": {"image": "app", **service}}, **top_level}
    return render(files, yaml.safe_dump(compose, sort_keys=False), output=files.root / output)


@pytest.mark.parametrize("output", OUTPUTS.values(), ids=OUTPUTS.keys())
@pytest.mark.parametrize("service, top_level, get, written", [case[1:] for case in REBASED],
                         ids=[case[0] for case in REBASED])
def test_relative_paths_point_at_the_same_place_from_the_output(files, service, top_level, get, written, output):
    rebased = get(render_fields(files, service, top_level, output))
    out_dir = (files.root / output).parent
    assert not os.path.isabs(rebased)
    assert os.path.normpath(out_dir / rebased) == os.path.normpath(files.root / written)


@pytest.mark.parametrize("service, top_level, get", [case[1:] for case in UNTOUCHED],
                         ids=[case[0] for case in UNTOUCHED])
def test_values_that_are_not_relative_paths_are_untouched(files, service, top_level, get):
    written = get({"services": {"app": service}, **top_level})
    assert get(render_fields(files, service, top_level, OUTPUTS["elsewhere"])) == written


def test_rebasing_keeps_the_rest_of_each_entry(files):
    service = {
        "volumes": ["./data:/data:ro,z", {"type": "bind", "source": "./logs", "target": "/logs", "read_only": True}],
        "env_file": [{"path": "./c.env", "required": False, "format": "raw"}],
        "build": {"context": "app", "dockerfile": "Dockerfile.dev", "args": {"A": "1"}},
    }
    app = render_fields(files, service, {}, OUTPUTS["state-dir"])["services"]["app"]
    assert app["volumes"] == ["../data:/data:ro,z",
                              {"type": "bind", "source": "../logs", "target": "/logs", "read_only": True}]
    assert app["env_file"] == [{"path": "../c.env", "required": False, "format": "raw"}]
    assert app["build"] == {"context": "../app", "dockerfile": "Dockerfile.dev", "args": {"A": "1"}}


def test_the_sidecar_config_mount_is_relative_to_the_output(files):
    project = files.compose("services:\n  web: {image: app}\n")
    output = files.root / "out" / "meshed.yaml"
    options = RenderOptions(output, IMAGE, files.root / ".mesh" / "config")
    rendered = compose_rewrite.render(project, mesh_config.resolve(None, project), options)
    assert rendered["services"]["web-sidecar"]["volumes"] == ["../.mesh/config:/etc/meshcli:ro"]


# --- the demo, against a golden file -------------------------------------------------------


def machine_independent(value, roots: dict[str, Path], base: Path):
    """Replace relative paths (resolved against `base`) under one of `roots` by `<root>/...`."""
    if isinstance(value, dict):
        return {key: machine_independent(item, roots, base) for key, item in value.items()}
    if isinstance(value, list):
        return [machine_independent(item, roots, base) for item in value]
    if isinstance(value, str) and value.startswith("."):
        path, sep, rest = value.partition(":")
        resolved = Path(os.path.normpath(base / path))
        for label, root in roots.items():
            if resolved == root or root in resolved.parents:
                return Path(label, resolved.relative_to(root)).as_posix() + sep + rest
    return value


def test_the_demo_renders_like_the_golden_file(tmp_path):
    project = compose_model.load(REPO / "compose" / "compose.yaml")
    mesh = mesh_config.resolve(mesh_config.load(REPO / "compose" / "mesh.yaml"), project)
    output = tmp_path / ".mesh" / "compose.yaml"
    rendered = compose_rewrite.render(project, mesh, RenderOptions(output, "meshcli-sidecar:golden",
                                                                   output.parent / "config"))
    normalised = machine_independent(rendered, {"<out>": output.parent, "<repo>": REPO}, output.parent)
    text = ("# compose/compose.yaml + compose/mesh.yaml rendered by tests/unit/test_compose_rewrite.py.\n"
            "# Relative paths are shown resolved: <out> is the rendered file's directory, <repo> the checkout.\n"
            "# Regenerate with: MESHCLI_UPDATE_GOLDEN=1 pytest tests/unit/test_compose_rewrite.py\n"
            + yaml.safe_dump(normalised, sort_keys=False, default_flow_style=False, width=4096))
    if os.environ.get("MESHCLI_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.is_file(), "no golden file: run with MESHCLI_UPDATE_GOLDEN=1 to create it"
    assert text == GOLDEN.read_text(encoding="utf-8")


# --- workspace.render: validate first, then write atomically -------------------------------


def test_nothing_is_written_when_validation_fails(files):
    compose = files.write("compose.yaml", "services:\n  payment-v1: {image: pay}\n")
    files.write("mesh.yaml", "apiVersion: meshcli/v1\nservices:\n  paymnt: {}\n")
    located = workspace.locate(compose)
    with pytest.raises(InvalidFileError) as info:
        workspace.render(workspace.load(located), IMAGE)
    assert [d.code for d in info.value.diagnostics] == ["MESH0201"]
    assert sorted(p.name for p in files.root.iterdir()) == ["compose.yaml", "mesh.yaml"]
    assert not located.rendered_file.exists()


def test_render_writes_the_compose_file_and_the_sidecar_config(files):
    files.write("compose.yaml", "services:\n  payment-v1: {image: pay, expose: ['8080']}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    path = workspace.render(loaded, IMAGE)
    assert path == files.root / ".mesh" / "compose.yaml"
    text = path.read_text()
    assert text.startswith("# Generated by meshcli from compose.yaml. Do not edit:\n")
    rendered = yaml.safe_load(text)
    assert sorted(rendered["services"]) == ["meshcli-controller", "payment-v1", "payment-v1-init", "payment-v1-pod",
                                           "payment-v1-sidecar"]
    assert (files.root / ".mesh" / ".gitignore").read_text().splitlines()[-1] == "*"
    config = yaml.safe_load((files.root / ".mesh" / "config" / "sidecar.json").read_text())
    assert config["project"] == "shop"
    assert config["services"]["payment"]["versions"] == [{"name": "v1", "host": "payment-v1"}]


def test_render_replaces_the_old_file_atomically(files):
    files.write("compose.yaml", "services:\n  web: {image: app}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    old = files.write(".mesh/compose.yaml", "old: content\n")
    old.chmod(0o600)
    old_inode = old.stat().st_ino
    path = workspace.render(loaded, IMAGE)
    assert "web-sidecar" in yaml.safe_load(path.read_text())["services"]
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [".gitignore", "compose.yaml", "config"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(files):
    target = files.write(".mesh/compose.yaml", "old: content\n")
    with pytest.raises(UnicodeEncodeError):
        yaml_source.atomic_write(target, "new: \ud800\n")
    assert target.read_text() == "old: content\n"
    assert [p.name for p in target.parent.iterdir()] == ["compose.yaml"]


def test_render_to_another_output(files, tmp_path):
    files.write("compose.yaml", "services:\n  web: {image: app, build: ./web}\n")
    loaded = workspace.load(workspace.locate(files.root / "compose.yaml"))
    output = tmp_path / "elsewhere" / "meshed.yaml"
    assert workspace.render(loaded, IMAGE, output) == output
    services = yaml.safe_load(output.read_text())["services"]
    assert os.path.normpath(output.parent / services["web"]["build"]) == str(files.root / "web")
    mount = services["web-sidecar"]["volumes"][0].partition(":")[0]
    assert os.path.normpath(output.parent / mount) == str(files.root / ".mesh" / "config")
    assert (files.root / ".mesh" / "config" / "sidecar.json").is_file()
