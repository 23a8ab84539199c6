"""Running one edit of mesh.yaml through `control_plane.edit()` and reporting it: shared by
`meshcli split`, `meshcli route ...` and `meshcli apply`.

Each command is one transform of meshcli/mesh_edit.py: validated before anything is
written, applied, and waited for until every running sidecar runs it. `--dry-run`
prints the diff instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from meshcli.cli import common, output

DryRun = typer.Option(False, "--dry-run", help="Print the change to mesh.yaml as a unified diff; write nothing.")
RouteName = typer.Option(None, "--route", help="Change this named route instead of the default route.")
Service = typer.Argument(..., help="The logical service (as in mesh.yaml or `meshcli status`).")


def run(project: common.ProjectFlags, service: str | None, what: str, transform: Callable[[str, Path], str],
        dry_run: bool, as_json: bool, no_wait: bool, timeout: float, located=None, extra: dict | None = None) -> None:
    """Run `transform(text, path)` through control_plane.edit() and report like every command here.
    `service` None: the change is not about one service (`meshcli apply`). `located`: the workspace
    when the command has read it already; `extra`: more keys for the --json result."""
    from meshcli import control_plane

    located = located or project.locate()
    path = located.mesh_path
    subject = service or path.name
    if dry_run:
        result = control_plane.edit(located, lambda text: transform(text, path), dry_run=True, service=service)
    else:
        with output.progress(f"{subject}: {what}") as progress:
            result = control_plane.edit(located, lambda text: transform(text, path), wait=not no_wait,
                                        timeout=timeout, progress=progress, service=service)
    workloads = len(result.synced) if result.synced is not None else None
    synced = sum(1 for s in result.synced if s.sync == "SYNCED") if result.synced is not None else None
    if as_json:
        output.result({
            "service": service, "change": what, "file": str(result.file), "changed": result.changed,
            "dryRun": dry_run, "diff": result.diff,
            "version": result.compiled.version if result.compiled else None,
            "generation": result.compiled.generation if result.compiled else None,
            "sidecars": {"synced": synced, "workloads": workloads} if result.synced is not None else None,
            "seconds": round(result.seconds, 2), **(extra or {}),
        })
        return
    if dry_run:
        output.emit_text(result.diff)
        if not result.changed:
            output.info(f"{subject}: {what} - nothing would change")
        return
    generation = f"{'' if result.compiled.changed else 'already at '}generation {result.compiled.generation}"
    if result.synced is not None:
        output.success(f"{subject}: {what} - {generation} running on {synced}/{workloads} sidecars "
                       f"({result.seconds:.1f} s)")
    elif no_wait:
        output.success(f"{subject}: {what} - {generation} applied (not waiting for the sidecars)")
    else:
        output.success(f"{subject}: {what} - {generation} written (project not running)")
