"""What a run's figures say and how they are shown: the figures derived from them (latency
added vs direct, ratios to stock mitmdump), the failures, the rich table, and the row
appended to benchmarks/results.md. Everything here is pure but `print_tables`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks import dataplane as dataplane_scenarios

RESULTS = Path(__file__).resolve().parent / "results.md"
ANCHOR = "mitmdump"
BASE = "direct"

HEADER = """# Data-plane and CLI benchmark (`python -m benchmarks`)

One row per full run, appended by the benchmark itself. Reproduce (after
`bash scripts/install.sh`): `.venv/bin/python -m benchmarks` (about 6 minutes; `--quick`
for a shorter, noisier run, marked `quick` in the mode column). Every figure comes from a
real run in Docker on this tree's sidecar; `failed` means that measurement failed.

Scenarios: **direct** (client container -> nginx container), **mitmdump** (stock
`mitmdump --mode reverse:http://web:80` in its own container, the anchor), **mesh** (a
meshed client pod -> a meshed nginx pod: the client's sidecar and the server's). The load
generator is wrk in the client container; nginx answers 17 bytes.

Columns (a/b/c = direct/mitmdump/mesh):
- **p50 keep-alive**, **p50 conn/req**: wrk's median latency in ms at 1 connection, kept
  alive, or one connection per request (`Connection: close`; wrk starts its clock once
  connected, so the client's own TCP connect is not in it).
- **req/s @16**: wrk, 16 connections, 2 threads; **errors** non-2xx + socket errors of the
  mesh hop over all its wrk runs (the target is 0).
- **CPU-s/1k**: CPU seconds per 1,000 requests of the proxy containers at 16 connections
  (cgroup cpuacct), mitmdump / the mesh hop's two sidecars together.
- **RSS load**: MB, memory cgroup rss of the proxy containers at peak under that load.
- **redis rt/s**: PING round trips per second on 1 connection, not pipelined, direct/mesh.
- **TTFM**: ms from request to the first message of a 1 s stream (a message per 20 ms)
  through the mesh hop, chunked HTTP/1.1 / h2c gRPC (direct is about 1 ms).
- **demo p50**: `GET /` on the demo's frontend, unmeshed / meshed, ms.
- **demo idle**: the meshed demo with no traffic, % of one core: containers, shims,
  watcher and the engine's share above its baseline.
- **up N**: warm `meshcli up` wall time in s for 1/5/10/20 generated services.
- **load**: the host's 1-minute load average before -> after the run (2 cores: above 2,
  something else was running too); **run**: the run's wall time.

Latency and requests/s are medians over rounds that take the scenarios in turns (all
projects up at once), so noise from elsewhere on the machine hits every scenario alike.
wrk counts a read error when a proxy closes a connection after an answer that did not say
`Connection: close`. The only Python client (the streams' timer) waits on one socket:
direct, it sees the first message within about 1 ms and the last at about 1 s.

| date (UTC) | commit | mode | p50 keep-alive | p50 conn/req | req/s @16 | errors | CPU-s/1k | RSS load | redis rt/s | TTFM | demo p50 | demo idle | up N | load | run | note |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def get(tree: dict, *path: str):
    """tree[path...], or None when any step is missing or a failure."""
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, dict) and "failed" in node:
        return None
    return node


def ratio(value: float | None, anchor: float | None) -> float | None:
    if value is None or anchor is None or anchor == 0:
        return None
    return round(value / anchor, 2)


def subtract(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else round(value - base, 3)


def derive(dataplane: dict) -> dict:
    """Per scenario other than direct: latency added vs direct, and ratios to stock mitmdump
    (added latency, requests/s, CPU per request, RSS under load; above 1 = more than mitmdump)."""
    derived: dict = {}
    for name, figures in dataplane.items():
        if name == BASE:
            continue
        added = {f"{mode}_{p}_ms": subtract(get(figures, mode, f"{p}_ms"), get(dataplane, BASE, mode, f"{p}_ms"))
                 for mode in ("keepalive", "close") for p in ("p50", "p90", "p99")}
        entry: dict = {"added": added}
        if name != ANCHOR and ANCHOR in dataplane:
            anchor = dataplane[ANCHOR]
            anchor_added = derived.get(ANCHOR, {}).get("added") or {
                f"{m}_p50_ms": subtract(get(anchor, m, "p50_ms"), get(dataplane, BASE, m, "p50_ms"))
                for m in ("keepalive", "close")}
            entry["vs_mitmdump"] = {
                "added_p50_keepalive": ratio(added["keepalive_p50_ms"], anchor_added.get("keepalive_p50_ms")),
                "added_p50_close": ratio(added["close_p50_ms"], anchor_added.get("close_p50_ms")),
                "rps": ratio(get(figures, "load", "rps"), get(anchor, "load", "rps")),
                "cpu_s_per_1k": ratio(get(figures, "load", "cpu_s_per_1k"), get(anchor, "load", "cpu_s_per_1k")),
                "rss_load_mb": ratio(get(figures, "load", "rss_load_mb"), get(anchor, "load", "rss_load_mb")),
            }
        if name == dataplane_scenarios.MTLS_HOP and dataplane_scenarios.PLAIN_HOP in dataplane:
            plain = dataplane[dataplane_scenarios.PLAIN_HOP]
            entry["vs_plain_hop"] = {
                "rps": ratio(get(figures, "load", "rps"), get(plain, "load", "rps")),
                "added_p50_keepalive_ms": subtract(get(figures, "keepalive", "p50_ms"), get(plain, "keepalive", "p50_ms")),
                "added_p50_close_ms": subtract(get(figures, "close", "p50_ms"), get(plain, "close", "p50_ms")),
            }
        if get(figures, "tcp") is not None:
            entry["tcp_vs_direct"] = ratio(get(figures, "tcp", "rps"), get(dataplane, BASE, "tcp", "rps"))
        derived[name] = entry
    return derived


def failures(tree, path: str = "") -> list[str]:
    """Every failed measurement as `path: reason`."""
    if not isinstance(tree, dict):
        return []
    if "failed" in tree:
        return [f"{path or 'run'}: {tree['failed']}"]
    found = [f"{path}: {len(tree['failed_rounds'])} round(s) failed: {tree['failed_rounds'][0]}"] \
        if tree.get("failed_rounds") else []
    for key, value in tree.items():
        found += failures(value, f"{path}.{key}" if path else str(key))
    return found


def errors_total(figures: dict) -> int | None:
    """Non-2xx plus socket errors over a scenario's wrk runs (None if none finished)."""
    counts = [get(figures, mode, "errors") for mode in ("keepalive", "close", "load")]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None


# -- formatting ---------------------------------------------------------------------------

def num(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 100:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def cell(tree: dict, *path: str, digits: int = 2, suffix: str = "") -> str:
    """A figure, `failed` when its measurement (or an enclosing one) failed, `-` when not measured."""
    node = tree
    for key in path:
        if isinstance(node, dict) and "failed" in node:
            return "failed"
        if not isinstance(node, dict) or key not in node:
            return "-"
        node = node[key]
    if isinstance(node, dict) and "failed" in node:
        return "failed"
    return num(node, digits, suffix)


def triple(tree: dict, mode: str) -> str:
    if isinstance(tree.get(mode), dict) and "failed" in tree[mode] or "failed" in tree:
        return "failed"
    return " / ".join(cell(tree, mode, f"{p}_ms") for p in ("p50", "p90", "p99"))


def signed(value: float | None, suffix: str = " ms") -> str:
    return "-" if value is None else f"{value:+.2f}{suffix}"


def times(value: float | None) -> str:
    return "-" if value is None else f"×{value:.2f}"


def results_row(run: dict) -> list[str]:
    """The cells after date and commit of this run's row in results.md (see HEADER)."""
    dp, demo, cli = run.get("dataplane", {}), run.get("demo", {}), run.get("cli", {})
    names = (BASE, ANCHOR, "mesh")

    def across(*path: str, digits: int = 2, which=names) -> str:
        return "/".join(cell(dp.get(n, {}), *path, digits=digits) for n in which)

    sizes = cli.get("up", {})
    mesh = dp.get("mesh", {})
    errors = errors_total(mesh) if mesh else None
    return [
        "quick" if run["meta"].get("quick") else "full",
        across("keepalive", "p50_ms"),
        across("close", "p50_ms"),
        across("load", "rps", digits=0),
        "-" if errors is None else str(errors),
        "/".join(cell(dp.get(n, {}), "load", "cpu_s_per_1k", digits=3) for n in (ANCHOR, "mesh")),
        "/".join(cell(dp.get(n, {}), "load", "rss_load_mb", digits=0) for n in (ANCHOR, "mesh")),
        across("tcp", "rps", digits=0, which=(BASE, "mesh")),
        "/".join(cell(mesh, key, "first_ms", digits=0) for key in ("stream_http1", "stream_grpc")),
        "/".join(cell(demo, key, "p50_ms", digits=1) for key in ("unmeshed", "meshed")),
        cell(demo, "idle", "total_percent", digits=1, suffix="%"),
        "/".join(cell(sizes, n, "up_s", digits=1) for n in sizes) or "-",
        f"{num(run['meta'].get('load_average_before'), 1)}->{num(run['meta'].get('load_average_after'), 1)}",
        f"{run['meta'].get('seconds', 0):.0f} s",
        run["meta"].get("note") or "",
    ]


def append_results(run: dict, results: Path = RESULTS) -> str:
    from benchmarks.private_demo import append_row

    return append_row(results, HEADER, [c.replace("|", "\\|") for c in results_row(run)],
                      when=run["meta"]["date"], echo=False)


# -- the rich tables ----------------------------------------------------------------------

def dataplane_table(dp: dict, derived: dict) -> Table:
    names = list(dp)
    table = Table(title="Data plane: same nginx, same wrk, in Docker", title_justify="left")
    table.add_column("figure")
    for name in names:
        table.add_column(name, justify="right")

    def row(label: str, render) -> None:
        table.add_row(label, *(render(name, dp[name]) for name in names))

    def section(label: str) -> None:
        table.add_row(f"[bold]{label}[/bold]", *("" for _ in names))

    section("HTTP, 1 kept-alive connection")
    row("p50 / p90 / p99 ms", lambda n, f: triple(f, "keepalive"))
    row("added p50 / p99 vs direct", lambda n, f: "" if n == BASE else
        f"{signed(get(derived, n, 'added', 'keepalive_p50_ms'))} / {signed(get(derived, n, 'added', 'keepalive_p99_ms'))}")
    row("requests/s", lambda n, f: cell(f, "keepalive", "rps", digits=0))
    section("HTTP, 1 connection per request")
    row("p50 / p90 / p99 ms", lambda n, f: triple(f, "close"))
    row("added p50 / p99 vs direct", lambda n, f: "" if n == BASE else
        f"{signed(get(derived, n, 'added', 'close_p50_ms'))} / {signed(get(derived, n, 'added', 'close_p99_ms'))}")
    # wrk's latency clock starts once connected; its rate includes connecting and closing.
    row("requests/s (connect included)", lambda n, f: cell(f, "close", "rps", digits=0))
    section("HTTP, 16 connections")
    row("requests/s", lambda n, f: cell(f, "load", "rps", digits=0))
    row("p50 / p99 ms", lambda n, f: f"{cell(f, 'load', 'p50_ms')} / {cell(f, 'load', 'p99_ms')}")
    # A Prometheus scraping both sidecars once a second (issue 13's target: at most 10 % fewer requests/s).
    row("requests/s, sidecars scraped every 1 s", lambda n, f: cell(f, "load_scraped", "rps", digits=0))
    row("scraped vs not", lambda n, f: "-" if (r := ratio(get(f, "load_scraped", "rps"), get(f, "load", "rps")))
        is None else f"×{r:.2f}")
    row("errors (non-2xx + socket), all runs", lambda n, f: _errors(f))
    row("CPU-s per 1,000 requests", lambda n, f: _per_proxy(f, "cpu_s_per_1k", 3, total=get(f, "load", "cpu_s_per_1k")))
    row("RSS idle MB", lambda n, f: _per_proxy_idle(f))
    row("RSS under load MB", lambda n, f: _per_proxy(f, "rss_load_mb", 0, total=get(f, "load", "rss_load_mb")))
    section("ratio to stock mitmdump")
    for key, label in (("added_p50_keepalive", "added p50, kept-alive"), ("added_p50_close", "added p50, conn/request"),
                       ("rps", "requests/s at 16"), ("cpu_s_per_1k", "CPU per request"),
                       ("rss_load_mb", "RSS under load")):
        row(label, lambda n, f, key=key: "1" if n == ANCHOR else times(get(derived, n, "vs_mitmdump", key)))
    if dataplane_scenarios.MTLS_HOP in dp:
        section("mTLS hop vs plaintext hop")
        row("requests/s at 16", lambda n, f: times(get(derived, n, "vs_plain_hop", "rps"))
            if n == dataplane_scenarios.MTLS_HOP else "")
        row("added p50 ms, kept-alive / conn/request", lambda n, f:
            f"{signed(get(derived, n, 'vs_plain_hop', 'added_p50_keepalive_ms'))} / "
            f"{signed(get(derived, n, 'vs_plain_hop', 'added_p50_close_ms'))}"
            if n == dataplane_scenarios.MTLS_HOP else "")
    section("raw TCP (redis PING, 1 connection)")
    row("round trips/s", lambda n, f: cell(f, "tcp", "rps", digits=0))
    row("round trip p50 / p95 ms (p95 bounds p90)",
        lambda n, f: f"{cell(f, 'tcp', 'p50_ms', digits=3)} / {cell(f, 'tcp', 'p95_ms', digits=3)}")
    row("pipelined ×16, requests/s", lambda n, f: cell(f, "tcp_pipelined", "rps", digits=0))
    row("vs direct", lambda n, f: "" if n == BASE else times(get(derived, n, "tcp_vs_direct")))
    section("streamed answer (a message / 20 ms for 1 s)")
    for key, label in (("stream_http1", "chunked HTTP/1.1"), ("stream_grpc", "h2c gRPC")):
        row(f"{label}: first / last message ms",
            lambda n, f, key=key: f"{cell(f, key, 'first_ms', digits=1)} / {cell(f, key, 'last_ms', digits=0)}")
    return table


def _errors(figures: dict) -> str:
    if "failed" in figures:
        return "failed"
    total = errors_total(figures)
    if total is None:
        return "-"
    socket = sum(sum((get(figures, m, "socket_errors") or {}).values()) for m in ("keepalive", "close", "load"))
    text = f"{total} ({total - socket} non-2xx, {socket} socket)" if total else "0"
    return f"[red]{text}[/red]" if total else text


def _per_proxy(figures: dict, key: str, digits: int, total) -> str:
    per = get(figures, "load", "proxies")
    if get(figures, "load") is None:
        return cell(figures, "load")
    if not per:
        return "-"
    parts = [f"{name.removesuffix('-sidecar')} {num(v.get(key), digits)}" for name, v in per.items()]
    return ", ".join(parts) + (f" = {num(total, digits)}" if len(per) > 1 else "")


def _per_proxy_idle(figures: dict) -> str:
    per = get(figures, "idle", "per_proxy")
    if per is None:
        return cell(figures, "idle")
    if not per:
        return "-"
    return ", ".join(f"{name.removesuffix('-sidecar')} {num(v, 0)}" for name, v in per.items())


def demo_table(demo: dict, status: dict, cli: dict) -> Table:
    table = Table(title="Demo and CLI", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    unmeshed, meshed = get(demo, "unmeshed", "p50_ms"), get(demo, "meshed", "p50_ms")
    table.add_row("demo GET / p50 ms, unmeshed / meshed",
                  f"{cell(demo, 'unmeshed', 'p50_ms')} / {cell(demo, 'meshed', 'p50_ms')}"
                  + (f" ({signed(subtract(meshed, unmeshed))})" if meshed is not None and unmeshed is not None else ""))
    table.add_row("demo GET / p99 ms, unmeshed / meshed",
                  f"{cell(demo, 'unmeshed', 'p99_ms')} / {cell(demo, 'meshed', 'p99_ms')}")
    for part in ("apps", "sidecars", "engine"):
        table.add_row(f"demo CPU µs per request, {part}: unmeshed / meshed",
                      f"{cell(demo, 'unmeshed', 'cpu_us_per_request', part, digits=0)} / "
                      f"{cell(demo, 'meshed', 'cpu_us_per_request', part, digits=0)}")
    table.add_row("demo GET / errors (non-2xx + socket), unmeshed / meshed",
                  f"{cell(demo, 'unmeshed', 'errors')} / {cell(demo, 'meshed', 'errors')}")
    idle = get(demo, "idle")
    if idle is None:
        table.add_row("demo idle CPU", cell(demo, "idle"))
    else:
        for pod, split in idle["pods"].items():
            table.add_row(f"demo idle CPU, {pod}: containers + shims",
                          f"{split['containers']:.1f}% + {split['shims']:.1f}%")
        table.add_row("demo idle CPU, all pods: containers + shims",
                      f"{idle['containers_percent']:.1f}% + {idle['shims_percent']:.1f}%")
        table.add_row("demo idle CPU, hot-reload watcher", num(idle["watcher_percent"], 1, "%"))
        table.add_row("demo idle CPU, dockerd+containerd (baseline)",
                      f"{idle['engine_percent']:.1f}% ({num(idle['engine_baseline_percent'], 1, '%')})")
        table.add_row("[bold]demo idle CPU, total[/bold]", f"[bold]{idle['total_percent']:.1f}%[/bold]")
    table.add_row("meshcli --help, median s", cell(cli, "help", "median_s"))
    table.add_row("meshcli status (meshed demo), median s", cell(status, "median_s"))
    for n, figures in cli.get("up", {}).items():
        label = f"meshcli up / down, {n} service{'s' if n != '1' else ''}: s; sidecars' RSS MB"
        table.add_row(label, "failed" if "failed" in figures else
                      f"{num(figures['up_s'], 1)} / {num(figures['down_s'], 1)}; {num(figures['sidecar_rss_mb'], 0)}")
    return table


def print_tables(run: dict, console: Console) -> None:
    meta = run["meta"]
    console.print(f"{meta['date']} UTC, {meta['commit']}, {'quick' if meta.get('quick') else 'full'} run, "
                  f"load average {num(meta.get('load_average_before'), 1)} -> {num(meta.get('load_average_after'), 1)}"
                  f" on {meta.get('cores')} cores", highlight=False, markup=False)
    if run.get("dataplane"):
        console.print(dataplane_table(run["dataplane"], run["derived"]))
    if run.get("fault_cost"):
        cost = run["fault_cost"]
        console.print("fault machinery with no fault active: " + (
            cost["failed"] if "failed" in cost else
            f"{cost['http_us']:.2f} µs per request + {cost['tcp_us']:.2f} µs per outbound connection"),
            highlight=False, markup=False)
    if run.get("demo") or run.get("cli"):
        console.print(demo_table(run.get("demo", {}), run.get("cli", {}).get("status", {}), run.get("cli", {})))
    for failure in run.get("failures", []):
        console.print(f"[red]failed[/red] {escape(failure)}", highlight=False)
