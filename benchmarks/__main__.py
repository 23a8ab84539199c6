"""`python -m benchmarks`: the data-plane, demo and CLI benchmark in one run.

    .venv/bin/python -m benchmarks [--quick] [--sizes 1,5,10,20] [--only dataplane,demo,cli]
                                   [--json] [--note TEXT] [--no-record]

Builds (or reuses) the tools image and the sidecar image, runs every scenario in Docker
under unique compose project names (always taken down, also on Ctrl-C), prints a table
(or, with --json, the same figures as JSON on stdout), and appends a row to
benchmarks/results.md. Exit 0 when every measurement succeeded, 1 when one failed or the
run could not start, 2 on a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from benchmarks import clitime, dataplane, demo, fault_cost, images, report
from benchmarks.private_demo import attempt, git_commit

PHASES = ("dataplane", "demo", "cli")


def sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v < 1 or v > 50 for v in values):
        raise argparse.ArgumentTypeError("sizes are between 1 and 50 services")
    return values


def phases(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return chosen


def load_average() -> float | None:
    """The host's 1-minute load average: how busy the machine was (others' work included)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs and sizes 1,5 (for development; noisier, marked quick in results.md)")
    parser.add_argument("--sizes", type=sizes, help="services per generated project for `meshcli up` (default 1,5,10,20)")
    parser.add_argument("--only", type=phases, default=PHASES, help="comma-separated phases: dataplane,demo,cli")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (table on stderr)")
    parser.add_argument("--note", default="", help="a note for this run's row in results.md (e.g. 'shared machine')")
    parser.add_argument("--no-record", action="store_true", help="do not append a row to benchmarks/results.md")
    return parser.parse_args(argv)


def step_count(args: argparse.Namespace, sizes_: tuple[int, ...]) -> int:
    count = 1  # images
    if "dataplane" in args.only:
        rounds = (dataplane.Durations.quick() if args.quick else dataplane.Durations()).rounds
        count += dataplane.step_count(rounds=rounds)
    if "demo" in args.only:
        count += 6
    if "cli" in args.only:
        count += 1 + len(sizes_)
    return count


def run(args: argparse.Namespace, step) -> dict:
    quick = args.quick
    durations = dataplane.Durations.quick() if quick else dataplane.Durations()
    sizes_ = args.sizes or ((1, 5) if quick else clitime.SIZES)
    started = time.monotonic()
    result: dict = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                             "commit": git_commit(), "quick": quick, "note": args.note, "cores": os.cpu_count(),
                             "phases": list(args.only), "load_average_before": load_average()},
                    "dataplane": {}, "derived": {}, "demo": {}, "cli": {}}
    if "cli" in args.only:
        step("cli: meshcli --help")
        attempt(result["cli"], "help", lambda: clitime.help_seconds(runs=3 if quick else 5))
    step("images: tools (wrk, nginx, redis, stream server) and sidecar")
    try:
        result["images"] = {"sidecar": images.build_sidecar_image(), "tools": images.build_tools_image()}
    except Exception as exc:  # noqa: BLE001 - nothing can run without them: the run failed
        result["images"] = {"failed": str(exc)[:1500]}
    else:
        tools, sidecar = result["images"]["tools"], result["images"]["sidecar"]
        if "dataplane" in args.only:
            result["dataplane"] = dataplane.run(tools, sidecar, durations, step)
            result["derived"] = report.derive(result["dataplane"])
            attempt(result, "fault_cost", fault_cost.run)
        if "demo" in args.only:
            result["demo"], result["cli"]["status"] = demo.run(
                tools, durations.latency, durations.demo_rounds, idle_seconds=8.0 if quick else 20.0,
                status_runs=3 if quick else 5, step=step)
        if "cli" in args.only:
            result["cli"].update(clitime.run(tools, sizes_, step=step))
    result["meta"]["seconds"] = round(time.monotonic() - started, 1)
    result["meta"]["load_average_after"] = load_average()
    result["failures"] = report.failures({k: v for k, v in result.items() if k != "meta"})
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # exits 2 on a usage error
    # Off a terminal rich would wrap the tables at 80 columns; keep them readable in a log.
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    out = err if args.json else Console(width=None if sys.stdout.isatty() else 140)
    sizes_ = args.sizes or ((1, 5) if args.quick else clitime.SIZES)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                        console=err, transient=True)
    try:
        with progress:
            task = progress.add_task("starting", total=step_count(args, sizes_))

            def step(description: str) -> None:
                progress.update(task, description=escape(description), advance=1)

            result = run(args, step)
    except KeyboardInterrupt:
        err.print("interrupted: every project this run started has been taken down")
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    report.print_tables(result, out)
    if not args.no_record:
        report.append_results(result)
        err.print(f"row appended to {report.RESULTS.relative_to(report.RESULTS.parents[1])}")
    err.print(f"took {result['meta']['seconds']:.0f} s")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
