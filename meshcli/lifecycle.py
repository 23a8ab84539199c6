"""Bringing a meshed project up and down: render, build what is missing, run compose."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meshcli import compose_model, docker_engine, images, workspace as ws
from meshcli.workspace import Loaded, Workspace

Progress = Callable[[str], None]


def _compose_env(workspace: Workspace) -> dict[str, str]:
    # The demo's sample apps build FROM ${MESHCLI_BASE_IMAGE}: the same base as the sidecar.
    if "MESHCLI_BASE_IMAGE" in os.environ:
        return {}
    return {"MESHCLI_BASE_IMAGE": images.base_image(docker_engine.client())}


def _compose_args(workspace: Workspace) -> list[str]:
    return ["--env-file", str(workspace.env_file)] if workspace.env_file else []


@dataclass
class UpResult:
    loaded: Loaded
    rendered: Path
    sidecar_image: str


def up(workspace: Workspace, progress: Progress, wait_timeout: int = 180, build: bool = False) -> UpResult:
    progress("validating compose and mesh files")
    loaded = ws.load(workspace)
    progress("checking the sidecar image")
    image = images.build_sidecar_image(progress)
    rendered = ws.render(loaded, image)
    progress(f"starting {len(loaded.mesh.workloads)} meshed workloads with docker compose")
    args = _compose_args(workspace) + ["up", "-d", "--remove-orphans", "--wait", "--wait-timeout", str(wait_timeout)]
    if build:
        args.append("--build")
    docker_engine.compose(loaded.project.name, [workspace.rendered_file], args, env=_compose_env(workspace))
    return UpResult(loaded, rendered, image)


def down(workspace: Workspace, progress: Progress, volumes: bool = True) -> str:
    """Remove every container, network (and volume) of the project; return its name.

    Needs only the project's name: a half-edited mesh.yaml must never stop a teardown,
    and nothing is rendered just to be deleted.
    """
    name = compose_model.load(workspace.compose_file, workspace.project_name).name
    # Without the rendered file compose finds the project's containers by their labels.
    files = [workspace.rendered_file] if workspace.rendered_file.is_file() else []
    progress(f"removing project {name}")
    args = (_compose_args(workspace) if files else []) + ["down", "--remove-orphans", "--timeout", "5"]
    if volumes:
        args.append("-v")
    docker_engine.compose(name, files, args, env=_compose_env(workspace))
    return name
