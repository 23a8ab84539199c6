"""`meshcli demo [DIR]`: copy the bundled demo into DIR (default ./meshcli-demo) and bring it up."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        directory: Path = typer.Argument(Path("meshcli-demo"), help="Where to copy the demo (empty, or a "
                                                                   "previous copy, which is used as it is)."),
        up: bool = typer.Option(True, "--up/--no-up", help="Bring the copy up (--no-up: only copy it)."),
        timeout: int = typer.Option(240, "--timeout", min=1, help="Seconds to wait until the mesh is ready."),
        as_json: bool = common.Json,
    ) -> None:
        """Run the demo (frontend -> orders -> payment v1/v2) on a copy of its files."""
        from meshcli import demo as core, lifecycle, workspace
        from meshcli.cli.lifecycle import up_json
        from meshcli.cli.status import print_table
        from meshcli.compose_model import ComposeOptions

        copy = core.copy(directory)
        output.info(f"{'using the demo copy in' if copy.reused else 'copied the demo to'} {copy.directory}")
        compose_dir = copy.compose_dir
        where = f"cd {compose_dir}"
        copied = {"directory": str(copy.directory), "reused": copy.reused, "composeDirectory": str(compose_dir)}
        if not up:
            if as_json:
                output.result({**copied, "up": None})
            else:
                output.info(f"Next:\n  {where}\n  meshcli up")
            return
        located = workspace.locate(ComposeOptions(cwd=compose_dir))
        started = time.monotonic()
        with output.progress("starting the demo") as progress:
            result = lifecycle.up(located, progress, wait_timeout=timeout)
        if as_json:
            output.result({**copied, "up": up_json(result, time.monotonic() - started)}, ok=result.ready)
            if not result.ready:
                raise typer.Exit(1)
            return
        print_table(result.statuses)
        urls = [url for s in result.statuses if s.workload == "frontend" for url in s.urls]
        if not result.ready:
            output.error(f"the demo is not ready after {timeout}s: " + "; ".join(lifecycle.not_ready(result.statuses)),
                         hint=f"{where} && meshcli status")
            raise typer.Exit(1)
        output.success(f"the demo is up in {time.monotonic() - started:.1f}s: {urls[0] if urls else 'frontend'}")
        output.info("Try:\n"
                    f"  {where}\n"
                    f"  curl -s {urls[0] if urls else 'http://localhost:8080/'}   # frontend -> orders -> payment\n"
                    "  meshcli status\n"
                    "  meshcli split payment v1=90 v2=10      # canary, hot-reloaded\n"
                    "  meshcli fault payment --abort 503 --percent 50 --for 30s\n"
                    "  meshcli down                           # remove everything")
