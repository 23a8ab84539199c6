"""`meshcli tap SERVICE`: a live stream of the service's requests (as `linkerd viz tap`)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import typer

from meshcli.cli import common, output


def print_record(record: dict) -> None:
    from rich.text import Text

    if "error" in record:
        output.warning(f"tap: {record['error']}")
        return
    if "dropped" in record:
        output.warning(f"tap: {record['workload']} did not send {record['overRate']} requests beyond --max-rps "
                       f"and {record['dropped']} while this terminal was behind (so far)")
        return
    status = record["status"]
    style = "green" if 0 < status < 400 else "yellow" if 400 <= status < 500 else "red"
    arrow = "->" if record["direction"] == "outbound" else "<-"
    at = datetime.fromtimestamp(record["time"]).strftime("%H:%M:%S.%f")[:-3]
    line = Text(f"{at} {record['workload']} {arrow} ")
    line.append(f"{record['source']} -> {record['destination']} {record['version']} ")
    line.append(f"{record['method']} {record['authority']}{record['path']} ")
    line.append(str(status or "reset"), style=style)
    line.append(f" {record['durationMs']:.1f}ms")
    if record["responseFlags"] != "-":
        line.append(f" flags={record['responseFlags']}", style="yellow")
    if record.get("attempts", 0) > 1:
        line.append(f" attempts={record['attempts']}", style="yellow")
    if record.get("traceId"):
        line.append(f" trace={record['traceId']}", style="dim")
    output.out.print(line)


def register(app: typer.Typer) -> None:
    @app.command("tap")
    @common.project_command()
    def tap(service: str = typer.Argument(..., help="The service to watch (its sidecars' requests)."),
            path: Optional[str] = typer.Option(None, "--path", help="Only paths starting with this."),
            method: Optional[str] = typer.Option(None, "--method", help="Only this HTTP method."),
            status: Optional[str] = typer.Option(None, "--status", help="Only this status (503) or class (5xx)."),
            source: Optional[str] = typer.Option(None, "--source", help="Only calls from this workload or service."),
            count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="Stop after this many requests."),
            seconds: Optional[float] = typer.Option(None, "--duration", min=0.1,
                                                    help="Stop after this many seconds."),
            max_rps: int = typer.Option(100, "--max-rps", min=1,
                                        help="Requests per second each sidecar sends at most (as linkerd's tap)."),
            project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """Stream SERVICE's requests live: source, destination, version, status, latency, until Ctrl-C.

        Secret headers (Authorization, Cookie, Set-Cookie and the mesh file's
        telemetry.redactHeaders) are redacted by the sidecars. With --json one JSON
        object per request (JSON Lines).
        """
        from meshcli import status as status_core, tap as core

        filters = core.Filters(path, method, core.check_status(status), source)
        loaded, _ = status_core.load(project.locate())
        if not as_json:
            output.info(f"tapping {service} (Ctrl-C to stop)")
        for record in core.stream(loaded, service, filters, count, seconds, max_rps):
            if as_json:
                output.json_line(record)
            else:
                print_record(record)
