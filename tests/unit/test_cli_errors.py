"""Exit codes and messages for usage errors and for a missing Docker engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_meshcli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcli.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_up_without_a_reachable_engine_explains_what_to_do(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n")
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    result = run_meshcli("up", "-f", str(tmp_path / "compose.yaml"), env=env)
    assert result.returncode == 1
    assert "cannot reach the Docker engine" in result.stderr
    assert "setup-docker.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_without_docker_command_explains_what_to_do(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin), "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    result = run_meshcli("up", "-f", str(tmp_path / "compose.yaml"), env=env)
    assert result.returncode == 1
    assert "Docker" in result.stderr and "hint:" in result.stderr


@pytest.mark.parametrize("argv", [["up", "--bogus"], ["up", "--timeout", "abc"], ["nosuch"], []])
def test_usage_errors_exit_2_without_a_traceback(argv, capsys):
    from meshcli.cli.main import main

    assert main(argv) == 2
    assert "unexpected error" not in capsys.readouterr().err
