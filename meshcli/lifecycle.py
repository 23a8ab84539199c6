"""Bringing a meshed project up and down: render, build what is missing, run compose,
and run the hot-reload watcher (meshcli/watcher.py) while the project is up."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from meshcli import ca, compose_model, control_plane, docker_engine, images, prometheus, status, watcher, workspace as ws
from meshcli.errors import InvalidFileError
from meshcli.status import WorkloadStatus
from meshcli.workspace import Loaded, Workspace

Progress = Callable[[str], None]
BASE_IMAGE_VARIABLE = "MESHCLI_BASE_IMAGE"


def with_base_image(workspace: Workspace) -> Workspace:
    """The demo's sample apps build FROM ${MESHCLI_BASE_IMAGE}, the sidecar's base image. When the
    project uses that variable and the user has not set it, `up` sets it to the base it builds
    the sidecar on, and reads the project again with it (only then: it costs a compose run)."""
    if BASE_IMAGE_VARIABLE in os.environ or not workspace.project.mentions(BASE_IMAGE_VARIABLE):
        return workspace
    variables = {BASE_IMAGE_VARIABLE: images.base_image(docker_engine.client())}
    return ws.for_project(compose_model.load(workspace.project.options, variables), workspace.mesh_file)


def _profiles(profiles: tuple[str, ...]) -> list[str]:
    """The rendered file holds only the services compose runs; their profiles must be on to run them."""
    return [arg for profile in profiles for arg in ("--profile", profile)]


@dataclass
class UpResult:
    loaded: Loaded
    rendered: Path
    sidecar_image: str
    statuses: list[WorkloadStatus] = field(default_factory=list)
    watcher_pid: int | None = None  # the hot-reload watcher (meshcli/watcher.py)
    prometheus_url: str | None = None  # with `--with prometheus`

    @property
    def ready(self) -> bool:
        return ready(self.statuses)


def ready(statuses: list[WorkloadStatus]) -> bool:
    """Every app runs and every sidecar is healthy and runs the config on disk."""
    return all(s.healthy and s.sync == "SYNCED" for s in statuses)


def not_ready(statuses: list[WorkloadStatus]) -> list[str]:
    """What keeps the mesh from being ready, one phrase per workload ("payment-v1: sidecar unhealthy")."""
    problems = []
    for s in statuses:
        if s.app != "running":
            problems.append(f"{s.workload}: app {s.app}")
        elif s.sidecar_health != "healthy":
            problems.append(f"{s.workload}: sidecar {s.sidecar if s.sidecar != 'running' else s.sidecar_health}")
        elif s.sync != "SYNCED":
            problems.append(f"{s.workload}: config {s.sync}")
    return problems


def wait_ready(loaded: Loaded, deadline: float, progress: Progress, interval: float = 0.5) -> list[WorkloadStatus]:
    """Poll the workloads until ready() or time.monotonic() passes deadline; return the last statuses."""
    while True:
        statuses = status.collect(loaded)
        if ready(statuses) or time.monotonic() >= deadline:
            return statuses
        progress("waiting for " + ", ".join(not_ready(statuses)))
        time.sleep(interval)


def up(workspace: Workspace, progress: Progress, wait_timeout: int = 180, build: bool = False,
       wait: bool = True, prometheus_port: int | None = None) -> UpResult:
    """Render, build the sidecar image if missing and start the project.

    With `wait`, compose waits up to `wait_timeout` seconds for every container to be
    healthy, then the workloads are polled until ready() within the same budget; the
    result's statuses say whether they made it. Without it, nothing is waited for.
    With a `prometheus_port` (0: any free one) a Prometheus scraping every sidecar runs too.
    """
    progress("validating the mesh file")
    workspace = with_base_image(workspace)
    loaded = ws.load(workspace)
    progress("checking the sidecar image")
    image = images.build_sidecar_image(progress)
    scraper = None
    if prometheus_port is not None:
        progress("checking the Prometheus image")
        scraper = prometheus.Prometheus(prometheus.image(progress), prometheus.config_dir(workspace.state_dir),
                                        prometheus_port)
        prometheus.write_config(scraper.config_dir, loaded.mesh)
    rendered = ws.write_rendered(loaded, image, prometheus=scraper)
    control_plane.apply(workspace)  # the sidecars' config, runtime faults included, before they start
    progress("issuing workload certificates")
    with ws.state_lock(workspace):
        ca.ensure(workspace, loaded.mesh)  # makes the project's CA on the first `up`
    progress(f"starting {len(loaded.mesh.workloads)} meshed workloads with docker compose")
    args = _profiles(workspace.project.active_profiles) + ["up", "-d", "--remove-orphans"]
    if wait:
        args += ["--wait", "--wait-timeout", str(wait_timeout)]
    if build:
        args.append("--build")
    started = time.monotonic()
    docker_engine.compose(loaded.project.name, [workspace.rendered_file], args)
    progress("starting the hot-reload watcher")
    watcher_pid = watcher.start(workspace)
    _apply_edits_made_meanwhile(workspace)
    url = prometheus.url(loaded.project.name) if scraper is not None else None
    if not wait:
        return UpResult(loaded, rendered, image, status.collect(loaded), watcher_pid, url)
    progress("checking that every sidecar is healthy and runs the current config")
    return UpResult(loaded, rendered, image, wait_ready(loaded, started + wait_timeout, progress), watcher_pid, url)


def _apply_edits_made_meanwhile(workspace: Workspace) -> None:
    """Apply once more: mesh.yaml or the faults may have changed while compose was starting,
    before the watcher watched. An invalid file is recorded for `meshcli status` (the sidecars
    keep the rendered config), not fatal: the project is up."""
    try:
        control_plane.apply(workspace)
    except InvalidFileError:
        pass


def down(workspace: Workspace, progress: Progress, volumes: bool = False) -> str:
    """Remove every container and network of the project; return its name.

    Named volumes hold the user's data: they stay unless `volumes` (`docker compose down
    -v`), exactly as with `docker compose down`. Needs only the project's name: a
    half-edited mesh.yaml must never stop a teardown, and nothing is rendered just to be
    deleted.
    """
    name = workspace.project.name
    if watcher.stop(workspace) is not None:
        progress("stopped the hot-reload watcher")
    # Without the rendered file compose finds the project's containers by their labels.
    files = [workspace.rendered_file] if workspace.rendered_file.is_file() else []
    progress(f"removing project {name}")
    args = (_profiles(("*",)) if files else []) + ["down", "--remove-orphans", "--timeout", "5"]
    if volumes:
        args.append("-v")
    docker_engine.compose(name, files, args)
    return name
