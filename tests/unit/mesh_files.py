"""Writing compose and mesh files into a test project and collecting the diagnostics a bad
file raises. A module of its own (not conftest.py) so test files can import it: the e2e
suite has a conftest.py too, and two modules named `conftest` cannot both be imported.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshcli import compose_model, mesh_config
from meshcli.compose_model import ComposeProject
from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError
from meshcli.mesh_config import Mesh, MeshConfig


def diagnostics_of(call, *args, **kwargs) -> list[Diagnostic]:
    """The diagnostics of the InvalidFileError that `call(*args, **kwargs)` must raise."""
    with pytest.raises(InvalidFileError) as info:
        call(*args, **kwargs)
    return info.value.diagnostics


class Files:
    """Writes compose and mesh files into one project directory and loads them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def compose(self, text: str, name: str = "compose.yaml") -> ComposeProject:
        return compose_model.load(self.write(name, text))

    def mesh(self, text: str, name: str = "mesh.yaml") -> MeshConfig:
        return mesh_config.load(self.write(name, text))

    def resolve(self, compose_text: str, mesh_text: str | None = None) -> Mesh:
        project = self.compose(compose_text)
        return mesh_config.resolve(self.mesh(mesh_text) if mesh_text is not None else None, project)

    def compose_errors(self, text: str) -> list[Diagnostic]:
        return diagnostics_of(self.compose, text)

    def mesh_errors(self, text: str) -> list[Diagnostic]:
        return diagnostics_of(self.mesh, text)

    def resolve_errors(self, compose_text: str, mesh_text: str) -> list[Diagnostic]:
        return diagnostics_of(self.resolve, compose_text, mesh_text)
