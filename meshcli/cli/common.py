"""Options shared by commands.

The project options are docker compose's (`-f`, `-p`, `--project-directory`,
`--env-file`, `--profile`) and mean what they mean there; they are declared once, here,
and `project_command` gives them to every command that takes a project, as one
`ProjectFlags` value. `--mesh` is meshcli's own.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import typer
from typer.core import TyperCommand


class PlainHelpCommand(TyperCommand):
    """A command whose help is plain text, as docker compose's and kubectl's is, with the
    options of each `rich_help_panel` in a section of their own. (typer's rich help would
    cost `meshcli --help` 60-100 ms of imports: rich's markdown, syntax and traceback.)"""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                title = ("Arguments" if param.param_type_name == "argument"
                         else getattr(param, "rich_help_panel", None) or "Options")
                sections.setdefault(title, []).append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class App(typer.Typer):
    """A meshcli command group: plain help (PlainHelpCommand), and its help when called bare."""

    def __init__(self, **settings) -> None:
        super().__init__(**{"rich_markup_mode": None, "no_args_is_help": True, **settings})

    def command(self, *args, cls=PlainHelpCommand, **kwargs):
        return super().command(*args, cls=cls, **kwargs)


Json = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
# For the commands that change what sidecars run, then wait until every running sidecar runs it.
NoWait = typer.Option(False, "--no-wait", help="Do not wait for the sidecars to run the change.")
SyncTimeout = typer.Option(30.0, "--timeout", min=0,
                           help="Seconds to wait for every sidecar to run the change (then exit 1).")

_COMPOSE = "Compose project (as for docker compose)"
_PROJECT_OPTIONS = {
    "compose_files": (List[str], typer.Option(
        [], "--file", "-f", metavar="FILE", rich_help_panel=_COMPOSE, show_default=False,
        help="Compose file (repeatable, merged in order; - reads stdin). Default: as docker compose: "
             "COMPOSE_FILE, else compose.yaml and compose.override.yaml here or above.")),
    "project_name": (Optional[str], typer.Option(
        None, "--project-name", "-p", metavar="NAME", rich_help_panel=_COMPOSE,
        help="Project name (default: COMPOSE_PROJECT_NAME, the `name:` of the file, or the directory's).")),
    "project_directory": (Optional[Path], typer.Option(
        None, "--project-directory", metavar="DIR", file_okay=False, rich_help_panel=_COMPOSE,
        help="Project directory (default: the first compose file's).")),
    "env_files": (List[str], typer.Option(
        [], "--env-file", metavar="FILE", rich_help_panel=_COMPOSE, show_default=False,
        help="Environment file for interpolation (repeatable; default: .env in the project directory).")),
    "profiles": (List[str], typer.Option(
        [], "--profile", metavar="NAME", rich_help_panel=_COMPOSE, show_default=False,
        help="Profile to enable (repeatable; also COMPOSE_PROFILES).")),
}
_MESH_OPTION = {"mesh_file": (Optional[Path], typer.Option(
    None, "--mesh", "-m", metavar="FILE", dir_okay=False, rich_help_panel=_COMPOSE,
    help="Mesh file (default: mesh.yaml in the project directory)."))}


@dataclass(frozen=True)
class ProjectFlags:
    """What the user said about which project to use; `locate()` reads it (once)."""

    compose_files: tuple[str, ...] = ()
    project_name: str | None = None
    project_directory: Path | None = None
    env_files: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    mesh_file: Path | None = None

    def compose_options(self):
        from meshcli.compose_model import STDIN, ComposeOptions

        stdin = sys.stdin.read() if STDIN in self.compose_files else None
        return ComposeOptions(self.compose_files, self.project_name, self.project_directory, self.env_files,
                              self.profiles, stdin)

    def locate(self):
        """The workspace: the compose project as docker compose resolves it, and its mesh file."""
        from meshcli import workspace

        return workspace.locate(self.compose_options(), self.mesh_file)


# The default of a command's `project` parameter, which project_command replaces by the options.
PROJECT = ProjectFlags()


def project_command(with_mesh: bool = True) -> Callable[[Callable], Callable]:
    """Decorate a command that takes `project: ProjectFlags`: it gets the project options
    (and `--mesh` unless `with_mesh=False`) in place of that parameter."""
    options = {**_PROJECT_OPTIONS, **(_MESH_OPTION if with_mesh else {})}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "project"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                 for name, (kind, default) in options.items()]

        @functools.wraps(command)
        def wrapper(**kwargs):
            given = {name: kwargs.pop(name) for name in options}
            for name in ("compose_files", "env_files", "profiles"):
                given[name] = tuple(given[name])
            return command(project=ProjectFlags(**given), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        del wrapper.__wrapped__  # typer must see the new signature, not the command's
        return wrapper

    return decorate
