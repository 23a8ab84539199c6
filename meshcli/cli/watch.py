"""`meshcli watch`: the hot-reload watcher in the foreground (`meshcli up` runs it in the background)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName,
    ) -> None:
        """Apply mesh.yaml (and runtime faults) to the sidecars on every change, until Ctrl-C.

        Prints one JSON line per change.
        """
        from meshcli import watcher

        located = common.locate(compose_file, mesh_file, project)
        output.info(f"watching {located.mesh_file or located.compose_file.parent} (Ctrl-C to stop)")
        watcher.run(located, foreground=True)
