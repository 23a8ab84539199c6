"""`meshcli status`: every workload, its sidecar's health and config sync, its URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from meshcli.cli import common, output

STATE_STYLE = {"running": "green", "healthy": "green", "SYNCED": "green", "STALE": "yellow",
               "starting": "yellow", "restarting": "yellow"}


def _cell(value: str) -> Text:
    return Text(value, style=STATE_STYLE.get(value, "red" if value in ("missing", "exited", "unhealthy") else ""))


def print_table(statuses) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "VERSION", "WORKLOAD", "APP", "SIDECAR", "RESTARTS", "CONFIG", "URLS"):
        table.add_column(column)
    for s in statuses:
        sidecar = s.sidecar if s.sidecar != "running" else s.sidecar_health
        config = f"{s.sync} {s.config_version or ''}".strip()
        table.add_row(Text(s.service), Text(s.version), Text(s.workload), _cell(s.app), _cell(sidecar),
                      str(s.sidecar_restarts), _cell(config) if s.sync != "SYNCED" else Text(config, style="green"),
                      Text(" ".join(s.urls)))
    output.out.print(table)


def healthy(statuses) -> bool:
    return all(s.app == "running" and s.sidecar_health == "healthy" for s in statuses)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        compose_file: Optional[Path] = common.ComposeFile,
        mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName,
        as_json: bool = common.Json,
    ) -> None:
        """Show each workload, its sidecar's health and whether it runs the current config."""
        from meshcli import status as core, workspace

        loaded = workspace.load(common.locate(compose_file, mesh_file, project))
        statuses = core.collect(loaded)
        if as_json:
            output.emit_json({"project": loaded.project.name, "healthy": healthy(statuses),
                              "workloads": [s.to_json() for s in statuses]})
        else:
            print_table(statuses)
        if not healthy(statuses):
            raise typer.Exit(1)
