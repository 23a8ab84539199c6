"""`meshcli init`: write a starter mesh.yaml for a compose file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        compose_file: Optional[Path] = common.ComposeFile,
        output_file: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Where to write (default: mesh.yaml beside the compose file)."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing mesh file."),
        stdout: bool = typer.Option(False, "--stdout", help="Print the mesh file instead of writing it."),
    ) -> None:
        """Write a starter mesh.yaml listing the services, versions and ports, with comments."""
        from meshcli import compose_model, mesh_init, workspace
        from meshcli.errors import InputError
        from meshcli.yaml_source import atomic_write

        located = workspace.locate(compose_file)
        project = compose_model.load(located.compose_file)
        for d in project.diagnostics:
            output.diagnostic(d)
        text = mesh_init.starter(project)
        if stdout:
            output.emit_text(text)
            return
        target = output_file or located.compose_file.parent / workspace.MESH_FILE
        if target.exists() and not force:
            raise InputError(f"{target} exists", hint="pass --force to overwrite it, or --stdout to print")
        atomic_write(target, text)
        output.success(f"wrote {target} ({len(project.logical_services())} services)")
