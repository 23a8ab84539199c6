"""The only place that prints: human messages to stderr, data (tables, JSON) to stdout.

Markup is off for user-provided text, so a `[` in a service name never breaks output.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from meshcli.diagnostics import Diagnostic
    from meshcli.errors import MeshError

LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


@lru_cache(maxsize=None)
def _console(stderr: bool):
    # Imported here: `meshcli --help` must not pay for rich's console.
    from rich.console import Console

    # Off a terminal (CI logs, pipes) rich would wrap at 80 columns and split file:line:col
    # diagnostics and table rows; give it room instead.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def __getattr__(name: str):
    """`output.err` and `output.out`: the consoles for messages (stderr) and data (stdout)."""
    if name in ("err", "out"):
        return _console(name == "err")
    raise AttributeError(name)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def error(message: str, hint: str | None = None) -> None:
    _console(True).print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        _console(True).print(f"[dim]hint:[/] {escape(hint)}")


def warning(message: str) -> None:
    _console(True).print(f"[yellow]warning:[/] {escape(message)}")


def info(message: str) -> None:
    _console(True).print(escape(message))


def success(message: str) -> None:
    _console(True).print(f"[green]✓[/] {escape(message)}")


def diagnostic(d: Diagnostic) -> None:
    _console(True).print(f"{escape(d.location)}: [{LEVEL_STYLE[d.level.value]}]{d.level.value} {d.code}[/]: {escape(d.message)}")


def emit_text(text: str) -> None:
    """Raw text on stdout (a file's content): never wrapped or styled."""
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def result(data: dict, ok: bool = True) -> None:
    """A command's `--json` result: one object, `ok` first. Keys are camelCase, as in mesh.yaml."""
    emit_json({"ok": ok, **data})


def json_line(data: dict) -> None:
    """One JSON Lines record on stdout (`meshcli watch --json`)."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def failure(exc: MeshError) -> None:
    """An error on stderr: its diagnostics, or its message and hint (main() calls it, once)."""
    for d in exc.diagnostics:
        diagnostic(d)
    errors = sum(1 for d in exc.diagnostics if d.is_error)
    if errors:
        error(f"{errors} error{'s' if errors != 1 else ''}; nothing was changed")
    else:  # no diagnostic, or only the warnings that explain the failure
        error(exc.message, exc.hint)


def failure_json(exc: MeshError) -> None:
    """An error as `--json` prints it, for every command: one object on stdout,
    `{"ok": false, "error": {code, message, file, line, column, hint}, "diagnostics": [...]}`.
    `code` is the first diagnostic's (MESH0xxx) or the error class's ("usage", "docker",
    "failure", "interrupted"); file/line/column are the first diagnostic's (null without one);
    `diagnostics` lists every diagnostic the error carries (empty without)."""
    first = exc.diagnostics[0].to_json() if exc.diagnostics else {}
    emit_json({"ok": False,
               "error": {"code": first.get("code", exc.code), "message": exc.message, "file": first.get("file"),
                         "line": first.get("line"), "column": first.get("column"), "hint": exc.hint},
               "diagnostics": [d.to_json() for d in exc.diagnostics]})


@contextmanager
def progress(initial: str) -> Iterator:
    """A spinner on stderr; yields a callback that updates its text (and logs each step)."""
    if not _console(True).is_terminal or os.environ.get("CI"):
        # Plain step lines where there is no terminal to animate (CI logs, pipes).
        def log_step(text: str) -> None:
            _console(True).print(f"[dim]…[/] {escape(text)}")

        log_step(initial)
        yield log_step
        return
    with _console(True).status(escape(initial)) as status:
        def update(text: str) -> None:
            status.update(escape(text))
            _console(True).print(f"[dim]…[/] {escape(text)}")

        yield update
