"""The `meshcli` command: the typer app, and main() mapping errors to exit codes.

Exit codes: 0 ok, 1 failure, 2 bad input or usage, 130 interrupted.
Set MESHCLI_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from meshcli import __version__
from meshcli.cli import (apply, authz, ca, certs, common, demo, fault, init, istio, lifecycle, render, route, schema,
                         split, status, tap, trace, validate, views, watch)
from meshcli.errors import EXIT_INTERRUPTED, InputError, Interrupted, MeshError

# Recent typer vendors its own click: catch the usage errors it really raises.
ClickException = getattr(getattr(typer, "_click", None), "ClickException", None) or __import__("click").ClickException

app = common.App(
    name="meshcli",
    help="A service mesh for Docker Compose: transparent sidecars, load balancing across versions, "
         "metrics and access logs per hop, for local development and CI.",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},  # click stops at 80
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    pass


for module in (demo, init, render, validate, schema, lifecycle, status, views, fault, split, route, apply, watch,
               istio, ca, certs, authz, tap, trace):
    module.register(app)


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for --json: read from the arguments themselves, so that an
    error typer raises before any command runs (a usage error) is reported as JSON too."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; every error is reported here, once (see output.failure), as text on
    stderr and, with --json, as one JSON object on stdout."""
    from meshcli.cli import output

    argv = sys.argv[1:] if argv is None else argv
    shown = False
    try:
        # Without standalone mode, click returns typer.Exit's code instead of raising it; typer
        # turns Ctrl-C (KeyboardInterrupt) into that code 130, which no command returns itself.
        code = app(args=argv, prog_name="meshcli", standalone_mode=False)
        if code != EXIT_INTERRUPTED:
            return code if isinstance(code, int) else 0
        error: MeshError = Interrupted("interrupted")
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()  # usage errors, including a bare `meshcli` (help, then exit 2)
        error = InputError(exc.format_message())
        shown = True
    except MeshError as exc:
        error = exc
    except (typer.Abort, KeyboardInterrupt):
        error = Interrupted("interrupted")
    except Exception:
        if os.environ.get("MESHCLI_DEBUG"):
            raise
        import traceback

        error = MeshError("unexpected error (set MESHCLI_DEBUG=1 for the traceback): "
                          + traceback.format_exc().strip().splitlines()[-1])
    if not shown:
        output.failure(error)
    if wants_json(argv):
        output.failure_json(error)
    return error.exit_code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
