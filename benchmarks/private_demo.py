"""What every benchmark here shares: compose projects under unique names in temporary
directories (a private copy of the demo, or a generated file), brought up with the real
CLI or plain `docker compose`, always taken down; and a results file figures are appended to."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from meshcli import demo as bundled_demo

REPO = Path(__file__).resolve().parents[1]
MESHCLI = [sys.executable, "-m", "meshcli.cli.main"]


def meshcli(directory: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Run the real CLI in `directory`; (seconds it took, its stdout)."""
    started = time.monotonic()
    done = subprocess.run([*MESHCLI, *args], cwd=directory, capture_output=True, text=True,
                          env=env or os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"meshcli {' '.join(args)} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return time.monotonic() - started, done.stdout


def attempt(results: dict, key: str, measure: Callable[[], dict]) -> None:
    """results[key] = measure(), or {"failed": why}: a failed figure is reported, never made up."""
    try:
        results[key] = measure()
    except Exception as exc:  # noqa: BLE001 - any failure of one measurement is that figure's failure
        results[key] = {"failed": f"{type(exc).__name__}: {exc}"[:500]}


def unique_name(prefix: str = "meshbench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Project:
    """One compose project in `directory` (compose.yaml there) under the name `name`."""
    directory: Path
    name: str
    meshed: bool
    env: dict | None = None
    stopped: bool = False

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def up(self, timeout: int = 180) -> float:
        """Start it (`meshcli up`, or `docker compose up --wait` when not meshed); seconds taken."""
        if self.meshed:
            return meshcli(self.directory, "up", "-p", self.name, "--timeout", str(timeout), env=self.env)[0]
        started = time.monotonic()
        done = subprocess.run(["docker", "compose", "-p", self.name, "up", "-d", "--wait", "--wait-timeout",
                               str(timeout)], cwd=self.directory, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"docker compose up {self.name} failed: {done.stderr.strip()[-1500:]}")
        return time.monotonic() - started

    def down(self) -> float:
        """Remove every container, network and volume of the project; seconds the first command took."""
        # `meshcli down` also stops the project's hot-reload watcher; compose's own down after
        # it is a no-op then, and the fallback when the CLI itself failed.
        # A second Ctrl-C must not cut the cleanup short (children inherit the ignore too).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return self._down()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _down(self) -> float:
        started = time.monotonic()
        if self.meshed:
            subprocess.run([*MESHCLI, "down", "-p", self.name], cwd=self.directory, capture_output=True,
                           env=self.env)
        seconds = time.monotonic() - started
        subprocess.run(["docker", "compose", "-p", self.name, "down", "-v", "--remove-orphans", "-t", "2"],
                       cwd=self.directory, capture_output=True, env=self.env)
        self.stopped = True
        return seconds if self.meshed else time.monotonic() - started

    def exec(self, service: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", self.container(service), *command], capture_output=True,
                              text=True, timeout=timeout)

    def container_ids(self) -> dict[str, str]:
        """Compose service name -> container id, for every container of the project."""
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
                             capture_output=True, text=True).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c["Id"] for c in inspected}


@contextmanager
def project(compose_text: str, meshed: bool, prefix: str = "meshbench", env: dict | None = None,
            files: dict[str, str] | None = None) -> Iterator[Project]:
    """A generated project (compose.yaml plus `files`) in a temporary directory; taken down after,
    also on an error or Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
        directory = Path(tmp)
        (directory / "compose.yaml").write_text(compose_text)
        for name, text in (files or {}).items():
            (directory / name).write_text(text)
        current = Project(directory, unique_name(prefix), meshed, env)
        try:
            yield current
        finally:
            if not current.stopped:
                current.down()


@contextmanager
def demo_project(meshed: bool = True, env: dict | None = None, files: dict[str, str] | None = None
                 ) -> Iterator[Project]:
    """A private copy of the demo (compose/ and sample-apps/, plus `files` in compose/) under a
    unique name; taken down after."""
    with tempfile.TemporaryDirectory(prefix="meshcli-bench-") as tmp:
        root = bundled_demo.copy(Path(tmp) / "demo").directory
        for name, text in (files or {}).items():
            (root / "compose" / name).write_text(text)
        demo = Project(root / "compose", unique_name(), meshed, env)
        try:
            yield demo
        finally:
            demo.down()


@contextmanager
def copy_of_demo() -> Iterator[tuple[Path, str]]:
    """(the copy's compose directory, a unique project name); the project is taken down after."""
    with demo_project() as project:
        yield project.directory, project.name


def git_commit() -> str:
    """Short HEAD, with `+dirty` when the work tree has uncommitted changes (figures of code
    that no commit holds)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def append_row(results: Path, header: str, cells: list[str], when: str | None = None,
               echo: bool = True) -> str:
    """Add `| date | commit | cells... |` to the results table (created with `header`)."""
    row = "| " + " | ".join([when or str(datetime.date.today()), git_commit(), *cells]) + " |\n"
    if not results.exists():
        results.write_text(header)
    with results.open("a") as fh:
        fh.write(row)
    if echo:
        print(row, end="")
    return row
