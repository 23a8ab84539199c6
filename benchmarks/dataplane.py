"""The data-plane scenarios: the same upstreams and the same load generator, with nothing,
stock mitmdump, or a full mesh hop between them, and what each costs.

Every scenario runs in a generated compose project: `client` (the tools image, idle; the
load generators run in it with `docker exec`) calling `web` (nginx), `redis` and `stream`
(benchmarks/tools/stream_server.py). The plain project is started with `docker compose` and
also holds `mitmdump`, one stock reverse proxy in its own container; the meshed project is
the same file run through the real `meshcli up`, so every service is a pod with the sidecar
built from this tree's proxy/, and the client's calls cross its own sidecar and the
server's. A scenario names the project it needs: an mTLS hop is one more entry in
SCENARIOS and one in PROJECTS whose files (a mesh.yaml) turn mTLS on.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from benchmarks import loadgen, meter
from benchmarks.private_demo import Project, attempt, project

STREAM_MESSAGES = 50  # stream_server.py: one every 20 ms for 1 s


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    project: str                 # a key of PROJECTS
    http_host: str               # what the client calls for HTTP (port 80)
    proxies: tuple[str, ...]     # compose services whose cgroups are the proxy's cost
    raw_tcp: bool = True         # redis and streaming measured too (not through mitmdump's reverse mode)
    scraped: tuple[str, ...] = ()  # pods whose metrics a Prometheus-like scraper reads every second


SCENARIOS = [
    Scenario("direct", "client -> nginx, no proxy", "plain", "web", ()),
    Scenario("mitmdump", "client -> stock mitmdump --mode reverse -> nginx", "plain", "mitmdump:8080",
             ("mitmdump",), raw_tcp=False),
    Scenario("mesh", "client pod -> client sidecar -> nginx sidecar -> nginx pod (plaintext between sidecars)",
             "mesh", "web", ("client-sidecar", "web-sidecar"), scraped=("client-pod", "web-pod")),
    Scenario("mesh-mtls", "the same hop with mesh mTLS (STRICT) between the sidecars", "mesh-mtls", "web",
             ("client-sidecar", "web-sidecar")),
]
MTLS_HOP = "mesh-mtls"
PLAIN_HOP = "mesh"  # what the mTLS hop is compared with
SCRAPER = "scraper"  # outside the mesh, as a Prometheus is
# GET every URL once a second for argv[1] seconds, as a Prometheus with a 1 s scrape interval.
SCRAPE_SCRIPT = """
import sys, time, urllib.request
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for url in sys.argv[2:]:
        urllib.request.urlopen(url, timeout=5).read()
    time.sleep(1)
"""


@dataclass(frozen=True)
class Durations:
    """Rounds, seconds per wrk run and the sizes of the other runs (`--quick` shrinks them)."""
    rounds: int = 3
    demo_rounds: int = 5  # the demo's p50 moves most between runs: more alternating rounds
    latency: float = 3.0
    load: float = 4.0
    warmup: float = 1.0
    redis_requests: int = 5000
    redis_pipelined: int = 40000
    stream_runs: int = 5

    @classmethod
    def quick(cls) -> "Durations":
        return cls(rounds=2, demo_rounds=2, latency=2.0, load=2.0, warmup=1.0, redis_requests=1000, redis_pipelined=8000,
                   stream_runs=2)


def compose_text(tools_image: str, sidecar_image: str, with_mitmdump: bool, with_scraper: bool = False) -> str:
    common = f"    image: {tools_image}\n    pull_policy: never\n    stop_grace_period: 1s\n"
    services = {
        "web": '    command: ["nginx", "-g", "daemon off;"]\n    expose: ["80"]\n',
        "redis": '    command: ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]\n'
                 '    expose: ["6379"]\n',
        "stream": '    command: ["python3", "/opt/bench/stream_server.py"]\n    expose: ["8081", "8082"]\n',
        "client": '    command: ["sleep", "infinity"]\n',
    }
    if with_scraper:
        services[SCRAPER] = '    command: ["sleep", "infinity"]\n    labels: {mesh.inject: "false"}\n'
    text = "services:\n" + "".join(f"  {name}:\n{common}{body}" for name, body in services.items())
    if with_mitmdump:
        # Stock mitmdump, every default addon on, as the anchor of comparison; it runs from the
        # sidecar image, which already has mitmproxy.
        text += (f"  mitmdump:\n    image: {sidecar_image}\n    pull_policy: never\n    stop_grace_period: 1s\n"
                 '    entrypoint: ["/opt/meshcli/venv/bin/mitmdump", "--mode", "reverse:http://web:80",'
                 ' "--listen-port", "8080", "--set", "confdir=/tmp/mitmproxy"]\n    expose: ["8080"]\n')
    return text


@dataclass(frozen=True)
class ProjectSpec:
    meshed: bool
    mitmdump: bool = False
    files: tuple[tuple[str, str], ...] = ()  # (name, text) beside compose.yaml, e.g. a mesh.yaml


def mesh_file(mode: str) -> tuple[tuple[str, str], ...]:
    return (("mesh.yaml", f"apiVersion: meshcli/v1\nmtls:\n  mode: {mode}\n"),)


PROJECTS = {
    "plain": ProjectSpec(meshed=False, mitmdump=True),
    "mesh": ProjectSpec(meshed=True, files=mesh_file("DISABLE")),
    "mesh-mtls": ProjectSpec(meshed=True, files=mesh_file("STRICT")),
}


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


def load_while_scraped(box: Project, url: str, duration: float, proxies: dict[str, meter.Container],
                       pods: tuple[str, ...]) -> dict:
    """load_with_costs() while the scraper reads every pod's /stats/prometheus once a second."""
    from meshproxy.config import METRICS_PORT

    urls = [f"http://{pod}:{METRICS_PORT}/stats/prometheus" for pod in pods]
    scraping: dict = {}
    scraper = threading.Thread(target=lambda: scraping.update(
        done=box.exec(SCRAPER, "python3", "-c", SCRAPE_SCRIPT, str(duration + 1), *urls, timeout=duration + 60)))
    scraper.start()
    try:
        return load_with_costs(box, url, duration, proxies)
    finally:
        scraper.join()
        done = scraping.get("done")
        if done is None or done.returncode != 0:
            raise RuntimeError(f"the scraper failed: {(done.stderr if done else 'no run')[-400:]}")


def redis(box: Project, requests: int, pipeline: int) -> dict:
    command = loadgen.redis_command("redis", requests=requests, pipeline=pipeline)
    return loadgen.parse_redis_csv(_run(box, *command))


def stream(box: Project, protocol: str, port: int, runs: int) -> dict:
    output = _run(box, "python3", "/opt/bench/stream_client.py", protocol, "stream", str(port), str(runs),
                  timeout=30 * runs)
    return loadgen.summarize_stream(output, STREAM_MESSAGES)


def rotated(items: list, by: int) -> list:
    """The same items starting at position `by`: each round starts with another scenario."""
    by %= max(len(items), 1)
    return items[by:] + items[:by]


class Bench:
    """One scenario in its project that is up: the client to run load from, the proxies'
    cgroups, and the figures gathered so far (wrk runs kept per round until combined)."""

    def __init__(self, box: Project, scenario: Scenario):
        self.box, self.scenario = box, scenario
        self.url = f"http://{scenario.http_host}/"
        self.proxies: dict[str, meter.Container] = {}
        self.figures: dict = {"description": scenario.description}
        self.rounds: dict[str, list[dict]] = {"keepalive": [], "close": [], "load": []}
        if scenario.scraped:
            self.rounds["load_scraped"] = []

    def prepare(self, durations: Durations) -> None:
        def idle() -> dict:
            wait_listening(self.box, self.scenario.http_host)
            self.proxies.update(proxy_containers(self.box, self.scenario))
            return rss(self.proxies)

        attempt(self.figures, "idle", idle)
        attempt(self.figures, "warmup", lambda: wrk(self.box, self.url, 1, durations.warmup))
        self.figures.pop("warmup")  # only there to load code paths and connection pools

    def one_round(self, durations: Durations) -> None:
        runs = {"keepalive": lambda: wrk(self.box, self.url, 1, durations.latency),
                "close": lambda: wrk(self.box, self.url, 1, durations.latency, close=True),
                "load": lambda: load_with_costs(self.box, self.url, durations.load, self.proxies)}
        if self.scenario.scraped:
            runs["load_scraped"] = lambda: load_while_scraped(self.box, self.url, durations.load, self.proxies,
                                                              self.scenario.scraped)
        for key, measure in runs.items():
            slot: dict = {}
            attempt(slot, key, measure)
            self.rounds[key].append(slot[key])

    def raw_tcp_and_streams(self, durations: Durations) -> None:
        box = self.box
        attempt(self.figures, "tcp", lambda: redis(box, durations.redis_requests, 1))
        attempt(self.figures, "tcp_pipelined", lambda: redis(box, durations.redis_pipelined, 16))
        attempt(self.figures, "stream_http1", lambda: stream(box, "http1", 8081, durations.stream_runs))
        attempt(self.figures, "stream_grpc", lambda: stream(box, "grpc", 8082, durations.stream_runs))

    def result(self) -> dict:
        for key, rounds in self.rounds.items():
            self.figures[key] = loadgen.combine_rounds(rounds)
        return self.figures


def run(tools_image: str, sidecar_image: str, durations: Durations, step: Callable[[str], None],
        scenarios: list[Scenario] = SCENARIOS) -> dict:
    """{scenario name: figures}. Every project is up at once and the rounds go round the
    scenarios, so a burst of load from elsewhere on the machine hits them all alike."""
    results: dict = {}
    benches: list[Bench] = []
    with ExitStack() as projects:
        for kind, spec in PROJECTS.items():
            wanted = [s for s in scenarios if s.project == kind]
            if not wanted:
                continue
            scraper = any(s.scraped for s in wanted)
            box = projects.enter_context(project(compose_text(tools_image, sidecar_image, spec.mitmdump, scraper),
                                                 meshed=spec.meshed, prefix=f"meshbench-{kind}",
                                                 files=dict(spec.files)))
            step(f"starting the {kind} project ({'meshcli up' if spec.meshed else 'docker compose up'})")
            try:
                up_seconds = box.up()
            except Exception as exc:  # noqa: BLE001 - the scenarios of this project fail, the rest run
                for scenario in wanted:
                    results[scenario.name] = {"description": scenario.description,
                                              "failed": f"project did not start: {exc}"[:800]}
                continue
            for scenario in wanted:
                benches.append(Bench(box, scenario))
                benches[-1].figures["project_up_s"] = round(up_seconds, 1)
        time.sleep(2)  # let start-up work (healthchecks, first config push) settle before idle figures
        for bench in benches:
            step(f"{bench.scenario.name}: idle memory, warm-up")
            bench.prepare(durations)
        for number in range(durations.rounds):
            for bench in rotated(benches, number):
                step(f"round {number + 1}/{durations.rounds}: {bench.scenario.name}, wrk at 1 connection "
                     "(kept alive, then one per request) and at 16 (also while scraped)")
                bench.one_round(durations)
        for bench in benches:
            if bench.scenario.raw_tcp:
                step(f"{bench.scenario.name}: redis round trips, streamed answers")
                bench.raw_tcp_and_streams(durations)
        for bench in benches:
            results[bench.scenario.name] = bench.result()
    return {s.name: results[s.name] for s in scenarios if s.name in results}


def step_count(scenarios: list[Scenario] = SCENARIOS, rounds: int = 3) -> int:
    """How many times run() calls `step` (for a progress bar)."""
    kinds = {s.project for s in scenarios}
    return len(kinds) + len(scenarios) * (1 + rounds) + sum(1 for s in scenarios if s.raw_tcp)
