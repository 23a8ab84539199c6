"""The bundled demo, meshed and not: p50 of `GET /` on frontend, the meshed demo's idle CPU
per pod and in total (containers, their shims, the hot-reload watcher, and the share of
dockerd and containerd), and `meshcli status` on it.

Each run uses a private copy of compose/ and sample-apps/ (benchmarks/private_demo.py);
the checkout's files are never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from typing import Callable

from benchmarks import clitime, images, loadgen, meter
from benchmarks.private_demo import Project, attempt, demo_project

ENGINE = ("dockerd", "containerd")
# Unmeshed, nothing resolves the logical name `payment` that orders calls (the mesh gives
# both versions that alias): the plain copy gets it on payment-v1, compose's override file.
UNMESHED_OVERRIDE = """services:
  payment-v1:
    networks:
      default:
        aliases: [payment]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where a demo request's CPU goes: the sample apps (with their pod containers and the
# controller), the sidecars, and dockerd+containerd (mostly the apps' and sidecars' logs).
# At one connection on 2 cores the p50 follows the sum, so this says what a change saved.
CPU_PARTS = ("apps", "sidecars", "engine")


def cpu_part(service: str) -> str:
    return "sidecars" if service.endswith("-sidecar") else "apps"


def frontend_latency(demo: Project, tools_image: str, duration: float) -> dict:
    """wrk at 1 kept-alive connection from a container on the demo's network (no published
    port, no docker-proxy in the way), and the CPU-s its requests cost (cpu_part())."""
    command = ["docker", "run", "--rm", "--network", f"{demo.name}_default", tools_image,
               *loadgen.wrk_command("http://frontend:8080/", connections=1, duration=duration)]
    cgroups = meter.containers(demo.container_ids())
    engine = [pid for name in ENGINE for pid in meter.pids_of(name)]

    def taken() -> dict[str, float]:
        cpu = {part: 0.0 for part in CPU_PARTS}
        for service, container in cgroups.items():
            cpu[cpu_part(service)] += container.cpu_seconds()
        cpu["engine"] = _host_cpu(engine)
        return cpu

    before = taken()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    after = taken()
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return {**loadgen.parse_wrk(done.stdout), "cpu_s": {part: after[part] - before[part] for part in CPU_PARTS}}


def cpu_per_request(rounds: list[dict]) -> dict | None:
    """µs of CPU per request for each of CPU_PARTS over the rounds that ran."""
    done = [r for r in rounds if "failed" not in r]
    requests = sum(r["requests"] for r in done)
    if not requests:
        return None
    return {part: round(sum(r["cpu_s"][part] for r in done) / requests * 1e6) for part in CPU_PARTS}


def wait_answering(demo: Project, seconds: float = 60) -> None:
    """Until frontend answers `GET /` with 200 on its published port (compose's --wait only
    waits for the containers to run: the unmeshed demo has no healthchecks)."""
    url = f"http://127.0.0.1:{demo.env['FRONTEND_PORT']}/"
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {seconds:g} s")
        time.sleep(0.2)


def workload_of(service: str) -> str:
    """The pod a compose service belongs to: `orders-pod`, `orders-init`, `orders-sidecar` and
    `orders` are orders' (an init container that has ended is not running, so not counted)."""
    for suffix in ("-pod", "-init", "-sidecar"):
        if service.endswith(suffix):
            return service[: -len(suffix)]
    return service


def _host_cpu(pids: list[int], children: bool = False) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += meter.process_cpu_seconds(pid, children)
        except OSError:
            pass  # gone meanwhile
    return total


def engine_cpu_over(seconds: float) -> float:
    """CPU-s dockerd and containerd used in a window (everyone's activity on this engine)."""
    pids = [pid for name in ENGINE for pid in meter.pids_of(name)]
    before = _host_cpu(pids)
    time.sleep(seconds)
    return _host_cpu(pids) - before


def idle_cpu(demo: Project, seconds: float, engine_baseline: float | None) -> dict:
    """% of one core over `seconds` with no traffic: per pod (its pod, sidecar and app
    containers, and their shims, which run the healthchecks' runc), the controller, the
    watcher, and dockerd+containerd above their baseline."""
    ids = demo.container_ids()
    cgroups = meter.containers(ids)
    shims = meter.shim_pids(list(ids.values()))
    watcher_file = demo.directory / ".mesh" / "watcher.pid"
    watcher = [int(watcher_file.read_text())] if watcher_file.exists() else []
    engine = [pid for name in ENGINE for pid in meter.pids_of(name)]

    def sample() -> dict:
        taken = {f"container:{n}": c.cpu_seconds() for n, c in cgroups.items()}
        taken.update({f"shim:{n}": _host_cpu([shims[cid]], children=True) for n, cid in ids.items() if cid in shims})
        taken.update(watcher=_host_cpu(watcher), engine=_host_cpu(engine))
        return taken

    start = sample()
    time.sleep(seconds)
    used = {key: value - start[key] for key, value in sample().items()}
    percent = lambda cpu: round(100 * cpu / seconds, 1)  # noqa: E731
    pods: dict[str, dict[str, float]] = {}
    for key, cpu in used.items():
        kind, _, service = key.partition(":")
        if service:
            pod = pods.setdefault(workload_of(service), {"containers": 0.0, "shims": 0.0})
            pod["containers" if kind == "container" else "shims"] += cpu
    result = {"seconds": seconds,
              "pods": {name: {k: percent(v) for k, v in pod.items()} for name, pod in sorted(pods.items())},
              "containers_percent": percent(sum(p["containers"] for p in pods.values())),
              "shims_percent": percent(sum(p["shims"] for p in pods.values())),
              "watcher_percent": percent(used["watcher"]) if watcher else None,
              "engine_percent": percent(used["engine"]),
              "engine_baseline_percent": percent(engine_baseline) if engine_baseline is not None else None}
    engine_share = result["engine_percent"] - (result["engine_baseline_percent"] or 0.0)
    result["total_percent"] = round(result["containers_percent"] + result["shims_percent"]
                                    + (result["watcher_percent"] or 0.0) + max(engine_share, 0.0), 1)
    return result


def run(tools_image: str, latency_seconds: float, rounds: int, idle_seconds: float, status_runs: int,
        step: Callable[[str], None]) -> tuple[dict, dict]:
    """(demo figures, `meshcli status` timing on the meshed demo). The idle CPU is measured with
    only the meshed demo up; then the unmeshed one joins it and the latency rounds alternate."""
    results: dict = {}
    status: dict = {}
    step(f"demo: dockerd+containerd baseline over {idle_seconds:g} s, no demo running")
    baseline: float | None = None
    try:
        baseline = engine_cpu_over(idle_seconds)
    except OSError:
        pass
    # The sample apps build FROM the sidecar's base (compose/compose.yaml), also when unmeshed.
    base = {"MESHCLI_BASE_IMAGE": os.environ.get("MESHCLI_BASE_IMAGE") or images.base_image()}
    with ExitStack() as stack:
        meshed = stack.enter_context(demo_project(meshed=True, env={**os.environ, **base,
                                                                    "FRONTEND_PORT": str(free_port())}))
        step("demo: meshcli up (meshed)")
        try:
            results["meshed_up_s"] = round(meshed.up(), 1)
        except Exception as exc:  # noqa: BLE001
            results["meshed"] = results["idle"] = status = {"failed": str(exc)[:800]}
            meshed = None
        if meshed:
            time.sleep(3)  # start-up work settles (first healthchecks, config push)
            step(f"demo: idle CPU over {idle_seconds:g} s")
            attempt(results, "idle", lambda: idle_cpu(meshed, idle_seconds, baseline))
            step("cli: meshcli status on the meshed demo")
            slot: dict = {}
            attempt(slot, "status", lambda: clitime.cli_seconds(["status", "-p", meshed.name], status_runs,
                                                                meshed.directory, meshed.env))
            status = slot["status"]
        plain = stack.enter_context(demo_project(meshed=False, env={**os.environ, **base,
                                                                    "FRONTEND_PORT": str(free_port())},
                                                 files={"compose.override.yaml": UNMESHED_OVERRIDE}))
        step("demo: docker compose up (unmeshed)")
        try:
            plain.up()
            wait_answering(plain)
        except Exception as exc:  # noqa: BLE001
            results["unmeshed"] = {"failed": str(exc)[:800]}
            plain = None
        step("demo: GET / on frontend, meshed and unmeshed in turns")
        demos = {name: demo for name, demo in (("meshed", meshed), ("unmeshed", plain)) if demo}
        latency: dict[str, list[dict]] = {name: [] for name in demos}
        for _ in range(rounds):
            for name, demo in demos.items():
                slot: dict = {}
                attempt(slot, name, lambda: frontend_latency(demo, tools_image, latency_seconds))
                latency[name].append(slot[name])
        for name, runs in latency.items():
            results[name] = loadgen.combine_rounds(runs)
            if "failed" not in results[name]:
                results[name]["cpu_us_per_request"] = cpu_per_request(runs)
    return results, status
