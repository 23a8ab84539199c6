"""`meshcli render`: preview the meshed compose file; start nothing, change no running sidecar."""

from __future__ import annotations

from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("render")
    @common.project_command()
    def render(
        project: common.ProjectFlags = common.PROJECT,
        output_file: Optional[str] = typer.Option(None, "--output", "-o",
                                                  help="Where to write (default: .mesh/PROJECT/compose.yaml; "
                                                       "- prints it on stdout)."),
        as_json: bool = common.Json,
    ) -> None:
        """Render the compose project with a pod and a sidecar for every meshed service."""
        from pathlib import Path

        from meshcli import images, workspace
        from meshcli.errors import InputError

        if output_file == "-" and as_json:
            raise InputError("--json and -o - both print on stdout", hint="pick one")
        loaded = workspace.load(project.locate())
        image = images.sidecar_image_tag()
        if output_file == "-":
            for d in loaded.diagnostics:
                output.diagnostic(d)
            output.emit_text(workspace.render_text(loaded, image))
            return
        path = workspace.write_rendered(loaded, image, Path(output_file) if output_file else None)
        if as_json:
            output.result({
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
