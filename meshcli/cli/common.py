"""Options shared by commands, spelled like docker compose's (-f, -p)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ComposeFile = typer.Option(None, "--file", "-f", help="Compose file (default: compose.yaml here, else the bundled demo).",
                           dir_okay=False)
MeshFile = typer.Option(None, "--mesh", "-m", help="Mesh file (default: mesh.yaml beside the compose file).",
                        dir_okay=False)
ProjectName = typer.Option(None, "--project-name", "-p", help="Compose project name (default: the compose file's).")
Json = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
# For the commands that change what sidecars run, then wait until every running sidecar runs it.
NoWait = typer.Option(False, "--no-wait", help="Do not wait for the sidecars to run the change.")
SyncTimeout = typer.Option(30.0, "--timeout", min=0,
                           help="Seconds to wait for every sidecar to run the change (then exit 1).")


def locate(compose_file: Optional[Path], mesh_file: Optional[Path], project: Optional[str]):
    from meshcli import workspace

    return workspace.locate(compose_file, mesh_file, project)
