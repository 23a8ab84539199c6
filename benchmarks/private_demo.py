"""What every benchmark here shares: a private copy of the demo under a unique project
name (always taken down), the real CLI, and a results file the figures are appended to."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from meshcli import demo

REPO = Path(__file__).resolve().parents[1]


def meshcli(directory: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Run the real CLI in `directory`; (seconds it took, its stdout)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "meshcli.cli.main", *args], cwd=directory, check=True,
                          capture_output=True, text=True, env=env or os.environ.copy())
    return time.monotonic() - started, done.stdout


@contextmanager
def copy_of_demo() -> Iterator[tuple[Path, str]]:
    """(the copy's compose directory, a unique project name); the project is taken down after."""
    with tempfile.TemporaryDirectory(prefix="meshcli-bench-") as tmp:
        root = demo.copy(Path(tmp) / "demo").directory
        project = f"meshbench-{uuid.uuid4().hex[:6]}"
        try:
            yield root / "compose", project
        finally:  # `meshcli down` also stops the project's hot-reload watcher
            subprocess.run([sys.executable, "-m", "meshcli.cli.main", "down", "-p", project], cwd=root / "compose",
                           capture_output=True)


def append_row(results: Path, header: str, cells: list[str]) -> None:
    """Add `| date | commit | cells... |` to the results table (created with `header`)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    row = "| " + " | ".join([str(datetime.date.today()), commit, *cells]) + " |\n"
    if not results.exists():
        results.write_text(header)
    with results.open("a") as fh:
        fh.write(row)
    print(row, end="")
