"""How long `meshcli up` takes on the demo: with its images removed, and warm.

    python benchmarks/up_time.py [--runs 3] [--keep-images]

Runs the real CLI on a private copy of the demo under a unique project name, removes
it after each run, and appends the figures to benchmarks/results/up_time.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess

from private_demo import REPO, append_row, copy_of_demo, meshcli

RESULTS = REPO / "benchmarks" / "results" / "up_time.md"
SAMPLE_IMAGE = "meshcli-sample-app:dev"
HEADER = ("# `meshcli up` on the demo (6 workloads, 19 containers)\n\n"
          "Images removed: the sidecar and sample-app images and BuildKit's cache removed first;\n"
          "the classic builder's layer cache and the host's wheelhouse kept. A fresh machine\n"
          "builds everything: see the first `up` in the e2e session of a CI log.\n"
          "Warm: images present. Both include `docker compose up --wait` until every\n"
          "sidecar is healthy. Machine: 2 cores, 24 GiB, Docker 20.10, Compose 2.40.\n\n"
          "| date | commit | runs | images removed (median) | warm (median) |\n|---|---|---|---|---|\n")


def remove_images() -> None:
    from meshcli import images

    for image in (images.sidecar_image_tag(), SAMPLE_IMAGE):
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)
    # BuildKit (compose's builds) keeps its own cache; drop it too. The classic builder's
    # intermediate layers stay (removing them would also take the offline base image).
    subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True)


def one_run(cold: bool) -> float:
    with copy_of_demo() as (directory, project):
        if cold:
            remove_images()
        return meshcli(directory, "up", "-p", project)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cold = [one_run(cold=True) for _ in range(args.runs)]
    warm = [one_run(cold=False) for _ in range(args.runs)]
    append_row(RESULTS, HEADER, [str(args.runs),
                                 f"{statistics.median(cold):.1f} s (min {min(cold):.1f}, max {max(cold):.1f})",
                                 f"{statistics.median(warm):.1f} s (min {min(warm):.1f}, max {max(warm):.1f})"])

if __name__ == "__main__":
    main()
