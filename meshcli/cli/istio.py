"""`meshcli export istio` and `meshcli import istio`: mesh.yaml to Istio's resources and back
(meshcli/istio_export.py, meshcli/istio_import.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from meshcli.cli import common, mesh_edits, output

# A Kubernetes namespace is a DNS-1123 label.
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def register(app: typer.Typer) -> None:
    export_app = common.App(help="Export mesh.yaml as another mesh's resources (moving to Kubernetes).")
    import_app = common.App(help="Import another mesh's traffic rules into mesh.yaml.")
    app.add_typer(export_app, name="export")
    app.add_typer(import_app, name="import")

    @export_app.command("istio")
    @common.project_command()
    def export_istio(
        project: common.ProjectFlags = common.PROJECT,
        output_to: str = typer.Option("-", "--output", "-o", metavar="DIR|-",
                                      help="A directory for one file per resource, or - for one multi-document "
                                           "YAML on stdout."),
        namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="metadata.namespace of every resource."),
        as_json: bool = common.Json,
    ) -> None:
        """Write Istio VirtualServices and DestinationRules doing what mesh.yaml does (`kubectl apply -f`).

        Subsets select pods by the `version` label; hosts are the logical services. Every setting
        Istio cannot express is reported with its file:line.
        """
        from meshcli import istio_export, workspace
        from meshcli.errors import InputError

        if namespace is not None and not NAMESPACE.fullmatch(namespace):
            raise InputError(f'namespace "{namespace}" is not a Kubernetes namespace name',
                             hint="lower-case letters, digits and '-', at most 63, e.g. bookinfo")
        result = istio_export.export_loaded(workspace.load(project.locate()), namespace)
        paths = istio_export.write(result, Path(output_to)) if output_to != "-" else []
        if as_json:
            output.result({
                "output": str(Path(output_to).absolute()) if paths else None,
                "namespace": namespace,
                "resources": [{"apiVersion": r.manifest["apiVersion"], "kind": r.kind, "name": r.name,
                               "file": str(path.absolute()) if path else None, "manifest": r.manifest}
                              for r, path in zip(result.resources, paths or [None] * len(result.resources))],
                "diagnostics": [d.to_json() for d in result.diagnostics],
            })
            return
        for d in result.diagnostics:
            output.diagnostic(d)
        if paths:
            output.success(f"wrote {len(paths)} Istio resources to {Path(output_to)}/")
        else:
            output.emit_text(istio_export.to_yaml(result.resources))

    @import_app.command("istio")
    @common.project_command()
    def import_istio(
        files: List[Path] = typer.Argument(..., exists=True, dir_okay=False, metavar="FILE...",
                                           help="Istio YAML (VirtualService, DestinationRule, PeerAuthentication, "
                                                "AuthorizationPolicy), several documents per file allowed."),
        merge: bool = typer.Option(False, "--merge", help="Merge into the existing mesh.yaml: the imported services' "
                                                          "routing and policy are replaced, the rest (and every "
                                                          "comment) stays."),
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Turn Istio traffic and security rules into mesh.yaml, and apply them to the running sidecars.

        Hosts map to compose services, subsets to versions (labels `version` or
        `io.kompose.service`). What has no equivalent is reported with its file:line, never guessed.
        """
        from meshcli import istio_import, workspace
        from meshcli.errors import InputError, MeshError

        located = project.locate()
        if located.mesh_file is not None and not merge:
            raise InputError(f"{located.mesh_file} exists: nothing was changed",
                             hint="pass --merge to merge the imported rules into it (its comments stay)")
        imported = istio_import.read(list(files), workspace.load(located).mesh)
        if imported.nothing_to_write(located.mesh_file is not None):
            error = MeshError(f"nothing to import from {', '.join(str(f) for f in files)}: nothing was changed",
                              hint="the warnings say why" if imported.diagnostics else
                                   "the files give no routing or traffic policy")
            error.diagnostics = imported.diagnostics
            raise error
        for d in imported.diagnostics:
            if not as_json:
                output.diagnostic(d)
        count = sum(r.imported for r in imported.resources)
        mesh_edits.run(project, None, f"imported {count} Istio resource{'s' if count != 1 else ''}",
                       imported.transform, dry_run, as_json, no_wait, timeout, located=located,
                       extra={"resources": [r.to_json() for r in imported.resources],
                              "diagnostics": [d.to_json() for d in imported.diagnostics]})
