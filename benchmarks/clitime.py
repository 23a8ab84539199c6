"""How long the CLI takes: `meshcli --help`, and `meshcli up` (warm: images built) and
`meshcli down` on generated projects of N services, with the sidecars' total memory once up.
(`meshcli status` is timed on the meshed demo, benchmarks/demo.py.)"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from benchmarks import meter
from benchmarks.private_demo import MESHCLI, REPO, attempt, project

SIZES = (1, 5, 10, 20)


def cli_seconds(args: list[str], runs: int, cwd: Path = REPO, env: dict | None = None) -> dict:
    """Wall time of the real CLI (a fresh process each time, as a user runs it), over `runs` runs."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run([*MESHCLI, *args], cwd=cwd, capture_output=True, text=True, env=env)
        times.append(time.monotonic() - started)
        if done.returncode != 0:
            raise RuntimeError(f"meshcli {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return {"runs": runs, "median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2)}


def compose_text(tools_image: str, services: int) -> str:
    body = "".join(f"  svc-{i:02d}:\n    image: {tools_image}\n    pull_policy: never\n    stop_grace_period: 1s\n"
                   '    command: ["nginx", "-g", "daemon off;"]\n    expose: ["80"]\n'
                   for i in range(1, services + 1))
    return "services:\n" + body


def up_down(tools_image: str, services: int) -> dict:
    with project(compose_text(tools_image, services), meshed=True, prefix=f"meshbench-n{services}") as box:
        up = box.up(timeout=300)
        sidecars = {n: c for n, c in meter.containers(box.container_ids()).items() if n.endswith("-sidecar")}
        if len(sidecars) != services:
            raise RuntimeError(f"{len(sidecars)} sidecars running, expected {services}")
        memory = sum(c.rss_bytes() for c in sidecars.values())
        down = box.down()
    return {"up_s": round(up, 1), "down_s": round(down, 1), "sidecar_rss_mb": round(memory / 2**20, 1),
            "sidecar_rss_mb_each": round(memory / 2**20 / services, 1)}


def help_seconds(runs: int) -> dict:
    """`meshcli --help`. The run takes it first, before any phase loads the machine: right after
    the demo's teardown, dockerd is still busy and start-up times say more of that than of the CLI."""
    return cli_seconds(["--help"], runs)


def run(tools_image: str, sizes: tuple[int, ...], step: Callable[[str], None]) -> dict:
    """`meshcli up` and `down` for each size."""
    results: dict = {"up": {}}
    for n in sizes:
        step(f"cli: meshcli up and down, {n} service{'s' if n > 1 else ''}")
        attempt(results["up"], str(n), lambda: up_down(tools_image, n))
    return results
