"""`meshcli split`: weighted traffic split between the versions of a service, in mesh.yaml."""

from __future__ import annotations

from typing import Optional

import typer

from meshcli.cli import common, mesh_edits


def register(app: typer.Typer) -> None:
    @app.command("split")
    @common.project_command()
    def split(
        service: str = mesh_edits.Service,
        weights: list[str] = typer.Argument(..., help="VERSION=PERCENT pairs summing to 100: v1=90 v2=10."),
        route: Optional[str] = mesh_edits.RouteName,
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Split a service's traffic between versions by weight (`split payment v2=100` promotes v2).

        Versions not named leave the split. Writes `split:` in mesh.yaml and waits until every
        sidecar runs it.
        """
        from meshcli import mesh_edit, rule_input

        parsed = rule_input.weights(weights)
        what = "split " + " ".join(f"{v}={w}" for v, w in parsed.items())
        mesh_edits.run(project, service, what,
                       lambda text, path: mesh_edit.set_split(text, path, service, parsed, route),
                       dry_run, as_json, no_wait, timeout)
