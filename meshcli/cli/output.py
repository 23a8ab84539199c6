"""The only place that prints: human messages to stderr, data (tables, JSON) to stdout.

Markup is off for user-provided text, so a `[` in a service name never breaks output.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape

from meshcli.diagnostics import Diagnostic, Level

# Off a terminal (CI logs, pipes) rich would wrap at 80 columns and split file:line:col
# diagnostics and table rows; give it room instead.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

LEVEL_STYLE = {Level.ERROR: "bold red", Level.WARNING: "yellow", Level.INFO: "cyan"}


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")


def warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def info(message: str) -> None:
    err.print(escape(message))


def success(message: str) -> None:
    err.print(f"[green]✓[/] {escape(message)}")


def diagnostic(d: Diagnostic) -> None:
    err.print(f"{escape(d.location)}: [{LEVEL_STYLE[d.level]}]{d.level.value} {d.code}[/]: {escape(d.message)}")


def emit_text(text: str) -> None:
    """Raw text on stdout (a file's content): never wrapped or styled."""
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(initial: str) -> Iterator:
    """A spinner on stderr; yields a callback that updates its text (and logs each step)."""
    if not err.is_terminal or os.environ.get("CI"):
        # Plain step lines where there is no terminal to animate (CI logs, pipes).
        def log_step(text: str) -> None:
            err.print(f"[dim]…[/] {escape(text)}")

        log_step(initial)
        yield log_step
        return
    with err.status(escape(initial)) as status:
        def update(text: str) -> None:
            status.update(escape(text))
            err.print(f"[dim]…[/] {escape(text)}")

        yield update
