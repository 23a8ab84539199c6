"""`meshcli validate`: check the compose and mesh files, print every problem at once."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("validate")
    @common.project_command()
    def validate(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """Validate the mesh file against the compose project. Exit 2 when there are errors."""
        from meshcli import workspace

        located = project.locate()
        loaded = workspace.load(located)
        diagnostics = loaded.diagnostics
        if as_json:  # an invalid project is an error: main() prints it, with every diagnostic
            output.result({"diagnostics": [d.to_json() for d in diagnostics]})
            return
        for d in diagnostics:
            output.diagnostic(d)
        output.success(f"{located.mesh_file or located.project.path}: valid "
                       f"({len(loaded.mesh.services)} services, {len(loaded.mesh.workloads)} workloads)")
