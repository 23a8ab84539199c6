"""`meshcli render`: write the meshed compose file without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        output_file: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Where to write (default: .mesh/compose.yaml)."),
        project: Optional[str] = common.ProjectName,
        as_json: bool = common.Json,
    ) -> None:
        """Render the compose file with a pod and a sidecar for every meshed service."""
        from meshcli import images, workspace

        loaded = workspace.load(common.locate(compose_file, mesh_file, project))
        path = workspace.render(loaded, images.sidecar_image_tag(), output_file)
        if as_json:
            output.emit_json({
                "output": str(path),
                "project": loaded.project.name,
                "workloads": {name: {"service": w.service, "version": w.version}
                              for name, w in loaded.mesh.workloads.items()},
                "skipped": loaded.project.skipped,
                "diagnostics": [d.to_json() for d in loaded.diagnostics],
            })
            return
        for d in loaded.diagnostics:
            output.diagnostic(d)
        output.success(f"wrote {path} ({len(loaded.mesh.workloads)} meshed, {len(loaded.project.skipped)} left alone)")
