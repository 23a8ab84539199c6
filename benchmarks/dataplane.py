"""The data-plane scenarios: the same upstreams and the same load generator, with nothing,
stock mitmdump, or a full mesh hop between them, and what each costs.

Every scenario runs in a generated compose project: `client` (the tools image, idle; the
load generators run in it with `docker exec`) calling `web` (nginx), `redis` and `stream`
(benchmarks/tools/stream_server.py). The plain project is started with `docker compose` and
also holds `mitmdump`, one stock reverse proxy in its own container; the meshed project is
the same file run through the real `meshcli up`, so every service is a pod with the sidecar
built from this tree's proxy/, and the client's calls cross its own sidecar and the
server's. A scenario names the project it needs; an mTLS hop is one more entry in
SCENARIOS with a project that turns mTLS on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from benchmarks import loadgen, meter
from benchmarks.private_demo import Project, project

STREAM_MESSAGES = 50  # stream_server.py: one every 20 ms for 1 s


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    project: str                 # a key of PROJECTS
    http_host: str               # what the client calls for HTTP (port 80)
    proxies: tuple[str, ...]     # compose services whose cgroups are the proxy's cost
    raw_tcp: bool = True         # redis and streaming measured too (not through mitmdump's reverse mode)


SCENARIOS = [
    Scenario("direct", "client -> nginx, no proxy", "plain", "web", ()),
    Scenario("mitmdump", "client -> stock mitmdump --mode reverse -> nginx", "plain", "mitmdump:8080",
             ("mitmdump",), raw_tcp=False),
    Scenario("mesh", "client pod -> client sidecar -> nginx sidecar -> nginx pod", "mesh", "web",
             ("client-sidecar", "web-sidecar")),
]


@dataclass(frozen=True)
class Durations:
    """Seconds per wrk run and the sizes of the other runs (`--quick` shrinks them)."""
    latency: float = 5.0
    load: float = 8.0
    warmup: float = 1.0
    redis_requests: int = 5000
    redis_pipelined: int = 40000
    stream_runs: int = 5

    @classmethod
    def quick(cls) -> "Durations":
        return cls(latency=2.0, load=3.0, warmup=0.5, redis_requests=1000, redis_pipelined=8000, stream_runs=2)


def compose_text(tools_image: str, sidecar_image: str, with_mitmdump: bool) -> str:
    common = f"    image: {tools_image}\n    pull_policy: never\n    stop_grace_period: 1s\n"
    services = {
        "web": '    command: ["nginx", "-g", "daemon off;"]\n    expose: ["80"]\n',
        "redis": '    command: ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]\n'
                 '    expose: ["6379"]\n',
        "stream": '    command: ["python3", "/opt/bench/stream_server.py"]\n    expose: ["8081", "8082"]\n',
        "client": '    command: ["sleep", "infinity"]\n',
    }
    text = "services:\n" + "".join(f"  {name}:\n{common}{body}" for name, body in services.items())
    if with_mitmdump:
        # Stock mitmdump, every default addon on, as the anchor of comparison; it runs from the
        # sidecar image, which already has mitmproxy.
        text += (f"  mitmdump:\n    image: {sidecar_image}\n    pull_policy: never\n    stop_grace_period: 1s\n"
                 '    entrypoint: ["/opt/meshcli/venv/bin/mitmdump", "--mode", "reverse:http://web:80",'
                 ' "--listen-port", "8080", "--set", "confdir=/tmp/mitmproxy"]\n    expose: ["8080"]\n')
    return text


PROJECTS = {
    "plain": {"meshed": False, "mitmdump": True},
    "mesh": {"meshed": True, "mitmdump": False},
}


def attempt(results: dict, key: str, measure: Callable[[], dict]) -> None:
    """results[key] = measure(), or {"failed": why}: a failed figure is reported, never made up."""
    try:
        results[key] = measure()
    except Exception as exc:  # noqa: BLE001 - any failure of one measurement is that figure's failure
        results[key] = {"failed": f"{type(exc).__name__}: {exc}"[:500]}


def _run(box: Project, *command: str, timeout: float = 120) -> str:
    done = box.exec("client", *command, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout


WAIT_SCRIPT = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"nothing listens on {sys.argv[1]}:{sys.argv[2]}")
        time.sleep(0.1)
"""


def wait_listening(box: Project, address: str, seconds: float = 30) -> None:
    """Until `address` accepts connections from the client (compose only waits for a container
    to run; a proxy without a healthcheck may not listen yet, and one is not added because its
    runs would count in the proxy's CPU)."""
    host, _, port = address.partition(":")
    _run(box, "python3", "-c", WAIT_SCRIPT, host, port or "80", str(seconds), timeout=seconds + 10)


def wrk(box: Project, url: str, connections: int, duration: float, close: bool = False) -> dict:
    command = loadgen.wrk_command(url, connections=connections, duration=duration, close=close)
    return loadgen.parse_wrk(_run(box, *command, timeout=duration + 60))


def mb(value: int) -> float:
    return round(value / 2**20, 1)


def rss(containers: dict[str, meter.Container]) -> dict:
    per_proxy = {name: mb(c.rss_bytes()) for name, c in containers.items()}
    return {"rss_mb": round(sum(per_proxy.values()), 1) if per_proxy else None, "per_proxy": per_proxy}


def proxy_containers(box: Project, scenario: Scenario) -> dict[str, meter.Container]:
    found = {name: c for name, c in meter.containers(box.container_ids()).items() if name in scenario.proxies}
    missing = set(scenario.proxies) - set(found)
    if missing:
        raise RuntimeError(f"no running container for {sorted(missing)}")
    return found


def load_with_costs(box: Project, url: str, duration: float, proxies: dict[str, meter.Container]) -> dict:
    """wrk at 16 connections; each proxy container's CPU-s per 1,000 requests and peak RSS."""
    before = {name: c.cpu_seconds() for name, c in proxies.items()}
    with meter.PeakRss(proxies) as peak:
        result = wrk(box, url, 16, duration)
    per_proxy = {}
    for name, container in proxies.items():
        used = container.cpu_seconds() - before[name]
        per_proxy[name] = {"cpu_s": round(used, 2), "rss_load_mb": mb(peak.peaks[name]),
                           "cpu_s_per_1k": round(used / (result["requests"] / 1000), 3) if result["requests"] else None}
    result["proxies"] = per_proxy
    result["cpu_s_per_1k"] = round(sum(p["cpu_s_per_1k"] for p in per_proxy.values()), 3) \
        if proxies and result["requests"] else None
    result["rss_load_mb"] = mb(peak.peak_total) if proxies else None
    return result


def redis(box: Project, requests: int, pipeline: int) -> dict:
    command = loadgen.redis_command("redis", requests=requests, pipeline=pipeline)
    return loadgen.parse_redis_csv(_run(box, *command))


def stream(box: Project, protocol: str, port: int, runs: int) -> dict:
    output = _run(box, "python3", "/opt/bench/stream_client.py", protocol, "stream", str(port), str(runs),
                  timeout=30 * runs)
    return loadgen.summarize_stream(output, STREAM_MESSAGES)


def measure(box: Project, scenario: Scenario, durations: Durations, step: Callable[[str], None]) -> dict:
    """Every figure of one scenario, in a project that is up."""
    results: dict = {"description": scenario.description}
    url = f"http://{scenario.http_host}/"
    proxies: dict[str, meter.Container] = {}

    def idle() -> dict:
        wait_listening(box, scenario.http_host)
        proxies.update(proxy_containers(box, scenario))
        return rss(proxies)

    attempt(results, "idle", idle)
    step(f"{scenario.name}: warm-up")
    attempt(results, "warmup", lambda: wrk(box, url, 1, durations.warmup))
    step(f"{scenario.name}: latency, 1 kept-alive connection")
    attempt(results, "keepalive", lambda: wrk(box, url, 1, durations.latency))
    step(f"{scenario.name}: latency, 1 connection per request")
    attempt(results, "close", lambda: wrk(box, url, 1, durations.latency, close=True))
    step(f"{scenario.name}: requests/s at 16 connections")
    attempt(results, "load", lambda: load_with_costs(box, url, durations.load, proxies))
    results.pop("warmup", None)
    if scenario.raw_tcp:
        step(f"{scenario.name}: redis round trips")
        attempt(results, "tcp", lambda: redis(box, durations.redis_requests, 1))
        attempt(results, "tcp_pipelined", lambda: redis(box, durations.redis_pipelined, 16))
        step(f"{scenario.name}: streamed answers")
        attempt(results, "stream_http1", lambda: stream(box, "http1", 8081, durations.stream_runs))
        attempt(results, "stream_grpc", lambda: stream(box, "grpc", 8082, durations.stream_runs))
    return results


def run(tools_image: str, sidecar_image: str, durations: Durations, step: Callable[[str], None],
        scenarios: list[Scenario] = SCENARIOS) -> dict:
    """{scenario name: figures}, one project at a time (each taken down before the next)."""
    results: dict = {}
    for kind, spec in PROJECTS.items():
        wanted = [s for s in scenarios if s.project == kind]
        if not wanted:
            continue
        with project(compose_text(tools_image, sidecar_image, spec["mitmdump"]), meshed=spec["meshed"],
                     prefix=f"meshbench-{kind}") as box:
            step(f"starting the {kind} project ({'meshcli up' if spec['meshed'] else 'docker compose up'})")
            try:
                up_seconds = box.up()
            except Exception as exc:  # noqa: BLE001 - the scenarios of this project fail, the rest run
                for scenario in wanted:
                    results[scenario.name] = {"description": scenario.description,
                                              "failed": f"project did not start: {exc}"[:800]}
                continue
            time.sleep(2)  # let start-up work (healthchecks, first config push) settle before idle figures
            for scenario in wanted:
                results[scenario.name] = measure(box, scenario, durations, step)
                results[scenario.name]["project_up_s"] = round(up_seconds, 1)
    return results
