"""`meshcli watch`: the hot-reload watcher in the foreground (`meshcli up` runs it in the background)."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def print_event(record: dict) -> None:
    """One watcher event as a line for people (`--json` prints the record itself)."""
    event = record["event"]
    if event == "started":
        output.info(f"watching {', '.join(record['watching'])} (pid {record['pid']}; Ctrl-C to stop)")
    elif event in ("applied", "unchanged"):
        output.success(f"{event}: generation {record['generation']} ({record['version']})")
    elif event == "rejected":
        output.error(f"{record['file']} rejected; the sidecars keep their config:\n" + "\n".join(record["errors"]))
    elif event == "error":
        output.error(record["error"])
    elif event == "project-gone":
        output.warning(f"{record['directory']} is gone: stopping")
    else:
        output.info(f"watcher {event}")


def register(app: typer.Typer) -> None:
    @app.command("watch")
    @common.project_command()
    def watch(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """Apply mesh.yaml (and runtime faults) to the sidecars on every change, until Ctrl-C.

        Prints a line per event; with --json one JSON object per event (JSON Lines), as
        written to .mesh/PROJECT/watcher.log.
        """
        from meshcli import watcher

        watcher.run(project.locate(), output.json_line if as_json else print_event)
