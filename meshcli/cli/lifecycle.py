"""`meshcli up` and `meshcli down`.

Both are made for scripts and CI as much as for people: `--json` prints one JSON object
on stdout (also when they fail, like every command: output.failure_json), and the exit code
says what happened: 0 ok, 1 the mesh did not become ready in time or compose failed, 2 bad input.
"""

from __future__ import annotations

import time

import typer

from meshcli.cli import common, output


def up_json(result, seconds: float) -> dict:
    """What `meshcli up --json` prints (and `meshcli demo --json` under "up")."""
    from meshcli import lifecycle, sidecar_config

    statuses = result.statuses
    config = sidecar_config.current(result.loaded.workspace.config_dir)
    return {
        "project": result.loaded.project.name,
        "seconds": round(seconds, 1),
        "healthy": lifecycle.ready(statuses),
        "notReady": lifecycle.not_ready(statuses),
        "rendered": str(result.rendered),
        "sidecarImage": result.sidecar_image,
        "config": {"version": config.version, "generation": config.generation} if config else None,
        "urls": {s.workload: s.urls for s in statuses if s.urls},
        "prometheus": result.prometheus_url,
        "workloads": [s.to_json() for s in statuses],
    }


def register(app: typer.Typer) -> None:
    @app.command("up")
    @common.project_command()
    def up(
        project: common.ProjectFlags = common.PROJECT,
        wait: bool = typer.Option(True, "--wait/--no-wait",
                                  help="Wait until every app runs and every sidecar is healthy and runs the "
                                       "current config (exit 1 if that takes longer than --timeout)."),
        timeout: int = typer.Option(180, "--timeout", min=1,
                                    help="Seconds --wait waits for the workloads (image builds not counted)."),
        build: bool = typer.Option(False, "--build", help="Rebuild the app images (docker compose up --build)."),
        with_addons: list[str] = typer.Option([], "--with", metavar="ADDON",
                                              help="Also run `prometheus`: it scrapes every sidecar (Istio's "
                                                   "metrics, for Istio's Grafana dashboards)."),
        prometheus_port: int = typer.Option(9090, "--prometheus-port", min=0, max=65535,
                                            help="Host port of the Prometheus (0: any free port)."),
        as_json: bool = common.Json,
    ) -> None:
        """Render the meshed compose file, build what is missing, start it and wait until ready."""
        from meshcli import lifecycle, prometheus
        from meshcli.cli.status import print_table
        from meshcli.errors import InputError

        unknown = sorted(set(with_addons) - {prometheus.ADDON})
        if unknown:
            raise InputError(f"--with: unknown addon {', '.join(unknown)}; expected {prometheus.ADDON}")
        located = project.locate()
        started = time.monotonic()
        with output.progress("starting the mesh") as progress:
            result = lifecycle.up(located, progress, wait_timeout=timeout, build=build, wait=wait,
                                  prometheus_port=prometheus_port if prometheus.ADDON in with_addons else None)
        elapsed = time.monotonic() - started
        ready = lifecycle.ready(result.statuses)
        if as_json:
            output.result(up_json(result, elapsed), ok=ready or not wait)  # ok: false when not ready in time
        else:
            for d in result.loaded.diagnostics:
                output.diagnostic(d)
            print_table(result.statuses)
            name = result.loaded.project.name
            if ready:
                output.success(f"project {name} is up in {elapsed:.1f}s")
            if result.prometheus_url:
                output.info(f"Prometheus: {result.prometheus_url} (Grafana: add it as a Prometheus data source, "
                            f"then import Istio's dashboards)")
            elif wait:
                output.error(f"project {name} is not ready after {timeout}s: "
                             + "; ".join(lifecycle.not_ready(result.statuses)),
                             hint=f"see `docker compose -p {name} logs`, or raise --timeout")
            else:
                output.info(f"project {name} started in {elapsed:.1f}s (not waiting: --no-wait)")
        if wait and not ready:
            raise typer.Exit(1)

    @app.command("down")
    @common.project_command()
    def down(
        project: common.ProjectFlags = common.PROJECT,
        volumes: bool = typer.Option(False, "--volumes", "-v",
                                     help="Also remove the project's named volumes and the data in them."),
        keep_volumes: bool = typer.Option(False, "--keep-volumes", hidden=True,
                                          help="Deprecated: volumes are kept unless -v."),
        as_json: bool = common.Json,
    ) -> None:
        """Stop and remove every container and network of the project; its volumes stay unless -v."""
        from meshcli import lifecycle
        from meshcli.errors import InputError

        if volumes and keep_volumes:
            raise InputError("--volumes and --keep-volumes contradict each other",
                             hint="volumes are kept by default; -v removes them")
        located = project.locate()
        started = time.monotonic()
        with output.progress("stopping the mesh") as progress:
            name = lifecycle.down(located, progress, volumes=volumes)
        elapsed = time.monotonic() - started
        if as_json:
            output.result({"project": name, "removed": True, "volumesRemoved": volumes,
                           "seconds": round(elapsed, 1)})
        else:
            output.success(f"project {name} removed in {elapsed:.1f}s"
                           + ("" if volumes else " (volumes kept: -v removes them)"))
