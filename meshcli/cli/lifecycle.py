"""`meshcli up` and `meshcli down`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName,
        timeout: int = typer.Option(180, "--timeout", help="Seconds to wait for every container to be healthy."),
        build: bool = typer.Option(False, "--build", help="Rebuild the app images (docker compose up --build)."),
        as_json: bool = common.Json,
    ) -> None:
        """Render the meshed compose file, build what is missing, start it and wait until healthy."""
        from meshcli import lifecycle, status as core
        from meshcli.cli.status import healthy, print_table

        located = common.locate(compose_file, mesh_file, project)
        if located.is_demo and not as_json:
            output.info(f"no compose file here: running the bundled demo ({located.compose_file})")
        started = time.monotonic()
        with output.progress("starting the mesh") as progress:
            result = lifecycle.up(located, progress, wait_timeout=timeout, build=build)
        elapsed = time.monotonic() - started
        statuses = core.collect(result.loaded)
        if as_json:
            output.emit_json({"project": result.loaded.project.name, "seconds": round(elapsed, 1),
                              "rendered": str(result.rendered), "sidecar_image": result.sidecar_image,
                              "healthy": healthy(statuses), "workloads": [s.to_json() for s in statuses]})
        else:
            for d in result.loaded.diagnostics:
                output.diagnostic(d)
            print_table(statuses)
            output.success(f"project {result.loaded.project.name} is up in {elapsed:.1f}s")
        if not healthy(statuses):
            raise typer.Exit(1)

    @app.command("down")
    def down(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName,
        keep_volumes: bool = typer.Option(False, "--keep-volumes", help="Keep the project's named volumes."),
        as_json: bool = common.Json,
    ) -> None:
        """Stop and remove every container, network and volume the project created."""
        from meshcli import lifecycle

        located = common.locate(compose_file, mesh_file, project)
        with output.progress("stopping the mesh") as progress:
            name = lifecycle.down(located, progress, volumes=not keep_volumes)
        if as_json:
            output.emit_json({"project": name, "removed": True})
        else:
            output.success(f"project {name} removed")
