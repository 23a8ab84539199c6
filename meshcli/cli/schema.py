"""`meshcli schema`: print the JSON Schema of the mesh file, for editors and CI linters."""

from __future__ import annotations

import typer

from meshcli.cli import common, output


def register(app: typer.Typer) -> None:
    @app.command("schema")
    def schema(as_json: bool = common.Json) -> None:
        """Print the JSON Schema of mesh.yaml (it is JSON, so --json prints the same).

        Save it beside the file and point the YAML language server at it:
        `meshcli schema > mesh.schema.json`, then make the first line of mesh.yaml
        `# yaml-language-server: $schema=./mesh.schema.json`.
        """
        from meshcli import mesh_config

        output.emit_text(mesh_config.json_schema())
