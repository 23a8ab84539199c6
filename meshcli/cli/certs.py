"""`meshcli certs`: each workload's identity (SPIFFE ID), serial, validity and whether its sidecar serves it."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("certs")
    @common.project_command()
    def certs(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """List the workloads' certificates and whether each sidecar serves its current one."""
        from rich.table import Table
        from rich.text import Text

        from meshcli import security, workspace as ws

        rows = security.certs(ws.load(project.locate()))
        if as_json:
            output.result({"workloads": [row.to_json() for row in rows]})
            return
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("WORKLOAD", "MTLS", "IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "SERVING"):
            table.add_column(column)
        for row in rows:
            leaf = row.leaf
            serving = {True: Text("yes", style="green"), False: Text("no", style="red"), None: Text("-")}[row.serving]
            table.add_row(Text(row.workload), Text(row.mode), Text(leaf.spiffe_id if leaf else "none"),
                          Text(leaf.serial[:16] if leaf else "-"),
                          Text(f"{leaf.not_before:%Y-%m-%d %H:%M:%S}" if leaf else "-"),
                          Text(f"{leaf.not_after:%Y-%m-%d %H:%M:%S}" if leaf else "-"), serving)
        output.out.print(table)
