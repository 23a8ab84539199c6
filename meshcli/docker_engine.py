"""Talking to Docker: the SDK client and `docker compose`, with errors users can act on."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from meshcli.errors import DockerError

START_HINT = ("start the Docker engine (for example `sudo dockerd &`), or run "
              "scripts/setup-docker.sh from the meshcli checkout to install and start it")


@lru_cache(maxsize=1)
def client():
    import docker
    import docker.errors

    try:
        engine = docker.from_env(timeout=120)
        engine.ping()
    except docker.errors.DockerException as exc:
        raise DockerError(f"cannot reach the Docker engine: {exc}", hint=START_HINT) from exc
    return engine


@lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """`docker compose`, once checked to be Compose v2 (the check runs once per process)."""
    if shutil.which("docker") is None:
        raise DockerError("the `docker` command is not installed", hint=START_HINT)
    check = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True)
    if check.returncode != 0 or not check.stdout.strip().lstrip("v").startswith("2"):
        raise DockerError("Docker Compose v2 (`docker compose`) is not available",
                          hint="install the compose plugin; scripts/setup-docker.sh does it")
    return ("docker", "compose")


def compose(project: str, files: Sequence[Path], args: Sequence[str], *, project_directory: Path | None = None,
            env: dict[str, str] | None = None, capture: bool = True, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `docker compose -p PROJECT -f FILE... ARGS`."""
    command = [*compose_command(), "-p", project]
    for file in files:
        command += ["-f", str(file)]
    if project_directory is not None:
        command += ["--project-directory", str(project_directory)]
    command += list(args)
    try:
        result = subprocess.run(command, capture_output=capture, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"`{' '.join(command)}` did not finish within {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip() if capture else ""
        raise DockerError(f"`docker compose {' '.join(args)}` failed (exit {result.returncode})"
                          + (f":\n{detail[-3000:]}" if detail else ""))
    return result
