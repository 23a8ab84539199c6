"""`meshcli init`: write a starter mesh.yaml for a compose project."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("init")
    @common.project_command(with_mesh=False)
    def init(
        project: common.ProjectFlags = common.PROJECT,
        output_file: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="Where to write (default: mesh.yaml in the project directory)."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing mesh file."),
        stdout: bool = typer.Option(False, "--stdout", help="Print the mesh file instead of writing it."),
        as_json: bool = common.Json,
    ) -> None:
        """Write a starter mesh.yaml listing the services, versions and ports, with comments."""
        from meshcli import mesh_init
        from meshcli.errors import InputError
        from meshcli.yaml_source import atomic_write

        located = project.locate()
        if not as_json:
            for d in located.project.diagnostics:
                output.diagnostic(d)
        text = mesh_init.starter(located.project)
        target = None if stdout else output_file or located.mesh_path
        if target is not None:
            if target.exists() and not force:
                raise InputError(f"{target} exists", hint="pass --force to overwrite it, or --stdout to print")
            atomic_write(target, text)
        services = located.project.logical_services()
        if as_json:
            output.result({"file": str(target) if target else None, "services": list(services), "text": text,
                           "diagnostics": [d.to_json() for d in located.project.diagnostics]})
            return
        if target is None:
            output.emit_text(text)
        else:
            output.success(f"wrote {target} ({len(services)} services)")
