"""The errors the core raises; the CLI's main() maps them to exit codes.

The core never prints and never exits: it raises one of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from meshcli.diagnostics import Diagnostic

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class MeshError(Exception):
    """A failure the user can act on. `hint` says what to do about it.

    `code` is stable, for scripts (`--json` prints it): a diagnostic's MESH code when the
    error has diagnostics, else the error class's.
    """

    exit_code = EXIT_FAILURE
    code = "failure"
    diagnostics: Sequence[Diagnostic] = ()

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(MeshError):
    """Bad input from the user: a file, an argument. Exit code 2."""

    exit_code = EXIT_USAGE
    code = "usage"


class InvalidFileError(InputError):
    """One or more diagnostics (with file:line:column) made a file unusable."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        first = diagnostics[0]
        count = len([d for d in diagnostics if d.is_error])
        summary = f"{first.location}: {first.message}"
        if count > 1:
            summary += f" (and {count - 1} more error{'s' if count > 2 else ''})"
        super().__init__(summary)


class DockerError(MeshError):
    """Docker is missing, not running, or a docker/compose command failed."""

    code = "docker"


class Interrupted(MeshError):
    """Ctrl-C. Exit code 130."""

    exit_code = EXIT_INTERRUPTED
    code = "interrupted"
