"""The example GitHub Actions workflow, run for real: its own `run:` steps, in order, on a
copy of this checkout, against the real engine. What a user copies is what CI proved.

The steps GitHub itself provides (checkout, setup-python, upload-artifact) and the
install step (this session already runs the installed meshcli) are left out; the
`if: always()` step runs even when an earlier one failed, as on GitHub.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "github-actions" / "meshcli-tests.yml"


def any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_steps(workflow: dict) -> list[dict]:
    return [s for s in workflow["jobs"]["mesh-tests"]["steps"]
            if "run" in s and s.get("name") != "Install meshcli" and s.get("if") != "failure()"]


@pytest.fixture
def checkout(tmp_path) -> Path:
    root = tmp_path / "checkout"
    for part in ("compose", "sample-apps", "examples"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns(".mesh", "__pycache__"))
    return root


def test_the_example_workflow_runs_the_example_tests(checkout):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    run_id = uuid.uuid4().hex[:6]
    env = {**os.environ,
           # The demo publishes 8080, which this session's own demo may hold.
           "FRONTEND_PORT": str(any_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, value in workflow["env"].items():
        env[name] = re.sub(r"\$\{\{[^}]*\}\}", run_id, str(value))
    project = env["MESH_PROJECT"]
    results = {}
    failed = False
    try:
        for step in run_steps(workflow):
            if failed and step.get("if") != "always()":
                continue
            done = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], cwd=checkout, env=env,
                                  capture_output=True, text=True, timeout=600)
            results[step["name"]] = done
            failed = failed or done.returncode != 0
    finally:
        subprocess.run(["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "-t", "1"],
                       capture_output=True)

    assert list(results) == ["Start the mesh", "Run the mesh tests", "Take the mesh down"]
    for name, done in results.items():
        assert done.returncode == 0, f"{name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert " passed" in results["Run the mesh tests"].stdout and " failed" not in results["Run the mesh tests"].stdout
    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == []
