"""The benchmark's pure parts (benchmarks/loadgen.py, benchmarks/report.py): parsing what
the load generators print, the figures derived from a run, and its results.md row. No Docker."""

from __future__ import annotations

import json

import pytest

from benchmarks import loadgen, report

WRK_OK = """Running 1s test @ http://127.0.0.1/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    79.68us  168.67us   3.53ms   98.44%
    Req/Sec    15.62k     2.82k   23.47k    81.82%
  Latency Distribution
     50%   64.00us
     75%   73.00us
     90%   83.00us
     99%  746.00us
  17040 requests in 1.10s, 2.68MB read
Requests/sec:  15491.91
Transfer/sec:      2.44MB
"""

WRK_ERRORS = """Running 2s test @ http://web/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.91ms    4.02ms  30.36ms   93.71%
    Req/Sec   254.15     40.13   313.00     70.00%
  Latency Distribution
     50%    3.06ms
     75%    4.19ms
     90%    8.67ms
     99%    1.03s
  507 requests in 2.01s, 60.51KB read
  Socket errors: connect 0, read 507, write 0, timeout 2
  Non-2xx or 3xx responses: 12
Requests/sec:    252.79
Transfer/sec:     30.11KB
"""

REDIS_CSV = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
             '"max_latency_ms"\n"PING_MBULK","29411.76","0.032","0.016","0.023","0.055","0.071","0.255"\n')


def test_wrk_output_gives_requests_rate_and_percentiles_in_ms():
    parsed = loadgen.parse_wrk(WRK_OK)
    assert parsed["requests"] == 17040 and parsed["seconds"] == 1.1 and parsed["rps"] == 15491.91
    assert (parsed["p50_ms"], parsed["p75_ms"], parsed["p90_ms"], parsed["p99_ms"]) == (0.064, 0.073, 0.083, 0.746)
    assert parsed["errors"] == 0 and parsed["non_2xx"] == 0
    assert parsed["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def test_wrk_errors_are_counted_and_seconds_converted():
    parsed = loadgen.parse_wrk(WRK_ERRORS)
    assert parsed["p99_ms"] == 1030.0
    assert parsed["socket_errors"] == {"connect": 0, "read": 507, "write": 0, "timeout": 2}
    assert parsed["non_2xx"] == 12 and parsed["errors"] == 521


@pytest.mark.parametrize("text, message", [
    ("unable to connect to web:80 Connection refused", "not a finished wrk run"),
    (WRK_OK.replace("  Latency Distribution\n", "").replace("     50%   64.00us\n", "")
     .replace("     75%   73.00us\n", "").replace("     90%   83.00us\n", "").replace("     99%  746.00us\n", ""),
     "no latency distribution"),
])
def test_wrk_output_that_is_not_a_run_is_an_error(text, message):
    with pytest.raises(ValueError, match=message):
        loadgen.parse_wrk(text)


def test_wrk_command_closes_connections_when_asked_and_uses_two_threads_at_most():
    assert loadgen.wrk_command("http://web/", connections=1, duration=5) == \
        ["wrk", "-t", "1", "-c", "1", "-d", "5s", "--latency", "--timeout", "5s", "http://web/"]
    command = loadgen.wrk_command("http://web/", connections=64, duration=2.5, close=True)
    assert command[1:7] == ["-t", "2", "-c", "64", "-d", "3s"]  # wrk takes whole seconds
    assert command[-3:] == ["-H", "Connection: close", "http://web/"]


def test_redis_benchmark_csv():
    assert loadgen.parse_redis_csv(REDIS_CSV) == {"rps": 29411.76, "avg_ms": 0.032, "p50_ms": 0.023, "p95_ms": 0.055,
                                                  "p99_ms": 0.071}
    with pytest.raises(ValueError, match="not redis-benchmark CSV"):
        loadgen.parse_redis_csv("Could not connect to Redis at redis:6379: Connection refused\n")


def test_stream_summary_is_the_median_over_runs_and_lost_messages_fail():
    runs = {"runs": [{"messages": 50, "first_ms": 1.0, "last_ms": 999.0},
                     {"messages": 50, "first_ms": 1040.0, "last_ms": 1041.0},
                     {"messages": 50, "first_ms": 3.0, "last_ms": 1001.0}]}
    summary = loadgen.summarize_stream(json.dumps(runs), expected=50)
    assert summary["first_ms"] == 3.0 and summary["last_ms"] == 1001.0 and summary["runs"] == 3
    runs["runs"][1]["messages"] = 49
    with pytest.raises(ValueError, match="expected 50 messages"):
        loadgen.summarize_stream(json.dumps(runs), expected=50)


def figures(p50: float, close_p50: float, rps: float, cpu: float | None = None, rss: float | None = None) -> dict:
    load = {"rps": rps, "requests": 1000, "errors": 0, "socket_errors": {}}
    if cpu is not None:
        load.update(cpu_s_per_1k=cpu, rss_load_mb=rss, proxies={})
    return {"keepalive": {"p50_ms": p50, "p90_ms": p50 * 2, "p99_ms": p50 * 4, "errors": 0},
            "close": {"p50_ms": close_p50, "p90_ms": close_p50, "p99_ms": close_p50, "errors": 0},
            "load": load}


def dataplane() -> dict:
    direct = figures(0.1, 0.2, 50000)
    direct["tcp"] = {"rps": 20000.0}
    mesh = figures(2.1, 4.2, 500, cpu=2.0, rss=100.0)
    mesh["tcp"] = {"rps": 2000.0}
    return {"direct": direct, "mitmdump": figures(1.1, 2.2, 1000, cpu=1.0, rss=50.0), "mesh": mesh}


def test_latency_added_vs_direct_and_ratios_to_mitmdump():
    derived = report.derive(dataplane())
    assert "direct" not in derived
    assert derived["mitmdump"]["added"]["keepalive_p50_ms"] == 1.0
    mesh = derived["mesh"]
    assert mesh["added"]["keepalive_p50_ms"] == 2.0 and mesh["added"]["close_p99_ms"] == 4.0
    assert mesh["vs_mitmdump"] == {"added_p50_keepalive": 2.0, "added_p50_close": 2.0, "rps": 0.5,
                                   "cpu_s_per_1k": 2.0, "rss_load_mb": 2.0}
    assert mesh["tcp_vs_direct"] == 0.1


def test_a_failed_figure_gives_no_ratio_and_is_listed():
    dp = dataplane()
    dp["mitmdump"]["load"] = {"failed": "RuntimeError: wrk exited 1"}
    derived = report.derive(dp)
    assert derived["mesh"]["vs_mitmdump"]["rps"] is None
    assert derived["mesh"]["vs_mitmdump"]["added_p50_keepalive"] == 2.0
    assert report.failures({"dataplane": dp}) == ["dataplane.mitmdump.load: RuntimeError: wrk exited 1"]
    assert report.cell(dp["mitmdump"], "load", "rps") == "failed"
    assert report.cell(dp["mitmdump"], "tcp", "rps") == "-"


def run_figures(quick: bool = False) -> dict:
    dp = dataplane()
    dp["mesh"]["load"]["errors"] = 7
    dp["mesh"]["stream_http1"] = {"first_ms": 1043.7}
    dp["mesh"]["stream_grpc"] = {"failed": "ValueError: expected 50 messages per run, got [0]"}
    return {"meta": {"date": "2026-12-01 09:00", "quick": quick, "seconds": 421.4, "note": "shared machine",
                     "load_average_before": 1.52, "load_average_after": 3.0},
            "dataplane": dp, "derived": report.derive(dp),
            "demo": {"unmeshed": {"p50_ms": 3.9}, "meshed": {"p50_ms": 16.03}, "idle": {"total_percent": 67.25}},
            "cli": {"up": {"1": {"up_s": 4.8}, "5": {"failed": "RuntimeError: meshcli up exited 1"}}}}


def test_results_row_cells():
    assert report.results_row(run_figures()) == [
        "full", "0.10/1.10/2.10", "0.20/2.20/4.20", "50,000/1,000/500", "7", "1.000/2.000", "50/100",
        "20,000/2,000", "1,044/failed", "3.9/16.0", "67.2%", "4.8/failed", "1.5->3.0", "421 s",
        "shared machine"]
    assert report.results_row(run_figures(quick=True))[0] == "quick"


def test_results_file_gets_its_header_once_then_one_row_per_run(tmp_path):
    results = tmp_path / "results.md"
    report.append_results(run_figures(), results)
    report.append_results(run_figures(quick=True), results)
    lines = results.read_text().splitlines()
    assert lines[0].startswith("# ")
    header = next(line for line in lines if line.startswith("| date"))
    rows = [line for line in lines if line.startswith("| 2026-12-01 09:00 |")]
    assert len(rows) == 2 and header.count("|") == rows[0].count("|")
    assert rows[0].split(" | ")[2] == "full" and rows[1].split(" | ")[2] == "quick"


def wrk_round(rps: float, p50: float, requests: int, cpu: dict[str, float], errors: int = 0) -> dict:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p50 * 3, "requests": requests, "seconds": 4.0, "non_2xx": errors,
            "errors": errors, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
            "proxies": {name: {"cpu_s": used, "rss_load_mb": 50.0 + used} for name, used in cpu.items()},
            "rss_load_mb": 100.0 + sum(cpu.values())}


def test_rounds_combine_to_medians_sums_and_cpu_over_all_requests():
    rounds = [wrk_round(1000, 1.0, 4000, {"a": 2.0, "b": 1.0}),
              wrk_round(500, 3.0, 2000, {"a": 1.0, "b": 1.0}, errors=2),
              wrk_round(900, 2.0, 3600, {"a": 3.0, "b": 2.0}),
              {"failed": "RuntimeError: wrk exited 1: unable to connect"}]
    combined = loadgen.combine_rounds(rounds)
    assert combined["rounds"] == 3 and combined["rps"] == 900 and combined["p50_ms"] == 2.0
    assert combined["p50_ms_rounds"] == [1.0, 3.0, 2.0]
    assert combined["requests"] == 9600 and combined["errors"] == 2 and combined["seconds"] == 12.0
    assert combined["proxies"]["a"] == {"cpu_s": 6.0, "cpu_s_per_1k": 0.625, "rss_load_mb": 53.0}
    assert combined["cpu_s_per_1k"] == round(6.0 / 9.6 + 4.0 / 9.6, 3)
    assert combined["rss_load_mb"] == 105.0
    assert report.failures({"load": combined}) == [
        "load: 1 round(s) failed: RuntimeError: wrk exited 1: unable to connect"]
    assert loadgen.combine_rounds(rounds[3:]) == {"failed": "RuntimeError: wrk exited 1: unable to connect"}


def test_demo_containers_are_grouped_by_pod_and_rounds_rotate():
    from benchmarks import dataplane, demo

    assert [demo.workload_of(s) for s in ("payment-v1-pod", "payment-v1-init", "payment-v1-sidecar", "payment-v1",
                                          "meshcli-controller")] == ["payment-v1"] * 4 + ["meshcli-controller"]
    assert dataplane.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert dataplane.rotated([], 1) == []


def test_fault_machinery_cost_is_measured_on_a_config_with_faults_elsewhere():
    from benchmarks import fault_cost

    figures = fault_cost.run()
    assert figures["http_us"] > 0 and figures["tcp_us"] > 0
    assert figures["total_ms"] == round((figures["http_us"] + figures["tcp_us"]) / 1000, 4)


def test_demo_cpu_per_request_splits_apps_sidecars_and_engine_over_the_rounds_that_ran():
    from benchmarks import demo

    assert [demo.cpu_part(s) for s in ("orders", "orders-pod", "orders-sidecar", "meshcli-controller")] == [
        "apps", "apps", "sidecars", "apps"]
    rounds = [{"requests": 1000, "cpu_s": {"apps": 1.0, "sidecars": 2.0, "engine": 0.5}},
              {"failed": "wrk exited 1"},
              {"requests": 3000, "cpu_s": {"apps": 3.0, "sidecars": 2.0, "engine": 0.5}}]
    assert demo.cpu_per_request(rounds) == {"apps": 1000, "sidecars": 1000, "engine": 250}
    assert demo.cpu_per_request([{"failed": "no"}]) is None


def test_the_in_process_benchmark_measures_both_sidecar_passes(monkeypatch):
    import uvloop

    from benchmarks import inprocess

    monkeypatch.setattr(inprocess, "REQUESTS", {True: 50, False: 20})
    results = uvloop.run(inprocess._measure(rounds=1))
    for name in ("kept_alive", "connection_per_request"):
        figures = results[name]
        assert figures["total_us"] > figures["client_only_us"] > 0
        assert figures["sidecars_us"] == pytest.approx(figures["total_us"] - figures["client_only_us"], abs=0.2)
