"""What seeing the mesh costs the data plane: requests/s at 16 connections through a full
mesh hop (the data-plane benchmark's `mesh` scenario: client sidecar -> nginx sidecar)
with nothing watching, with `meshcli tap web` running (its default --max-rps 100, and
streaming every request), and with tracing on at the default sampling (1 %) exporting to
`meshcli trace`'s receiver on this host.
The variants alternate within each round, so load from elsewhere hits them alike.

    .venv/bin/python -m benchmarks.observability [--rounds 3] [--duration 4]

Prints the figures as JSON; records nothing (benchmarks/results.md is written by the
full run).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

from benchmarks import dataplane, images
from benchmarks.private_demo import MESHCLI, meshcli, project

URL = "http://web/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _apply(box, mesh_text: str) -> None:
    (box.directory / "mesh.yaml").write_text(mesh_text)
    meshcli(box.directory, "apply", "-p", box.name)
    time.sleep(1.0)  # every sidecar reloads (the watch of its config file)


@contextmanager
def _tapping(box, max_rps: str):
    """`meshcli tap web` running meanwhile."""
    tap = subprocess.Popen([*MESHCLI, "tap", "web", "--json", "--max-rps", max_rps, "-p", box.name],
                           cwd=box.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # attached (a docker exec into the sidecar)
        yield
    finally:
        tap.terminate()
        tap.wait(10)


@contextmanager
def _mesh_file(box, meanwhile: str, after: str):
    """The sidecars running `meanwhile`'s mesh file, then `after`'s."""
    _apply(box, meanwhile)
    try:
        yield
    finally:
        _apply(box, after)


def run(rounds: int, duration: float) -> dict:
    from meshcli.trace import Receiver

    tools, sidecar = images.build_tools_image(), images.build_sidecar_image()
    receiver = Receiver("0.0.0.0", _free_port(), settle=1.0)
    plain = "apiVersion: meshcli/v1\n"
    tracing = plain + ("telemetry:\n  tracing:\n"
                       f"    endpoint: http://host.docker.internal:{receiver.port}\n")  # default sampling
    variants = {"baseline": lambda box: nullcontext(), "tap": lambda box: _tapping(box, "100"),
                "tap_every_request": lambda box: _tapping(box, "1000000"),
                "tracing": lambda box: _mesh_file(box, tracing, plain)}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    with project(dataplane.compose_text(tools, sidecar, False), meshed=True, prefix="meshbench-obs",
                 files={"mesh.yaml": plain}) as box:
        box.up()
        dataplane.wait_listening(box, "web")
        dataplane.wrk(box, URL, 16, 1.0)  # warm-up: pools filled
        for number in range(rounds):
            for name in dataplane.rotated(list(variants), number):  # drift on the machine hits each alike
                with variants[name](box):
                    figures[name].append(dataplane.wrk(box, URL, 16, duration)["rps"])
    traces = sum(1 for _ in receiver.traces(seconds=2.0))
    receiver.close()
    result = {name: {"requests_per_s": round(statistics.median(values)), "runs": [round(v) for v in values]}
              for name, values in figures.items()}
    base = result["baseline"]["requests_per_s"]
    for name in ("tap", "tap_every_request", "tracing"):
        result[name]["vs_baseline_percent"] = round((result[name]["requests_per_s"] / base - 1) * 100, 1)
        # Each round's run against that round's baseline: what the machine's drift does not move.
        paired = [value / baseline for value, baseline in zip(figures[name], figures["baseline"])]
        result[name]["paired_vs_baseline_percent"] = round((statistics.median(paired) - 1) * 100, 1)
    result["tracing"]["traces_received"] = traces
    result["meta"] = {"rounds": rounds, "duration_s": duration, "connections": 16, "cores": os.cpu_count()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.observability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.rounds, args.duration), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
