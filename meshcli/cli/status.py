"""`meshcli status`: every workload, its sidecar's health and config sync (generation and
version, like `istioctl proxy-status`), its URLs; a rejected mesh.yaml; the hot-reload watcher;
the project's Prometheus, when it runs one."""

from __future__ import annotations

from pathlib import Path

import typer

from meshcli.cli import common, output

STATE_STYLE = {"running": "green", "healthy": "green", "SYNCED": "green", "STALE": "yellow",
               "starting": "yellow", "restarting": "yellow"}


def _cell(value: str):
    from rich.text import Text

    return Text(value, style=STATE_STYLE.get(value, "red" if value in ("missing", "exited", "unhealthy") else ""))


def print_table(statuses) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "VERSION", "WORKLOAD", "APP", "SIDECAR", "RESTARTS", "CONFIG", "MTLS", "CERT EXPIRES",
                   "URLS"):
        table.add_column(column)
    for s in statuses:
        sidecar = s.sidecar if s.sidecar != "running" else s.sidecar_health
        config = " ".join(part for part in (s.sync, f"gen {s.config_generation}" if s.config_generation else "",
                                            s.config_version or "") if part)
        table.add_row(Text(s.service), Text(s.version), Text(s.workload), _cell(s.app), _cell(sidecar),
                      str(s.sidecar_restarts), Text(config, style=STATE_STYLE.get(s.sync, "")), Text(s.mtls or "-"),
                      Text(_expiry(s.certificate_expires)), Text(" ".join(s.urls)))
    output.out.print(table)


def _expiry(iso: str | None) -> str:
    """'2026-12-02T10:51:45+00:00' -> '2026-12-02 10:51Z'."""
    return f"{iso[:10]} {iso[11:16]}Z" if iso else "-"


def healthy(statuses) -> bool:
    return all(s.healthy for s in statuses)


def register(app: typer.Typer) -> None:
    @app.command("status")
    @common.project_command()
    def status(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """Show each workload, its sidecar's health and whether it runs the current config."""
        from meshcli import control_plane, fault_layer, prometheus, rule_layer, sidecar_config, status as core, watcher

        located = project.locate()
        loaded, mesh_error = core.load(located)
        statuses = core.collect(loaded)
        on_disk = sidecar_config.current(located.config_dir)
        rejected = control_plane.rejection(located)
        watcher_pid = watcher.running_pid(located)
        prometheus_url = prometheus.url(loaded.project.name)
        faults = fault_layer.in_force(located, loaded.mesh)
        rules = rule_layer.active(located)
        if as_json:
            output.result({
                "project": loaded.project.name, "healthy": healthy(statuses),
                "config": {"version": on_disk.version, "generation": on_disk.generation} if on_disk else None,
                "rejected": rejected,
                "meshErrors": [d.to_json() for d in mesh_error.diagnostics] if mesh_error else [],
                "watcher": {"running": watcher_pid is not None, "pid": watcher_pid},
                "prometheus": prometheus_url,
                "faults": faults,
                "rules": [rule.to_json() for rule in rules],
                "workloads": [s.to_json() for s in statuses]}, ok=healthy(statuses))
        else:
            print_table(statuses)
            _print_config(on_disk, watcher_pid, located)
            if prometheus_url:
                output.info(f"Prometheus: {prometheus_url} (meshcli up --with prometheus)")
            _print_faults(faults)
            for rule in rules:
                output.warning(f"runtime rule {rule.id}: {rule.describe()} (set by a test, in "
                               f"{rule_layer.path(located)}; not in mesh.yaml)")
            _print_rejection(rejected, mesh_error)
        if not healthy(statuses):
            raise typer.Exit(1)


def _print_config(on_disk, watcher_pid: int | None, located) -> None:
    config = f"generation {on_disk.generation} ({on_disk.version})" if on_disk else "none compiled yet"
    output.info(f"config: {config}, in {located.config_dir}")
    if watcher_pid is not None:
        output.info(f"hot reload: watcher running (pid {watcher_pid}), log in {located.state_dir / 'watcher.log'}")
    else:
        output.warning("hot reload: no watcher runs; edits of mesh.yaml reach the sidecars with "
                       "`meshcli up`, `meshcli watch` or the `meshcli split`/`route` commands")


def _print_faults(faults: list[dict]) -> None:
    for f in faults:
        where = f"{f['service']}" + (f" route {f['route']}" if f["route"] else "")
        origin = f"fault {f['id']}" if f["id"] else "fault in mesh.yaml"
        lasting = f["timeLeft"] if f["timeLeft"] == "until cleared" else f"{f['timeLeft']} left"
        output.warning(f"{origin} on {where}: {f['description']} ({lasting})")


def _print_rejection(rejected: dict | None, mesh_error) -> None:
    """The errors that keep mesh.yaml from the sidecars, impossible to miss."""
    from rich.panel import Panel
    from rich.text import Text

    if rejected:
        keeping = rejected.get("keeping") or {}
        kept = (f"generation {keeping['generation']} ({keeping.get('version')})" if keeping.get("generation")
                else "their current config")
        title = f"{Path(str(rejected.get('file'))).name} rejected: the sidecars keep {kept}"
        errors = rejected.get("errors") or []
    elif mesh_error is not None:
        title = "the mesh file has errors (not applied)"
        errors = [f"{d.location}: {d.message}" for d in mesh_error.diagnostics if d.is_error]
    else:
        return
    output.err.print(Panel(Text("\n".join(errors)), title=Text(title, style="bold red"), border_style="red",
                           title_align="left", expand=False))
