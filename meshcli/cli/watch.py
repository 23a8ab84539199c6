"""`meshcli watch`: the hot-reload watcher in the foreground (`meshcli up` runs it in the background)."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("watch")
    @common.project_command()
    def watch(project: common.ProjectFlags = common.PROJECT) -> None:
        """Apply mesh.yaml (and runtime faults) to the sidecars on every change, until Ctrl-C.

        Prints one JSON line per change.
        """
        from meshcli import watcher

        located = project.locate()
        output.info(f"watching {located.mesh_path} (Ctrl-C to stop)")
        watcher.run(located, foreground=True)
