"""The hot-reload watcher: real watchdog on a temporary project; pid checks before any kill."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from meshcli import compose_model, fault_layer, watcher, workspace as ws
from meshcli.yaml_source import atomic_write

COMPOSE = """
    services:
      payment-v1: {image: pay, expose: ["8080"]}
      payment-v2: {image: pay, expose: ["8080"]}
"""
MESH = "apiVersion: meshcli/v1\nservices:\n  payment:\n    timeout: 1s\n"


def wait_for(condition, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def project(files) -> ws.Workspace:
    files.write("compose.yaml", COMPOSE)
    files.write("mesh.yaml", MESH)
    return ws.locate(files.root / "compose.yaml")


@pytest.fixture
def events(project):
    emitted: list[dict] = []
    running = watcher.Watcher(project, emitted.append)
    running.start()
    yield emitted
    running.stop()


def sidecar_json(project) -> dict:
    path = project.config_dir / "sidecar.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_saving_the_mesh_file_applies_it_within_a_second(project, events):
    atomic_write(project.mesh_file, MESH.replace("1s", "2s"))  # how editors save: write + rename

    assert wait_for(lambda: sidecar_json(project).get("generation") == 1)
    assert events[-1]["event"] == "applied" and events[-1]["generation"] == 1

    project.mesh_file.write_text(MESH.replace("1s", "3s"))  # in place
    assert wait_for(lambda: sidecar_json(project).get("generation") == 2)
    routes = sidecar_json(project)["services"]["payment"]["routes"]
    assert routes[-1]["timeoutMs"] == 3000


def test_an_invalid_edit_is_rejected_and_the_config_stays(project, events):
    atomic_write(project.mesh_file, MESH)
    assert wait_for(lambda: sidecar_json(project).get("generation") == 1)
    good = (project.config_dir / "sidecar.json").read_text()

    atomic_write(project.mesh_file, MESH.replace("timeout: 1s", "timeout: soon\n    tiemout: 2s"))

    assert wait_for(lambda: events and events[-1]["event"] == "rejected")
    assert len(events[-1]["errors"]) == 2 and all(e.startswith(f"{project.mesh_file}:") for e in events[-1]["errors"])
    assert (project.config_dir / "sidecar.json").read_text() == good
    assert (project.config_dir / "rejected.json").exists()


def test_runtime_faults_are_applied(project, events):
    fault_layer.add(project, fault_layer.build(ws.load(project).mesh, "payment", abort="503"))

    assert wait_for(lambda: len(sidecar_json(project).get("faults", [])) == 1)


def test_a_burst_of_events_applies_once(project, events):
    for timeout in ("2s", "3s", "4s"):
        project.mesh_file.write_text(MESH.replace("1s", timeout))

    assert wait_for(lambda: any(e["event"] == "applied" for e in events))
    time.sleep(0.3)
    assert [e["event"] for e in events] == ["applied"]


def test_the_pid_check_only_accepts_this_projects_watcher(project, tmp_path):
    own = [sys.executable, "-m", "meshcli.watcher", "--state-dir", str(project.state_dir)]
    assert watcher.is_our_watcher(own, project)
    other = ws.locate(project.project.path, project.mesh_file)
    assert watcher.is_our_watcher(own, other)
    elsewhere = [sys.executable, "-m", "meshcli.watcher", "--state-dir", str(tmp_path / "x" / ".mesh" / "shop")]
    assert not watcher.is_our_watcher(elsewhere, project)
    assert not watcher.is_our_watcher(["sleep", "100"], project)
    assert not watcher.is_our_watcher([sys.executable, "-m", "http.server", "--state-dir",
                                       str(project.state_dir)], project)
    # Another project name from the same directory (-p) has a watcher of its own.
    renamed = ws.locate(compose_model.ComposeOptions((str(project.project.path),), project_name="other"))
    assert not watcher.is_our_watcher(own, renamed)


def test_a_reused_pid_is_never_signalled(project):
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        project.state_dir.mkdir(parents=True, exist_ok=True)
        watcher.pid_path(project).write_text(f"{stranger.pid}\n")

        assert watcher.running_pid(project) is None
        assert watcher.stop(project) is None
        assert stranger.poll() is None  # still alive
        assert not watcher.pid_path(project).exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_background_watcher_starts_applies_and_stops(project):
    pid = watcher.start(project)
    try:
        assert watcher.running_pid(project) == pid
        log = watcher.log_path(project)
        assert wait_for(lambda: log.exists() and '"started"' in log.read_text(), timeout=15)

        atomic_write(project.mesh_file, MESH.replace("1s", "5s"))

        assert wait_for(lambda: sidecar_json(project).get("generation") == 1, timeout=5)
        second = watcher.start(project)  # replaces the first
        assert second != pid and not watcher.is_our_watcher(watcher._cmdline(pid), project)
        pid = second
        assert wait_for(lambda: log.read_text().count('"started"') == 2, timeout=15)
    finally:
        assert watcher.stop(project) == pid
    assert watcher.running_pid(project) is None
    assert not watcher.is_our_watcher(watcher._cmdline(pid), project)
    lines = [json.loads(line) for line in watcher.log_path(project).read_text().splitlines() if line.startswith("{")]
    assert [e["event"] for e in lines].count("stopped") == 2


def test_the_pid_check_accepts_another_spelling_of_the_project_directory(project):
    """`up -f ../shop/compose.yaml` from elsewhere, then `down` inside shop/: the same watcher."""
    detour = project.project.directory / "sub" / ".." / ".mesh" / "shop"
    own = [sys.executable, "-m", "meshcli.watcher", "--state-dir", str(detour)]
    assert watcher.is_our_watcher(own, project)


def test_a_background_watcher_exits_when_the_pid_file_names_another_process(project):
    ws.save_project(project)
    process = subprocess.Popen([sys.executable, "-m", "meshcli.watcher", "--state-dir", str(project.state_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        project.state_dir.mkdir(parents=True, exist_ok=True)
        watcher.pid_path(project).write_text(f"{process.pid}\n")
        assert wait_for(lambda: '"started"' in (watcher.log_path(project).read_text()
                                                if watcher.log_path(project).exists() else ""), timeout=15)
        assert process.poll() is None  # its own pid: it stays

        watcher.pid_path(project).write_text("1\n")  # what a later `start()` does after .mesh/ was lost

        assert process.wait(timeout=5) == 0
        assert '"superseded"' in watcher.log_path(project).read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
