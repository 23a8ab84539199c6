"""`meshcli validate`: check the compose and mesh files, print every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        as_json: bool = common.Json,
    ) -> None:
        """Validate the mesh file against the compose file. Exit 2 when there are errors."""
        from meshcli import workspace
        from meshcli.errors import InvalidFileError

        located = common.locate(compose_file, mesh_file, None)
        try:
            loaded = workspace.load(located)
            diagnostics = loaded.diagnostics
        except InvalidFileError as exc:
            if not as_json:
                raise
            output.emit_json({"valid": False, "diagnostics": [d.to_json() for d in exc.diagnostics]})
            raise typer.Exit(exc.exit_code)
        if as_json:
            output.emit_json({"valid": True, "diagnostics": [d.to_json() for d in diagnostics]})
            return
        for d in diagnostics:
            output.diagnostic(d)
        output.success(f"{located.mesh_file or located.compose_file}: valid "
                       f"({len(loaded.mesh.services)} services, {len(loaded.mesh.workloads)} workloads)")
