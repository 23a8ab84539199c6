"""meshcli/prometheus.py: the scrape config and targets, the compose service (networks, port,
mount), the image choice; and the rendered file with and without it."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import yaml

from meshcli import compose_model, compose_rewrite, images, mesh_config, prometheus

COMPOSE = """
    services:
      web:
        image: web:1
        networks: [front, back]
      api:
        image: api:1
      payment-v1:
        image: pay:1
        networks: [back]
      tool:
        image: tool:1
        network_mode: none
    networks: {front: {}, back: {}}
"""


def render(files, with_prometheus: bool, host_port: int = prometheus.DEFAULT_HOST_PORT) -> tuple[dict, object]:
    files.write("compose.yaml", COMPOSE)
    project = compose_model.load(compose_model.ComposeOptions((str(files.root / "compose.yaml"),)))
    mesh = mesh_config.resolve(None, project)
    scraper = prometheus.Prometheus("prom:test", files.root / ".mesh" / "shop" / "prometheus", host_port) \
        if with_prometheus else None
    options = compose_rewrite.RenderOptions("meshcli-sidecar:test", files.root / ".mesh" / "config", prometheus=scraper)
    return compose_rewrite.render(project, mesh, options), mesh


def test_the_targets_are_every_pods_metrics_port(files):
    _, mesh = render(files, False)

    assert prometheus.targets(mesh) == [
        {"targets": ["api-pod:15090"], "labels": {"mesh_workload": "api", "mesh_service": "api", "mesh_version": "v1"}},
        {"targets": ["payment-v1-pod:15090"],
         "labels": {"mesh_workload": "payment-v1", "mesh_service": "payment", "mesh_version": "v1"}},
        {"targets": ["web-pod:15090"], "labels": {"mesh_workload": "web", "mesh_service": "web", "mesh_version": "v1"}},
    ]


def test_the_config_scrapes_the_file_sd_targets_every_5_s(tmp_path, files):
    _, mesh = render(files, False)
    prometheus.write_config(tmp_path / "prometheus", mesh)

    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert config["global"]["scrape_interval"] == "5s"
    assert (job["job_name"], job["metrics_path"]) == ("meshcli-sidecars", "/stats/prometheus")
    assert job["file_sd_configs"] == [{"files": ["/etc/meshcli-prometheus/targets.json"], "refresh_interval": "5s"}]
    targets = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    assert [t["targets"] for t in targets] == [["api-pod:15090"], ["payment-v1-pod:15090"], ["web-pod:15090"]]


def test_the_service_joins_every_network_of_the_pods_and_publishes_its_port(files):
    rendered, _ = render(files, True)

    service = rendered["services"]["meshcli-prometheus"]
    assert service["image"] == "prom:test"
    assert sorted(service["networks"]) == ["back", "default", "front"]
    assert service["ports"] == ["127.0.0.1:9090:9090"]  # this machine only
    assert service["volumes"] == [f"{files.root / '.mesh' / 'shop' / 'prometheus'}:/etc/meshcli-prometheus:ro"]
    assert "--config.file=/etc/meshcli-prometheus/prometheus.yml" in service["command"]
    assert service["labels"]["io.meshcli.role"] == "prometheus"


def test_port_0_publishes_any_free_port(files):
    rendered, _ = render(files, True, host_port=0)

    assert rendered["services"]["meshcli-prometheus"]["ports"] == ["127.0.0.1::9090"]


def test_without_it_nothing_is_added(files):
    rendered, _ = render(files, False)

    assert "meshcli-prometheus" not in rendered["services"]


@pytest.fixture
def engine(monkeypatch):
    """A docker client stub: which base images exist, and what got built."""
    built = []
    client = types.SimpleNamespace(images=types.SimpleNamespace(get=lambda name: types.SimpleNamespace(id="sha256:b")))
    monkeypatch.delenv(prometheus.IMAGE_VARIABLE, raising=False)
    monkeypatch.setattr(images, "docker_client", lambda: client)
    monkeypatch.setattr(images, "stream_build", lambda c, context, tag, args, progress, label: built.append(
        (tag, args, label, (Path(context) / "Dockerfile").read_text())))
    return built


def test_online_the_official_image_runs(engine, monkeypatch):
    monkeypatch.setattr(images, "base_image", lambda client: images.PUBLIC_BASE)

    assert prometheus.image(print) == prometheus.OFFICIAL_IMAGE
    assert engine == []


def test_offline_debians_prometheus_is_built_on_the_local_base_once(engine, monkeypatch):
    monkeypatch.setattr(images, "base_image", lambda client: images.OFFLINE_BASE)
    present = set()
    monkeypatch.setattr(images, "has_image", lambda client, tag: tag in present)

    tag = prometheus.image(lambda message: None)
    present.add(tag)

    assert tag.startswith("meshcli-prometheus:")
    [(built_tag, args, label, dockerfile)] = engine
    assert (built_tag, args, label) == (tag, {"BASE_IMAGE": images.OFFLINE_BASE}, "prometheus")
    assert "apt-get install" in dockerfile and "prometheus" in dockerfile
    assert prometheus.image(lambda message: None) == tag and len(engine) == 1  # not built again


def test_the_image_can_be_chosen(engine, monkeypatch):
    monkeypatch.setenv(prometheus.IMAGE_VARIABLE, "my/prometheus:1")

    assert prometheus.image(print) == "my/prometheus:1"
