"""`meshcli authz check SOURCE DESTINATION [METHOD PATH]`: what the destination's sidecars decide, without traffic."""

from __future__ import annotations

from typing import List, Optional

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    group = common.App(name="authz", help="Authorization policies.")
    app.add_typer(group)

    @group.command("check")
    @common.project_command()
    def check(
        source: str = typer.Argument(..., help='The caller: a service, a SPIFFE ID, or "no-identity".'),
        destination: str = typer.Argument(..., help="The service called."),
        method: Optional[str] = typer.Argument(None, help="HTTP method; leave out (with PATH) for a raw TCP "
                                                          "connection."),
        path: Optional[str] = typer.Argument(None, help="Request path (a query is ignored)."),
        headers: List[str] = typer.Option([], "--header", "-H", metavar="NAME:VALUE", help="A request header "
                                          "(repeatable)."),
        port: Optional[int] = typer.Option(None, "--port", help="The port called (default: the service's first)."),
        project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
    ) -> None:
        """Answer allow or deny, and which policy and rule decided (exit 0 allowed, 1 denied)."""
        from meshcli import security, workspace as ws
        from meshcli.errors import InputError

        if method is not None and path is None:
            raise InputError("give both METHOD and PATH, or neither (a raw TCP connection)")
        parsed = {}
        for header in headers:
            name, sep, value = header.partition(":")
            if not sep or not name.strip():
                raise InputError(f'--header "{header}": expected NAME:VALUE')
            parsed[name.strip()] = value.strip()
        decision, call = security.authz_check(ws.load(project.locate()), source, destination, method, path,
                                              parsed, port)
        if as_json:
            output.result({**decision.to_json(), "call": call})
        else:
            what = f"{call['method']} {call['path']}" if call["method"] else "a TCP connection"
            (output.success if decision.allowed else output.error)(
                f"{source} -> {destination} {what} (port {call['port']}): {decision.reason}")
        if not decision.allowed:
            raise typer.Exit(1)
