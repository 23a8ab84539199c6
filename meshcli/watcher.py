"""Hot reload: a process that applies mesh.yaml (and `.mesh/faults.json`) whenever they change.

`meshcli up` starts it in the background (`start()`), `meshcli down` stops it (`stop()`),
`meshcli watch` runs it in the foreground. It also keeps the workloads' certificates
fresh (meshcli/ca.py): each is renewed once half its lifetime has passed, and written
where its sidecar picks it up without a restart. It watches the mesh file's directory, not the
file, because editors save by writing a new file and renaming it over the old one.
Changes are debounced (one save fires several events) and each burst runs
`control_plane.apply()` once. Every outcome is one JSON line:
applied (version, generation) or rejected (every error with file:line:column), in
`.mesh/<project>/watcher.log`.

The background process runs on the project `meshcli up` saved in its state dir
(`.mesh/<project>/project.json`): it never reads the compose files again. The pid goes
to `.mesh/<project>/watcher.pid`; before signalling it, `stop()` checks in
/proc/PID/cmdline that the process is still this project's watcher, so a pid the
system has since given to another process is never killed. A background watcher exits
when the pid file names another process, so one whose pid file was lost (`.mesh/`
deleted) does not outlive the next `meshcli up`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, TextIO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from meshcli import ca, control_plane, fault_layer, workspace as ws
from meshcli.errors import InvalidFileError, MeshError
from meshcli.workspace import Workspace

MODULE = "meshcli.watcher"
PID_FILE = "watcher.pid"
LOG_FILE = "watcher.log"
DEBOUNCE_SECONDS = 0.05
CHANGE_EVENTS = {"created", "modified", "moved", "closed", "deleted"}
STOP_GRACE_SECONDS = 3.0
RENEW_CHECK_SECONDS = 60.0  # at the latest, look at the certificates again (a new workload, a clock jump)


def pid_path(workspace: Workspace) -> Path:
    return workspace.state_dir / PID_FILE


def log_path(workspace: Workspace) -> Path:
    return workspace.state_dir / LOG_FILE


# --- the watching process --------------------------------------------------------------

class Watcher:
    """Applies the config after every burst of changes to the watched files."""

    def __init__(self, workspace: Workspace, emit: Callable[[dict], None],
                 debounce: float = DEBOUNCE_SECONDS) -> None:
        self.workspace = workspace
        # Without a mesh file the project may get one (`meshcli split` creates it).
        self.mesh_file = workspace.mesh_path
        self.faults_file = fault_layer.path(workspace)
        self.emit = emit
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer: Observer | None = None

    @property
    def watched(self) -> set[Path]:
        return {self.mesh_file, self.faults_file}

    def start(self) -> None:
        watcher = self

        class OnChange(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in CHANGE_EVENTS:
                    return  # opened / closed_no_write: our own reads
                paths = {Path(os.fsdecode(event.src_path)), Path(os.fsdecode(getattr(event, "dest_path", "") or ""))}
                if paths & watcher.watched:
                    watcher.changed()

        self.workspace.state_dir.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        for directory in {p.parent for p in self.watched}:
            self._observer.schedule(OnChange(), str(directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)

    def changed(self) -> None:
        """Called for every event; applies once the events stop for `debounce` seconds."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce, self.apply)
            self._timer.daemon = True
            self._timer.start()

    def apply(self) -> None:
        mesh_file = self.mesh_file if self.workspace.mesh_file or self.mesh_file.is_file() else None
        try:
            compiled = control_plane.apply(replace(self.workspace, mesh_file=mesh_file))
        except InvalidFileError as exc:
            self.emit({"event": "rejected", "file": str(self.mesh_file),
                       "errors": [f"{d.location}: {d.message}" for d in exc.diagnostics if d.is_error]})
        except MeshError as exc:
            self.emit({"event": "error", "error": exc.message})
        except Exception as exc:  # a watcher that dies silently is worse than one that logs and goes on
            self.emit({"event": "error", "error": f"{exc.__class__.__name__}: {exc}"})
        else:
            self.emit({"event": "applied" if compiled.changed else "unchanged", "version": compiled.version,
                       "generation": compiled.generation})


    def renew(self) -> float:
        """Issue the certificates that are due; return the seconds until the next one is."""
        mesh_file = self.mesh_file if self.workspace.mesh_file or self.mesh_file.is_file() else None
        workspace = replace(self.workspace, mesh_file=mesh_file)
        try:
            mesh = ws.load(workspace).mesh
        except InvalidFileError:  # the last good config stays: renew with the compose file's workloads
            mesh = ws.load(replace(workspace, mesh_file=None)).mesh
        with ws.state_lock(workspace):
            issued = ca.ensure(workspace, mesh)
        if issued:
            self.emit({"event": "certificates", "issued": [
                {"workload": item.workload, "reason": item.reason, "serial": item.leaf.serial,
                 "notAfter": item.leaf.not_after.isoformat()} for item in issued]})
        return ca.next_renewal(workspace, mesh)


def _json_lines(stream: TextIO) -> Callable[[dict], None]:
    def write(record: dict) -> None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
    return write


def run(workspace: Workspace, on_event: Callable[[dict], None] | None = None) -> None:
    """Watch until SIGTERM or SIGINT, or until the project directory is deleted. Every event
    goes to the log as a JSON line and, in the foreground (`on_event` given: `meshcli watch`),
    to `on_event` too."""
    foreground = on_event is not None
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    workspace.state_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path(workspace), "a", encoding="utf-8") as log:
        lock = threading.Lock()
        sinks = [_json_lines(log)] + ([on_event] if on_event else [])

        def emit(record: dict) -> None:
            record = {"time": round(time.time(), 3), **record}
            with lock:
                for sink in sinks:
                    sink(record)

        watcher = Watcher(workspace, emit)
        watcher.start()
        emit({"event": "started", "pid": os.getpid(), "watching": sorted(str(p) for p in watcher.watched)})
        renew_at = 0.0
        try:
            while not done.wait(min(1.0, max(0.05, renew_at - time.monotonic()))):
                if time.monotonic() >= renew_at:
                    try:
                        renew_at = time.monotonic() + min(RENEW_CHECK_SECONDS, watcher.renew())
                    except Exception as exc:  # logged, tried again: a watcher must not die of it
                        emit({"event": "error", "error": f"certificates: {exc.__class__.__name__}: {exc}"})
                        renew_at = time.monotonic() + RENEW_CHECK_SECONDS
                if not workspace.project.directory.exists():
                    emit({"event": "project-gone", "directory": str(workspace.project.directory)})
                    break
                if not foreground and _superseded(workspace):
                    emit({"event": "superseded", "pidFile": str(pid_path(workspace))})
                    break
        finally:
            watcher.stop()
            emit({"event": "stopped", "pid": os.getpid()})


def _superseded(workspace: Workspace) -> bool:
    """Whether the pid file names another process: a later `start()` runs a new watcher (when
    .mesh/ was deleted meanwhile, stop() could not find this one), so this one must go."""
    try:
        pid = int(pid_path(workspace).read_text().strip())
    except (OSError, ValueError):
        return False  # not written yet, or removed: nothing says another watcher runs
    return pid != os.getpid()


# --- managing the background process ---------------------------------------------------

def _arguments(workspace: Workspace) -> list[str]:
    args = ["--state-dir", str(workspace.state_dir)]
    if workspace.mesh_file is not None:
        args += ["--mesh-file", str(workspace.mesh_file)]
    return args


def is_our_watcher(cmdline: list[str], workspace: Workspace) -> bool:
    """Whether a process's argv is the watcher of this workspace's state dir."""
    try:
        module = cmdline[cmdline.index("-m") + 1]
        state_dir = cmdline[cmdline.index("--state-dir") + 1]
    except (ValueError, IndexError):
        return False
    # Resolved: `up -f ../shop/compose.yaml` and `down` run inside shop/ spell the same directory
    # differently, and a watcher that `down` does not recognise would run on for ever.
    return module == MODULE and Path(state_dir).resolve() == workspace.state_dir.resolve()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []  # gone (a zombie has an empty cmdline too)
    return [os.fsdecode(part) for part in raw.split(b"\0") if part]


def running_pid(workspace: Workspace) -> int | None:
    """The pid of this workspace's watcher when it runs, else None."""
    try:
        pid = int(pid_path(workspace).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_our_watcher(_cmdline(pid), workspace) else None


def start(workspace: Workspace) -> int:
    """Start a detached watcher (replacing one already running for this state dir); return its pid."""
    stop(workspace)
    ws.save_project(workspace)
    with open(log_path(workspace), "a", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", MODULE, *_arguments(workspace)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True, close_fds=True)
    pid_path(workspace).write_text(f"{process.pid}\n")
    # Until the child has exec'd, its cmdline is not ours yet: wait, so that running_pid()
    # and stop() see it from the moment start() returns.
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while running_pid(workspace) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.pid


def stop(workspace: Workspace) -> int | None:
    """Stop this workspace's watcher if it runs; return the pid it had."""
    pid = running_pid(workspace)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while running_pid(workspace) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_pid(workspace) == pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited after the last check
    pid_path(workspace).unlink(missing_ok=True)
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="where `meshcli up` saved the project")
    parser.add_argument("--mesh-file", type=Path)
    parser.add_argument("--foreground", action="store_true", help="also print each event on stdout")
    options = parser.parse_args(argv)
    workspace = ws.from_state(options.state_dir, options.mesh_file)
    run(workspace, _json_lines(sys.stdout) if options.foreground else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
