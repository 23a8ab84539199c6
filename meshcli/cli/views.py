"""`meshcli stat`, `meshcli graph` and `meshcli top`: the mesh as its sidecars count it
(the figures: meshcli/views.py)."""

from __future__ import annotations

from typing import Optional

import typer

from meshcli.cli import common, output

Window = typer.Option("1m", "--window", "-w", help="The window rates and latencies cover: 10s, 1m, up to 10m.")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:g}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1000
    return str(count)


def _load(project: common.ProjectFlags):
    from meshcli import status

    loaded, _ = status.load(project.locate())  # an invalid mesh.yaml still shows what runs
    return loaded


def stat_table(stats, window: str):
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "VERSION", "WORKLOAD", "MESHED", "SUCCESS", "RPS", "P50", "P95", "P99",
                   "REQUESTS", "TCP_CONN", "TCP_BYTES"):
        table.add_column(column, justify="left" if column in ("SERVICE", "VERSION", "WORKLOAD") else "right")
    for s in stats:
        rate = s.success_rate
        style = "" if rate is None else "green" if rate >= 0.99 else "yellow" if rate >= 0.9 else "red"
        table.add_row(Text(s.service), Text(s.version), Text(s.workload), "yes" if s.meshed else Text("no", "red"),
                      Text(_percent(rate), style), "-" if s.rps is None else f"{s.rps:.1f}",
                      *(_ms(s.latency_ms[k]) for k in ("p50", "p95", "p99")), str(s.requests_total),
                      f"{s.tcp_open}/{s.tcp_connections_total}",
                      _bytes(s.tcp_received_bytes_total + s.tcp_sent_bytes_total))
    table.caption = f"rates and latencies over the last {window}; REQUESTS since each sidecar started; " \
                    f"TCP_CONN open/total"
    return table


def top_table(rows, service: str | None, interval: float):
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False,
                  title=f"busiest paths{' of ' + service if service else ''}, refreshed every {interval:g}s "
                        f"(Ctrl-C to stop)")
    for column in ("SOURCE", "DESTINATION", "METHOD", "PATH", "RPS", "SUCCESS", "MEAN", "MAX", "TOTAL"):
        table.add_column(column, justify="right" if column in ("RPS", "SUCCESS", "MEAN", "MAX", "TOTAL") else "left")
    for r in rows:
        table.add_row(Text(r.source), Text(r.workload), Text(r.method), Text(r.path), f"{r.per_second:.1f}",
                      _percent(r.success_rate), _ms(r.mean_ms), _ms(r.max_ms), str(r.total))
    return table


def graph_table(g):
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SOURCE", "DESTINATION", "PROTOCOL", "RATE", "ERRORS", "MTLS"):
        table.add_column(column)
    for edge in g.edges:
        data = edge.to_json()
        rate = data["perSecond"]
        unit = "conn/s" if edge.protocol == "tcp" else "req/s"
        mtls = Text(edge.mtls, "green" if edge.mtls == "mutual_tls" else "yellow")
        table.add_row(Text(edge.source), Text(edge.destination), edge.protocol,
                      "-" if rate is None else f"{rate:.2f} {unit}", _percent(edge.error_rate), mtls)
    return table


def register(app: typer.Typer) -> None:
    @app.command("stat")
    @common.project_command()
    def stat(
        service: Optional[str] = typer.Argument(None, help="Only the workloads of this service (or this workload)."),
        window: str = Window,
        project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
    ) -> None:
        """Per workload: success rate, requests/s, p50/p95/p99 latency, TCP connections and bytes."""
        from meshcli import views

        seconds = views.window_seconds(window)
        loaded = _load(project)
        stats = views.stat(loaded, seconds, service)
        if as_json:
            output.result({"project": loaded.project.name, "window": window,
                           "workloads": [s.to_json() for s in stats]})
            return
        output.out.print(stat_table(stats, window))
        if not any(s.meshed for s in stats):
            output.warning("no sidecar answered: is the project up (`meshcli status`)?")

    @app.command("graph")
    @common.project_command()
    def graph(
        output_format: str = typer.Option("text", "--format", "-o", help="text, dot, mermaid or json."),
        window: str = Window,
        project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
    ) -> None:
        """The service graph as the sidecars observed it: who calls whom, rates, errors, mTLS."""
        from meshcli import views
        from meshcli.errors import InputError

        if output_format not in views.FORMATS:
            raise InputError(f"--format: expected one of {', '.join(views.FORMATS)}, got {output_format!r}")
        seconds = views.window_seconds(window)
        loaded = _load(project)
        g = views.graph(loaded, seconds)
        if as_json or output_format == "json":
            output.result({"project": loaded.project.name, "window": window, **g.to_json()})
        elif output_format == "dot":
            output.emit_text(views.graph_dot(g))
        elif output_format == "mermaid":
            output.emit_text(views.graph_mermaid(g))
        else:
            output.out.print(graph_table(g))
            if not g.edges:
                output.info(f"no traffic between workloads in the last {window}")

    @app.command("top")
    @common.project_command()
    def top(
        service: Optional[str] = typer.Argument(None, help="Only requests served by this service (or workload)."),
        interval: float = typer.Option(2.0, "--interval", "-i", min=0.5, help="Seconds between refreshes."),
        limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many paths to show."),
        project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
    ) -> None:
        """A live table of the busiest paths (requests the sidecars served), refreshed until Ctrl-C.
        With --json: one sample over --interval seconds."""
        import time

        from meshcli import views

        loaded = _load(project)
        if as_json:
            rows = views.sample_top(loaded, service, interval, limit)
            output.result({"project": loaded.project.name, "intervalSeconds": interval,
                           "paths": [r.to_json() for r in rows]})
            return
        from rich.live import Live

        before, taken = views.path_counts(loaded, service), time.monotonic()
        with Live(top_table([], service, interval), console=output.out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                after, now = views.path_counts(loaded, service), time.monotonic()
                live.update(top_table(views.top(before, after, now - taken, limit), service, interval), refresh=True)
                before, taken = after, now
