"""Hot-reload latency: from saving mesh.yaml to the first request that follows the new rule.

    python benchmarks/reload_latency.py [--reloads 50]

Brings a private copy of the demo up under a unique project name, then flips payment's
split between v1=100 and v2=100 by rewriting mesh.yaml (atomically, as editors do)
`--reloads` times. A client polls the frontend in a tight loop; a reload's latency is
the time from the save to the end of the first request, sent after the save, that was
served by the new version. Appends p50/p90/max to benchmarks/results/reload_latency.md
and takes the demo down.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from pathlib import Path

from private_demo import REPO, append_row, copy_of_demo, meshcli

RESULTS = REPO / "benchmarks" / "results" / "reload_latency.md"
HEADER = ("# Hot-reload latency on the demo\n\n"
          "From saving mesh.yaml (atomic rename) to the end of the first request, sent after the\n"
          "save, that the new rule served (payment flipped between `to: v1` and `to: v2`; each\n"
          "request crosses frontend -> orders -> payment). Goal: p50 under 250 ms.\n"
          "Reproduce: `.venv/bin/python benchmarks/reload_latency.py --reloads 50`.\n\n"
          "| date | commit | reloads | p50 | p90 | max | min |\n|---|---|---|---|---|---|---|\n")
TIMEOUT = 10.0  # a reload that takes longer than this counts as failed


def mesh_text(version: str) -> str:
    return f"apiVersion: meshcli/v1\nservices:\n  payment:\n    to: {version}\n"


def save(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def payment_version(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        return answer["calls"][0]["calls"][0]["version"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def measure(mesh_file: Path, url: str, reloads: int) -> list[float]:
    latencies = []
    target = "v1"
    save(mesh_file, mesh_text(target))
    deadline = time.monotonic() + 30
    while payment_version(url) != target and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(reloads):
        target = "v2" if target == "v1" else "v1"
        saved = time.monotonic()
        save(mesh_file, mesh_text(target))
        while True:
            version = payment_version(url)
            now = time.monotonic()
            if version == target:
                latencies.append(now - saved)
                break
            if now - saved > TIMEOUT:
                raise SystemExit(f"reload to {target} not seen after {TIMEOUT} s")
        time.sleep(0.2)  # let the watcher settle so reloads do not overlap
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=50)
    args = parser.parse_args()
    port = "18080"
    with copy_of_demo() as (directory, project):
        meshcli(directory, "up", "-p", project, env={**os.environ, "FRONTEND_PORT": port})
        latencies = measure(directory / "mesh.yaml", f"http://localhost:{port}/", args.reloads)
    ms = sorted(round(x * 1000) for x in latencies)
    p50, p90 = statistics.median(ms), ms[int(len(ms) * 0.9) - 1]
    append_row(RESULTS, HEADER, [str(len(ms)), f"{p50:.0f} ms", f"{p90} ms", f"{ms[-1]} ms", f"{ms[0]} ms"])


if __name__ == "__main__":
    main()
