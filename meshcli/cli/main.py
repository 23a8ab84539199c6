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
from meshcli.cli import apply, demo, fault, init, lifecycle, render, route, schema, split, status, validate, watch
from meshcli.errors import EXIT_INTERRUPTED, EXIT_USAGE, InvalidFileError, MeshError

# Recent typer vendors its own click: catch the usage errors it really raises.
ClickException = getattr(getattr(typer, "_click", None), "ClickException", None) or __import__("click").ClickException

app = typer.Typer(
    name="meshcli",
    help="A service mesh for Docker Compose: transparent sidecars, load balancing across versions, "
         "metrics and access logs per hop, for local development and CI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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


for module in (demo, init, render, validate, schema, lifecycle, status, fault, split, route, apply, watch):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    from meshcli.cli import output

    try:
        # Without standalone mode, click returns typer.Exit's code instead of raising it.
        code = app(args=argv, prog_name="meshcli", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except InvalidFileError as exc:
        for d in exc.diagnostics:
            output.diagnostic(d)
        errors = sum(1 for d in exc.diagnostics if d.is_error)
        output.error(f"{errors} error{'s' if errors != 1 else ''}; nothing was changed")
        return exc.exit_code
    except MeshError as exc:
        output.error(exc.message, exc.hint)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        output.error("interrupted")
        return EXIT_INTERRUPTED
    except ClickException as exc:
        exc.show()  # usage errors, including a bare `meshcli` (help, then exit 2)
        return EXIT_USAGE
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception:
        if os.environ.get("MESHCLI_DEBUG"):
            raise
        import traceback

        output.error("unexpected error (set MESHCLI_DEBUG=1 for the traceback): "
                     + traceback.format_exc().strip().splitlines()[-1])
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
