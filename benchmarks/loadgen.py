"""The load generators' command lines and the parsing of what they print (pure functions,
unit-tested): wrk for HTTP, redis-benchmark for raw TCP round trips, stream_client.py for
the arrival of streamed messages."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def wrk_command(url: str, *, connections: int, duration: float, close: bool = False) -> list[str]:
    """wrk with its latency distribution; one thread per 8 connections, at most 2 (2 cores).
    wrk takes whole seconds only: a fraction is rounded up."""
    threads = min(2, max(1, connections // 8))
    seconds = max(1, math.ceil(duration))
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
               "--timeout", "5s"]
    if close:
        command += ["-H", "Connection: close"]
    return [*command, url]


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> dict:
    """wrk --latency output -> requests, seconds, rps, p50/p75/p90/p99 in ms, non_2xx, socket errors.

    wrk counts "Non-2xx or 3xx responses"; the upstreams here never answer 3xx, so that is
    the non-2xx count. Raises ValueError when the output is not a finished wrk run."""
    done = re.search(r"(\d+) requests in " + _TIME, text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not done or not rps:
        raise ValueError(f"not a finished wrk run: {text.strip()[-300:]!r}")
    result = {"requests": int(done.group(1)), "seconds": round(_ms(done.group(2), done.group(3)) / 1000, 2),
              "rps": float(rps.group(1))}
    for percent, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+" + _TIME, text, re.M):
        result[f"p{percent}_ms"] = round(_ms(value, unit), 3)
    if "p50_ms" not in result:
        raise ValueError("wrk printed no latency distribution (run it with --latency)")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                       map(int, errors.groups()))) if errors else \
        {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    result["errors"] = result["non_2xx"] + sum(result["socket_errors"].values())
    return result


def redis_command(host: str, *, requests: int, pipeline: int) -> list[str]:
    """One connection, PING round trips (the smallest request/answer there is), CSV output."""
    return ["redis-benchmark", "-h", host, "-p", "6379", "-c", "1", "-n", str(requests), "-P", str(pipeline),
            "-t", "ping_mbulk", "--csv"]


def parse_redis_csv(text: str) -> dict:
    """redis-benchmark --csv -> {"rps": .., "avg_ms": .., "p50_ms": .., "p95_ms": .., "p99_ms": ..}.
    redis-benchmark reports no p90: p95 is its upper bound."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) < 2 or rows[0][0] != "test":
        raise ValueError(f"not redis-benchmark CSV output: {text.strip()[-300:]!r}")
    header, values = rows[0], rows[1]
    row = dict(zip(header, values))
    result = {"rps": float(row["rps"])}
    for key, name in (("avg_latency_ms", "avg_ms"), ("p50_latency_ms", "p50_ms"), ("p95_latency_ms", "p95_ms"),
                      ("p99_latency_ms", "p99_ms")):
        if key in row:
            result[name] = float(row[key])
    return result


def summarize_stream(text: str, expected: int) -> dict:
    """stream_client.py's JSON -> median time to the first and to the last message over the runs.
    Raises ValueError when a run lost messages."""
    runs = json.loads(text)["runs"]
    short = [run["messages"] for run in runs if run["messages"] != expected]
    if not runs or short:
        raise ValueError(f"expected {expected} messages per run, got {[r['messages'] for r in runs]}")
    return {"runs": len(runs),
            "first_ms": round(statistics.median(r["first_ms"] for r in runs), 1),
            "last_ms": round(statistics.median(r["last_ms"] for r in runs), 1),
            "first_ms_all": [r["first_ms"] for r in runs]}


def combine_rounds(rounds: list[dict]) -> dict:
    """Several wrk runs of one figure (parse_wrk, plus load_with_costs' proxies) -> one: the
    median of each rate and percentile, counts summed, CPU per 1,000 requests over all the
    requests, peak RSS the highest. A failed round is left out and listed; all failed -> failed."""
    done = [r for r in rounds if "failed" not in r]
    failed = [r["failed"] for r in rounds if "failed" in r]
    if not done:
        return {"failed": failed[-1] if failed else "not measured"}
    combined: dict = {"rounds": len(done)}
    for key in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms"):
        values = [r[key] for r in done if r.get(key) is not None]
        if values:
            combined[key] = round(statistics.median(values), 3)
    combined["p50_ms_rounds"] = [r.get("p50_ms") for r in done]  # the spread the median hides
    for key in ("requests", "non_2xx", "errors"):
        combined[key] = sum(r[key] for r in done)
    combined["seconds"] = round(sum(r["seconds"] for r in done), 2)
    combined["socket_errors"] = {kind: sum(r["socket_errors"][kind] for r in done) for kind in done[0]["socket_errors"]}
    if "proxies" in done[0]:
        proxies = {}
        for name in done[0]["proxies"]:
            cpu = sum(r["proxies"][name]["cpu_s"] for r in done)
            proxies[name] = {"cpu_s": round(cpu, 2),
                             "cpu_s_per_1k": round(cpu / combined["requests"] * 1000, 3) if combined["requests"] else None,
                             "rss_load_mb": max(r["proxies"][name]["rss_load_mb"] for r in done)}
        combined["proxies"] = proxies
        per_1k = [p["cpu_s_per_1k"] for p in proxies.values()]
        combined["cpu_s_per_1k"] = round(sum(per_1k), 3) if proxies and None not in per_1k else None
        peaks = [r["rss_load_mb"] for r in done if r.get("rss_load_mb") is not None]
        combined["rss_load_mb"] = max(peaks) if peaks else None
    if failed:
        combined["failed_rounds"] = failed
    return combined
