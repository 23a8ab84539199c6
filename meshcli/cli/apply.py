"""`meshcli apply`: push mesh.yaml as it is (the watcher started by `meshcli up` does it on save)."""

from __future__ import annotations

import typer

from meshcli.cli import common, mesh_edits


def register(app: typer.Typer) -> None:
    @app.command("apply")
    @common.project_command()
    def apply(
        project: common.ProjectFlags = common.PROJECT, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Validate mesh.yaml and push it (with the runtime faults) to every sidecar now.

        Then waits until each sidecar runs it. The watcher started by `meshcli up` does this
        on every save.
        """
        mesh_edits.run(project, None, "applied", lambda text, path: text, False, as_json, no_wait, timeout)
