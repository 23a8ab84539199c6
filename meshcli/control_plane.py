"""Applying the mesh file to running sidecars: compile, record rejections, edit, wait for sync.

`apply()` compiles mesh.yaml plus the runtime rules and faults into
`.mesh/<project>/config/sidecar.json`, which every sidecar watches; it is the only writer
of that file, and runs under the project lock. An invalid mesh file is never applied: the rejection (every
error with file:line:column, and the generation the sidecars keep) goes to
`.mesh/<project>/config/rejected.json`, where `meshcli status` and the sidecars' logs show it.
`edit()` is how every command that changes mesh.yaml does it: transform the text,
validate the result fully before writing anything, write atomically, apply, and wait
until every running sidecar runs the new version.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from meshproxy import config as wire

from meshcli import fault_layer, mesh_config, rule_layer, sidecar_config, status, workspace as ws, yaml_source
from meshcli.diagnostics import did_you_mean
from meshcli.errors import InputError, InvalidFileError, MeshError
from meshcli.status import WorkloadStatus
from meshcli.workspace import Loaded, Workspace

POLL_INTERVAL = 0.1

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def apply(workspace: Workspace) -> sidecar_config.Compiled:
    """Compile mesh.yaml, the runtime rules (meshcli/rule_layer.py) and the runtime faults
    into sidecar.json; raise InvalidFileError (after recording it in rejected.json) when
    the files are invalid, or the rules no longer fit them."""
    with ws.state_lock(workspace):  # the generation count must not be raced by the watcher
        try:
            mesh = rule_layer.layered(ws.load(workspace))
        except InvalidFileError as exc:
            _record_rejection(workspace, exc)
            raise
        workspace.config_dir.mkdir(parents=True, exist_ok=True)  # a project edited before its first `up`
        compiled = sidecar_config.write(mesh, workspace.config_dir, fault_layer.active(workspace))
        rejected_path(workspace).unlink(missing_ok=True)
        return compiled


def rejected_path(workspace: Workspace) -> Path:
    return workspace.config_dir / wire.REJECTED_FILE


def rejection(workspace: Workspace) -> dict | None:
    """The last rejection still in force (see apply()), or None."""
    try:
        data = json.loads(rejected_path(workspace).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record_rejection(workspace: Workspace, exc: InvalidFileError) -> None:
    running = sidecar_config.current(workspace.config_dir)
    errors = [f"{d.location}: {d.message}" for d in exc.diagnostics if d.is_error]
    first_file = next((d.file for d in exc.diagnostics if d.file), None)
    record = {
        "time": time.time(),
        "file": str(first_file or workspace.mesh_path),
        "errors": errors,
        "keeping": {"version": running.version if running else None,
                    "generation": running.generation if running else None},
    }
    workspace.config_dir.mkdir(parents=True, exist_ok=True)
    yaml_source.atomic_write(rejected_path(workspace), json.dumps(record, indent=2) + "\n")


# --- waiting for the sidecars ----------------------------------------------------------

def wait_synced(loaded: Loaded, version: str, timeout: float = 30.0,
                progress: Progress | None = None) -> list[WorkloadStatus]:
    """Poll every running sidecar until each reports `version`; raise MeshError naming the
    stale ones after `timeout` seconds. Sidecars that are not running are not waited for."""
    progress = progress or _quiet
    deadline = time.monotonic() + timeout
    while True:
        statuses = [s for s in status.collect(loaded) if s.sidecar == "running"]
        stale = [s for s in statuses if s.config_version != version]
        if not stale:
            return statuses
        if time.monotonic() >= deadline:
            raise MeshError(
                f"{len(stale)} of {len(statuses)} sidecars do not run config {version} after {timeout:g}s: "
                + ", ".join(f"{s.workload} ({_describe(s)})" for s in stale),
                hint=f"see `docker compose -p {loaded.project.name} logs` of those sidecars, "
                     "or `meshcli status`")
        progress(f"waiting for {len(stale)} of {len(statuses)} sidecars to run config {version}")
        time.sleep(POLL_INTERVAL)


def _describe(s: WorkloadStatus) -> str:
    if s.config_version is None:
        return "not answering"
    return f"runs {s.config_version}" + (f", generation {s.config_generation}" if s.config_generation else "")


def effective_rules(workspace: Workspace, service: str) -> dict:
    """What callers' sidecars apply to `service`: its compiled entry of sidecar.json (routes in
    order, each complete), plus the runtime faults on it."""
    config = sidecar_config.compile_mesh(rule_layer.layered(ws.load(workspace)), fault_layer.active(workspace))
    if service not in config.services:
        raise InputError(f'unknown service "{service}"{did_you_mean(service, config.services)}; '
                         f"services: {', '.join(config.services)}")
    return wire.rules_json(config, service)


# --- editing mesh.yaml -----------------------------------------------------------------

@dataclass
class EditResult:
    file: Path
    diff: str  # unified diff of the mesh file, "" when nothing changed
    changed: bool
    compiled: sidecar_config.Compiled | None = None  # None: dry run
    synced: list[WorkloadStatus] | None = None  # the sidecars that run it; None: not waited for
    seconds: float = 0.0  # from writing the file to the last sidecar running it


def edit(workspace: Workspace, transform: Callable[[str], str], dry_run: bool = False, wait: bool = True,
         timeout: float = 30, progress: Progress | None = None, service: str | None = None) -> EditResult:
    """Change mesh.yaml with `transform` (old text -> new text), validate, write, apply, sync.

    `service`, when given, must be a service of the mesh (InputError otherwise, before the
    transform would add an entry for a typo). An invalid result raises InvalidFileError
    pointing at the mesh file and the line in the new text, and nothing is written. A
    project without mesh.yaml gets one.
    """
    progress = progress or _quiet
    path = workspace.mesh_path
    # Read, transform and write as one step against other editors; a dry run writes
    # nothing at all, not even the lock file.
    with contextlib.nullcontext() if dry_run else ws.state_lock(workspace):
        file = yaml_source.TextFile.read(path) if path.is_file() else yaml_source.TextFile(path)
        if service is not None:
            _check_service(workspace, path, file.text, service)
        new_text = transform(file.text)
        new = file.encode(new_text)  # with the file's byte order mark and line ends
        diff = "".join(difflib.unified_diff(file.content.splitlines(keepends=True), new.splitlines(keepends=True),
                                            fromfile=str(path), tofile=str(path)))
        result = EditResult(path, diff, changed=new != file.content)
        _validate(workspace, path, new_text)
        if dry_run:
            return result
        if result.changed:
            yaml_source.atomic_write(path, new)
    # Applied even when unchanged: the file may hold a hand edit no watcher has applied yet.
    started = time.monotonic()
    progress(f"applying {path.name}")
    workspace = replace(workspace, mesh_file=path)
    result.compiled = apply(workspace)
    if wait and status.project_running(workspace.project.name):
        loaded = ws.load(workspace)
        result.synced = wait_synced(loaded, result.compiled.version, timeout, progress)
    result.seconds = time.monotonic() - started
    return result


def _check_service(workspace: Workspace, path: Path, text: str, service: str) -> None:
    """InputError unless `service` is a logical service of the compose file or declared in mesh.yaml."""
    known = set(workspace.project.logical_services())
    if service in known:
        return
    try:
        data = yaml_source.load(path, text).data if text.strip() else None
    except InvalidFileError:
        data = None  # the transform reports it, with its position
    declared = data.get("services") if isinstance(data, dict) else None
    known |= {str(name) for name in declared} if isinstance(declared, dict) else set()
    if service not in known:
        raise InputError(f'unknown service "{service}"{did_you_mean(service, known)}; '
                         f"services: {', '.join(sorted(known)) or 'none'}",
                         hint="a new logical service needs its versions in mesh.yaml first, "
                              "e.g. `versions: {v1: COMPOSE_SERVICE}`")


def _validate(workspace: Workspace, path: Path, text: str) -> None:
    """Parse and resolve `text` as if it were the mesh file at `path`."""
    mesh_config.resolve(mesh_config.parse(yaml_source.load(path, text)), workspace.project)
