"""A project's named volumes keep their data across `meshcli down` and `meshcli up`, as with
`docker compose down`; only `meshcli down -v` removes them."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

MESHCLI = [sys.executable, "-m", "meshcli.cli.main"]  # not imported from conftest: tests/unit has one too

COMPOSE = """\
services:
  store:
    image: meshcli-base:bookworm
    command: ["sleep", "infinity"]
    stop_signal: SIGKILL
    volumes: ["data:/data"]
volumes:
  data: {}
"""


def run(*command: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    name = f"meshvol-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp_path, name
    finally:
        run(*MESHCLI, "down", "-v", "-p", name, cwd=tmp_path)
        run("docker", "compose", "-p", name, "down", "-v", "--remove-orphans", "-t", "1")


def meshcli(directory, *args: str) -> subprocess.CompletedProcess:
    result = run(*MESHCLI, *args, cwd=directory)
    assert result.returncode == 0, f"meshcli {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def volumes(name: str) -> list[str]:
    return run("docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={name}").stdout.split()


def test_down_keeps_the_data_of_named_volumes_and_down_v_removes_them(project):
    directory, name = project
    store = f"{name}-store-1"
    meshcli(directory, "up", "-p", name, "--timeout", "120")
    assert run("docker", "exec", store, "sh", "-c", "echo kept > /data/file").returncode == 0

    meshcli(directory, "down", "-p", name)
    assert volumes(name) == [f"{name}_data"]
    assert run("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}").stdout.split() == []

    meshcli(directory, "up", "-p", name, "--timeout", "120")
    assert run("docker", "exec", store, "cat", "/data/file").stdout == "kept\n"

    meshcli(directory, "down", "-v", "-p", name)
    assert volumes(name) == []
