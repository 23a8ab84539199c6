"""`meshcli fault`: inject HTTP and TCP faults at run time, list them, clear them.

`meshcli fault SERVICE --delay 2s` is short for `meshcli fault set SERVICE --delay 2s`.
Each change is compiled into sidecar.json at once; the command then waits until the
running sidecars apply it (unless --no-wait, or nothing is running).
"""

from __future__ import annotations

import time
from typing import Optional

import typer
from typer.core import TyperGroup

from meshcli.cli import common, output

TCP_KINDS_HELP = "reset | blackhole | latency | bandwidth | limit-data | slicer"


class _FaultGroup(TyperGroup):
    """Routes `fault SERVICE ...` (anything that is not a subcommand) to `fault set`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["set", *args]
        return super().parse_args(ctx, args)


def _apply(loaded, wait: bool, timeout: float) -> dict:
    """Compile the faults into sidecar.json and wait for the running sidecars; a summary for output."""
    from meshcli import control_plane, status

    compiled = control_plane.apply(loaded.workspace)
    summary = {"version": compiled.version, "generation": compiled.generation, "changed": compiled.changed,
               "sidecars": None}
    if wait and status.project_running(loaded.project.name):
        with output.progress(f"waiting for the sidecars to run generation {compiled.generation}") as progress:
            summary["sidecars"] = len(control_plane.wait_synced(loaded, compiled.version, timeout, progress))
    return summary


def _applied_text(summary: dict) -> str:
    count = summary["sidecars"]
    where = f"running on {count}/{count} sidecars" if count is not None else "applied when the mesh runs"
    return f"generation {summary['generation']} {where}"


def register(app: typer.Typer) -> None:
    fault_app = common.App(
        cls=_FaultGroup,
        short_help="Inject HTTP and TCP faults at run time; list and clear them.",
        help="Inject faults at run time: HTTP delays and aborts (Istio's), TCP faults (Toxiproxy's).\n\n"
             "meshcli fault SERVICE --abort 503 --percent 10 --for 30s\n\n"
             "meshcli fault list\n\nmeshcli fault clear [SERVICE] [--id ID]")
    app.add_typer(fault_app, name="fault")

    @fault_app.command("set")
    @common.project_command()
    def set_fault(
        service: str = typer.Argument(..., help="The mesh service whose callers get the fault."),
        delay: Optional[str] = typer.Option(None, "--delay", help="Delay requests this long, e.g. 2s."),
        abort: Optional[str] = typer.Option(None, "--abort", help="Answer with this HTTP status (200-599), "
                                                                  "or `reset` the caller's connection."),
        tcp: Optional[str] = typer.Option(None, "--tcp", help=f"A TCP fault on connections: {TCP_KINDS_HELP}."),
        latency: Optional[str] = typer.Option(None, "--latency", help="--tcp latency/slicer: delay per chunk."),
        jitter: Optional[str] = typer.Option(None, "--jitter", help="--tcp latency: ± this much at random."),
        rate: Optional[str] = typer.Option(None, "--rate", help="--tcp bandwidth: e.g. 64KB/s (KB = 1000 B)."),
        size: Optional[int] = typer.Option(None, "--bytes", help="--tcp limit-data: close after N bytes; "
                                                                 "--tcp slicer: slices of about N bytes."),
        percent: float = typer.Option(100.0, "--percent", help="Share of requests (HTTP) or connections (TCP)."),
        duration: Optional[str] = typer.Option(None, "--for", help="Remove the fault by itself after this long, "
                                                                   "e.g. 30s (default: until cleared)."),
        source: Optional[str] = typer.Option(None, "--source", help="Only calls made by this service."),
        no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout,
        project: common.ProjectFlags = common.PROJECT,
        as_json: bool = common.Json,
    ) -> None:
        """Inject a fault into the calls to SERVICE; replaces its previous fault at the same layer."""
        from meshcli import fault_layer, workspace

        loaded = workspace.load(project.locate())
        fault = fault_layer.build(loaded.mesh, service, delay=delay, abort=abort, tcp=tcp, latency=latency,
                                  jitter=jitter, rate=rate, size=size, percent=percent, duration=duration,
                                  source=source)
        stored = fault_layer.add(loaded.workspace, fault)
        summary = _apply(loaded, not no_wait, timeout)
        if as_json:
            output.result({"fault": fault_layer.view(stored, time.time()), "config": summary})
            return
        lasting = "until cleared" if stored.until is None else f"for {fault_layer.format_seconds(stored.until - stored.created)}"
        output.success(f"{stored.service}: {fault_layer.describe(stored)}, {lasting} ({stored.id}) - "
                       f"{_applied_text(summary)}")

    @fault_app.command("list")
    @common.project_command()
    def list_faults(
        project: common.ProjectFlags = common.PROJECT,
        as_json: bool = common.Json,
    ) -> None:
        """List the faults in force, with the time each has left."""
        from meshcli import fault_layer

        located = project.locate()
        now = time.time()
        faults = fault_layer.active(located, now)
        if as_json:
            output.result({"faults": [fault_layer.view(f, now) for f in faults]})
            return
        if not faults:
            output.info("no faults in force")
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("ID", "SERVICE", "SOURCE", "FAULT", "TIME LEFT"):
            table.add_column(column)
        for f in faults:
            table.add_row(Text(f.id), Text(f.service), Text(f.source or "*"), Text(fault_layer.describe(f)),
                          Text(fault_layer.format_seconds(f.seconds_left(now))))
        output.out.print(table)

    @fault_app.command("clear")
    @common.project_command()
    def clear_faults(
        service: Optional[str] = typer.Argument(None, help="Only this service's faults (default: all)."),
        fault_id: Optional[str] = typer.Option(None, "--id", help="Only the fault with this id (see `fault list`)."),
        no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout,
        project: common.ProjectFlags = common.PROJECT,
        as_json: bool = common.Json,
    ) -> None:
        """Remove faults: all of them, a service's, or one by id."""
        from meshcli import fault_layer, workspace
        from meshcli.errors import InputError

        loaded = workspace.load(project.locate())
        if service is not None:
            fault_layer.check_service(loaded.mesh, service)
        if fault_id is not None and fault_id not in {f.id for f in fault_layer.active(loaded.workspace)}:
            raise InputError(f"no fault in force has the id {fault_id!r}", hint="`meshcli fault list` shows the ids")
        removed = fault_layer.clear(loaded.workspace, service, fault_id)
        summary = _apply(loaded, not no_wait, timeout)
        if as_json:
            now = time.time()
            output.result({"cleared": [fault_layer.view(f, now) for f in removed], "config": summary})
        elif removed:
            names = ", ".join(f"{f.service} {fault_layer.describe(f)} ({f.id})" for f in removed)
            output.success(f"cleared {len(removed)} fault{'s' if len(removed) != 1 else ''}: {names} - "
                           f"{_applied_text(summary)}")
        else:
            output.info("no faults to clear")
