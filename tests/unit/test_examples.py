"""The examples a user copies: the GitHub Actions workflow is valid and complete, its
commands are ones our CLI and pytest plugin accept (run here with the engine stubbed),
it installs meshcli the way our own CI does (`.ci/run` -> scripts/test.sh ->
scripts/install.sh), and the example tests collect with its pytest command."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshcli import lifecycle, sidecar_config
from meshcli.cli.main import main
from meshcli.status import WorkloadStatus

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "github-actions" / "meshcli-tests.yml"
EXAMPLE_TESTS = ["test_checkout_works_without_faults", "test_payment_outage_shows_the_failure_path",
                 "test_slow_payment_hits_the_timeout", "test_all_traffic_to_v2",
                 "test_orders_reports_every_failed_checkout"]


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["mesh-tests"]["steps"]


def step(workflow: dict, name: str) -> dict:
    return next(s for s in steps(workflow) if s.get("name") == name)


def expand(command: str, workflow: dict) -> list[str]:
    """The command's argv with the workflow's env substituted (GitHub expressions as placeholders)."""
    env = {k: re.sub(r"\$\{\{[^}]*\}\}", "1", str(v)) for k, v in workflow["env"].items()}
    return [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], word) for word in shlex.split(command.split(">")[0])]


def test_the_workflow_is_a_complete_github_actions_job(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "pull_request"}
    job = workflow["jobs"]["mesh-tests"]
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] > 0
    uses = [s["uses"].split("@")[0] for s in steps(workflow) if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    assert steps(workflow)[1]["with"]["python-version"] == "3.11"
    names = [s.get("name") for s in steps(workflow) if "name" in s]
    assert names == ["Install meshcli", "Start the mesh", "Run the mesh tests", "Collect logs", "Upload logs",
                     "Take the mesh down"]


def test_logs_are_kept_on_failure_and_the_mesh_always_goes_down(workflow):
    assert step(workflow, "Collect logs")["if"] == "failure()"
    assert "docker compose -p \"$MESH_PROJECT\" logs" in step(workflow, "Collect logs")["run"]
    assert step(workflow, "Upload logs")["if"] == "failure()"
    assert step(workflow, "Upload logs")["with"]["path"] == "mesh-logs/"
    down = step(workflow, "Take the mesh down")
    assert down["if"] == "always()" and steps(workflow)[-1] is down


def test_it_installs_meshcli_as_our_ci_does(workflow):
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "scripts/install.sh" in (REPO / "scripts" / "test.sh").read_text()
    ours = re.search(r"pip install -q (-e '\.\[test\]')", (REPO / "scripts" / "install.sh").read_text()).group(1)
    assert step(workflow, "Install meshcli")["run"].startswith(f"python -m pip install {ours}")


def test_the_project_name_is_unique_per_run_and_shared_by_every_step(workflow):
    assert "github.run_id" in workflow["env"]["MESH_PROJECT"]
    for name in ("Start the mesh", "Run the mesh tests", "Take the mesh down"):
        assert '"$MESH_PROJECT"' in step(workflow, name)["run"]
    assert (REPO / workflow["env"]["COMPOSE_FILE_PATH"]).is_file()


def healthy(name: str) -> WorkloadStatus:
    return WorkloadStatus(name, name, "v1", app="running", sidecar="running", sidecar_health="healthy",
                          sync="SYNCED", config_version="abc", urls=["http://localhost:8080/"])


@pytest.fixture
def stubbed_engine(monkeypatch):
    calls: list[tuple] = []
    state = {"statuses": [healthy("frontend")]}

    def up(workspace, progress, wait_timeout=180, build=False, wait=True, prometheus_port=None):
        from meshcli import workspace as ws

        calls.append(("up", workspace.project.path, workspace.project.name, wait_timeout, wait))
        return lifecycle.UpResult(ws.load(workspace), workspace.rendered_file, "meshcli-sidecar:test",
                                  state["statuses"])

    def down(workspace, progress, volumes=False):
        calls.append(("down", workspace.project.path, workspace.project.name, volumes))
        return workspace.project.name

    monkeypatch.setattr(lifecycle, "up", up)
    monkeypatch.setattr(lifecycle, "down", down)
    monkeypatch.setattr(sidecar_config, "current", lambda config_dir: sidecar_config.Compiled("abc", 3, False))
    monkeypatch.chdir(REPO)
    return calls, state


def test_the_workflows_up_and_down_commands_work_and_print_json(workflow, stubbed_engine, capsys):
    calls, _ = stubbed_engine
    up = expand(step(workflow, "Start the mesh")["run"], workflow)
    assert up[:1] == ["meshcli"] and "--wait" in up and up[up.index("--timeout") + 1] == "120"
    assert main(up[1:]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is True and printed["project"] == "meshci-1-1"
    assert printed["urls"] == {"frontend": ["http://localhost:8080/"]}
    assert printed["config"] == {"version": "abc", "generation": 3}
    assert printed["sidecarImage"] == "meshcli-sidecar:test" and isinstance(printed["seconds"], float)
    assert calls == [("up", REPO / "compose" / "compose.yaml", "meshci-1-1", 120, True)]

    assert main(expand(step(workflow, "Take the mesh down")["run"], workflow)[1:]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "project": "meshci-1-1", "removed": True,
                                                   "volumesRemoved": True, "seconds": 0.0}
    assert calls[-1][2:] == ("meshci-1-1", True)  # CI made the volumes


def test_up_exits_1_with_json_when_the_mesh_is_not_ready_in_time(workflow, stubbed_engine, capsys):
    _, state = stubbed_engine
    state["statuses"] = [healthy("frontend"), WorkloadStatus("orders", "orders", "v1", app="running",
                                                             sidecar="running", sidecar_health="unhealthy")]
    assert main(expand(step(workflow, "Start the mesh")["run"], workflow)[1:]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is False and printed["notReady"] == ["orders: sidecar unhealthy"]


def test_up_exits_2_with_json_on_bad_input(capsys, tmp_path):
    assert main(["up", "-f", str(tmp_path / "missing.yaml"), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert f"open {tmp_path / 'missing.yaml'}: no such file or directory" in captured.err


def test_the_workflows_pytest_command_collects_the_example_tests(workflow):
    argv = expand(step(workflow, "Run the mesh tests")["run"], workflow)
    assert argv[:3] == ["python", "-m", "pytest"] and "--mesh-attach" in argv
    # Collecting runs no fixture: nothing touches Docker.
    result = subprocess.run([sys.executable, *argv[1:], "--collect-only", "-q"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    collected = re.findall(r"<Function (\w+)>", result.stdout) or re.findall(r"::(\w+)$", result.stdout, re.M)
    assert collected == EXAMPLE_TESTS


def test_the_example_conftest_points_at_the_bundled_demo():
    conftest = (REPO / "examples" / "conftest.py").read_text()
    assert '"compose" / "compose.yaml"' in conftest
    assert (REPO / "compose" / "compose.yaml").is_file() and (REPO / "compose" / "mesh.yaml").is_file()
