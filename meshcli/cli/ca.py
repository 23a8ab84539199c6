"""`meshcli ca init | show | rotate`: the project's local certificate authority (meshcli/ca.py)."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def _root_json(authority) -> dict:
    from meshcli import ca

    return {"root": ca.root_info(authority.cert).to_json(),
            "previousRoot": ca.root_info(authority.previous).to_json() if authority.previous else None}


def _print_root(authority, directory) -> None:
    from meshcli import ca

    for label, cert in (("root", authority.cert), ("previous root (still trusted)", authority.previous)):
        if cert is None:
            continue
        info = ca.root_info(cert)
        output.out.print(output.escape(f"{label}: {info.subject}\n  serial {info.serial}\n  sha256 {info.fingerprint}\n"
                                       f"  valid {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d}"))
    output.info(f"in {directory} (the key never leaves it)")


def register(app: typer.Typer) -> None:
    group = common.App(name="ca",
                       help="The mesh's local certificate authority: it issues every workload's identity.")
    app.add_typer(group)

    @group.command("init")
    @common.project_command()
    def init(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
             force: bool = typer.Option(False, "--force", help="Replace an existing CA (running sidecars then "
                                                                "fail mTLS until `meshcli up`; prefer `ca rotate`).")
             ) -> None:
        """Create the project's CA (ECDSA P-256) in .mesh/<project>/ca/; `meshcli up` does it too."""
        from meshcli import ca

        located = project.locate()
        authority, created = ca.init(located, force=force)
        if as_json:
            output.result({"created": created, "directory": str(ca.ca_dir(located)), **_root_json(authority)})
            return
        (output.success if created else output.info)("created the CA" if created else "the CA exists already")
        _print_root(authority, ca.ca_dir(located))

    @group.command("show")
    @common.project_command()
    def show(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json) -> None:
        """Show the CA's root certificate (never its key)."""
        from meshcli import ca

        located = project.locate()
        authority = ca.require(located)
        if as_json:
            output.result({"directory": str(ca.ca_dir(located)), **_root_json(authority)})
            return
        _print_root(authority, ca.ca_dir(located))

    @group.command("rotate")
    @common.project_command()
    def rotate(project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
               timeout: float = common.SyncTimeout) -> None:
        """Replace the root without downtime: trust old and new, reissue every certificate, drop the old root."""
        from meshcli import security, workspace as ws

        loaded = ws.load(project.locate())
        with output.progress("rotating the CA") as progress:
            authority = security.rotate(loaded, progress, timeout)
        if as_json:
            output.result(_root_json(authority))
            return
        output.success("rotated the CA: every workload now has a certificate of the new root")
        _print_root(authority, loaded.workspace.state_dir / "ca")
