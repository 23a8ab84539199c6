"""How long `meshcli up` takes on the demo: with its images removed, and warm.

    python benchmarks/up_time.py [--runs 3] [--keep-images]

Runs the real CLI on a private copy of the demo under a unique project name, removes
it after each run, and appends the figures to benchmarks/results/up_time.md.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "up_time.md"
SAMPLE_IMAGE = "meshcli-sample-app:dev"


def meshcli(directory: Path, *args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "meshcli.cli.main", *args], cwd=directory, check=True,
                   capture_output=True, text=True)
    return time.monotonic() - started


def remove_images() -> None:
    from meshcli import images

    for image in (images.sidecar_image_tag(), SAMPLE_IMAGE):
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)
    # BuildKit (compose's builds) keeps its own cache; drop it too. The classic builder's
    # intermediate layers stay (removing them would also take the offline base image).
    subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True)


def one_run(cold: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="meshcli-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "compose", root / "compose", ignore=shutil.ignore_patterns(".mesh"))
        shutil.copytree(REPO / "sample-apps", root / "sample-apps")
        project = f"meshbench-{uuid.uuid4().hex[:6]}"
        if cold:
            remove_images()
        try:
            return meshcli(root / "compose", "up", "-p", project)
        finally:
            meshcli(root / "compose", "down", "-p", project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cold = [one_run(cold=True) for _ in range(args.runs)]
    warm = [one_run(cold=False) for _ in range(args.runs)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    row = (f"| {datetime.date.today()} | {commit} | {args.runs} | {statistics.median(cold):.1f} s "
           f"(min {min(cold):.1f}, max {max(cold):.1f}) | {statistics.median(warm):.1f} s "
           f"(min {min(warm):.1f}, max {max(warm):.1f}) |\n")
    if not RESULTS.exists():
        RESULTS.write_text("# `meshcli up` on the demo (6 workloads, 19 containers)\n\n"
                           "Images removed: the sidecar and sample-app images and BuildKit's cache removed first;\n"
                           "the classic builder's layer cache and the host's wheelhouse kept. A fresh machine\n"
                           "builds everything: see the first `up` in the e2e session of a CI log.\n"
                           "Warm: images present. Both include `docker compose up --wait` until every\n"
                           "sidecar is healthy. Machine: 2 cores, 24 GiB, Docker 20.10, Compose 2.40.\n\n"
                           "| date | commit | runs | images removed (median) | warm (median) |\n|---|---|---|---|---|\n")
    with RESULTS.open("a") as fh:
        fh.write(row)
    print(row, end="")


if __name__ == "__main__":
    main()
