"""Runtime traffic rules (the testing API's `split`, `timeout`, `retries`): a layer of
mesh-file edits on top of mesh.yaml, as meshcli/fault_layer.py is a layer of faults.

They live in `.mesh/<project>/rules.json`, never in mesh.yaml: a test's rule leaves no trace in the
user's file, also when the test is killed before its cleanup (then `meshcli status`
lists the rules still in force; removing the file and `meshcli apply` drops them). Each rule is one transform of meshcli/mesh_edit.py on a
service or one of its routes; `layered()` applies them, in the order they were set, to
the mesh file's text in memory, and validates and resolves the result exactly like an
edit of the file. `control_plane.apply()` compiles that into sidecar.json, so the rules
survive the file's reloads, and undoing one re-applies the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meshcli import mesh_config, mesh_edit, yaml_source
from meshcli.diagnostics import Diagnostic
from meshcli.errors import InvalidFileError, MeshError
from meshcli.fault_layer import new_id
from meshcli.mesh_config import Mesh
from meshcli.workspace import Loaded, Workspace, state_lock

FILE_NAME = "rules.json"
# kind -> mesh_edit transform(text, path, service, value, route)
TRANSFORMS = {"split": mesh_edit.set_split, "timeout": mesh_edit.set_timeout, "retries": mesh_edit.set_retries}


@dataclass(frozen=True)
class TrafficRule:
    kind: str  # a key of TRANSFORMS
    service: str
    value: Any  # split: {version: weight}; timeout: "300ms"; retries: mesh-file fields
    route: str | None = None  # a named route of the service; None: its default route
    id: str = ""

    def apply(self, text: str, path: Path) -> str:
        return TRANSFORMS[self.kind](text, path, self.service, self.value, self.route)

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        value = " ".join(f"{k}={v}" for k, v in self.value.items()) if isinstance(self.value, dict) else self.value
        return f"{self.kind} {self.service}" + (f" route {self.route}" if self.route else "") + f" {value}"


def path(workspace: Workspace) -> Path:
    return workspace.state_dir / FILE_NAME


def active(workspace: Workspace) -> list[TrafficRule]:
    """The rules in force, oldest first."""
    file = path(workspace)
    try:
        return [TrafficRule(**item) for item in json.loads(file.read_text(encoding="utf-8"))["rules"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MeshError(f"{file}: not a rules file meshcli can read ({exc.__class__.__name__}: {exc})",
                        hint="remove it to drop the testing API's runtime rules, then `meshcli apply`") from None


def add(loaded: Loaded, rule: TrafficRule) -> TrafficRule:
    """Store `rule` with a new id, once the mesh with it is valid (InvalidFileError otherwise,
    and nothing is stored)."""
    workspace = loaded.workspace
    with state_lock(workspace):
        rules = active(workspace)
        stored = replace(rule, id=new_id({r.id for r in rules}, prefix="r-"))
        _layer(loaded, rules + [stored])
        _write(workspace, rules + [stored])
    return stored


def remove(workspace: Workspace, rule_id: str) -> None:
    with state_lock(workspace):
        _write(workspace, [r for r in active(workspace) if r.id != rule_id])


def layered(loaded: Loaded) -> Mesh:
    """The resolved mesh with the runtime rules on top (`loaded.mesh` when there are none);
    InvalidFileError when they no longer fit the files (say, a hand edit removed the version
    a split names)."""
    return _layer(loaded, active(loaded.workspace))


def _layer(loaded: Loaded, rules: list[TrafficRule]) -> Mesh:
    if not rules:
        return loaded.mesh
    workspace = loaded.workspace
    mesh_path = workspace.mesh_path
    text = yaml_source.TextFile.read(mesh_path).text if workspace.mesh_file else ""
    for rule in rules:
        text = rule.apply(text, mesh_path)
    try:
        return mesh_config.resolve(mesh_config.parse(yaml_source.load(mesh_path, text)), loaded.project)
    except InvalidFileError as exc:
        # Positions in a text nobody sees would mislead: name the layer instead.
        described = "; ".join(r.describe() for r in rules)
        raise InvalidFileError([Diagnostic(d.code, f"{d.message} (with the runtime rules: {described})",
                                           path(workspace)) for d in exc.diagnostics]) from None


def _write(workspace: Workspace, rules: list[TrafficRule]) -> None:
    if not rules:
        path(workspace).unlink(missing_ok=True)
        return
    yaml_source.atomic_write(path(workspace), json.dumps({"rules": [r.to_json() for r in rules]}, indent=2) + "\n")
