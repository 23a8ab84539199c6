"""Tracing: W3C and B3 propagation (pure functions), sampling, span export and redaction."""

import pytest

from meshproxy.config import REDACTED, MeshState, SidecarConfig, Telemetry, Tracing as TracingSettings
from meshproxy.exchange import INBOUND, OUTBOUND, Exchange, redact
from meshproxy.otlp import default_gateway, encode
from meshproxy.policy.tracing import (MULTI, SINGLE, Context, Tracing, extract, parse_b3_multi, parse_b3_single,
                                      parse_traceparent, propagation_headers)
from sidecar_kit import WEB

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(("value", "expected"), [
    (f"00-{TRACE}-{SPAN}-01", Context(TRACE, SPAN, True)),
    (f"00-{TRACE}-{SPAN}-00", Context(TRACE, SPAN, False)),
    (f" 00-{TRACE}-{SPAN}-03 ", Context(TRACE, SPAN, True)),  # other flag bits: only bit 0 counts
    (f"01-{TRACE}-{SPAN}-01-future", Context(TRACE, SPAN, True)),  # a later version may add fields
    (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has exactly four
    (f"ff-{TRACE}-{SPAN}-01", None),
    (f"00-{'0' * 32}-{SPAN}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE.upper()}-{SPAN}-01", None),  # lower-case hex only
    (f"00-{TRACE[:-1]}-{SPAN}-01", None),
    ("garbage", None), ("", None), (None, None),
])
def test_traceparent(value, expected):
    assert parse_traceparent(value) == expected


def test_tracestate_travels_with_a_valid_traceparent():
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01", " vendor=abc ").tracestate == "vendor=abc"


@pytest.mark.parametrize(("value", "expected"), [
    (f"{TRACE}-{SPAN}-1", Context(TRACE, SPAN, True, b3=SINGLE)),
    (f"{TRACE}-{SPAN}-0-a3ce929d0e0e4736", Context(TRACE, SPAN, False, b3=SINGLE)),
    (f"{TRACE}-{SPAN}", Context(TRACE, SPAN, True, b3=SINGLE)),  # no decision: this hop decides (sampled)
    (f"a3ce929d0e0e4736-{SPAN}-d", Context("0" * 16 + "a3ce929d0e0e4736", SPAN, True, b3=SINGLE)),  # 64-bit id
    ("0", Context("", "", False, b3=SINGLE)), ("1", Context("", "", True, b3=SINGLE)),
    (f"{TRACE}-{SPAN}-x", None), (f"{TRACE}-short-1", None), (f"{TRACE}-{SPAN}-1-bad", None),
    (f"{TRACE}-{SPAN}-1-{SPAN}-more", None), ("zzz", None), ("", None),
])
def test_b3_single(value, expected):
    assert parse_b3_single(value) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}, Context(TRACE, SPAN, True, b3=MULTI)),
    ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}, Context(TRACE, SPAN, False, b3=MULTI)),
    ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"}, Context(TRACE, SPAN, True, b3=MULTI)),
    ({"x-b3-traceid": TRACE.upper(), "x-b3-spanid": SPAN}, Context(TRACE, SPAN, True, b3=MULTI)),
    ({"x-b3-sampled": "0"}, Context("", "", False, b3=MULTI)),
    ({"x-b3-traceid": TRACE}, None), ({"x-b3-traceid": "xyz", "x-b3-spanid": SPAN}, None), ({}, None),
])
def test_b3_multi(fields, expected):
    assert parse_b3_multi(fields) == expected


def test_w3c_wins_over_b3_and_a_malformed_w3c_falls_back():
    both = {"traceparent": f"00-{TRACE}-{SPAN}-01", "b3": f"{'1' * 32}-{'2' * 16}-1"}
    assert extract(both).trace_id == TRACE
    assert extract({**both, "traceparent": "bad"}).trace_id == "1" * 32
    assert extract({"traceparent": "bad"}) is None


def test_propagation_keeps_the_format_that_came():
    assert propagation_headers(TRACE, SPAN, True) == [("traceparent", f"00-{TRACE}-{SPAN}-01")]
    assert propagation_headers(TRACE, SPAN, False, "k=v", SINGLE, "1" * 16) == [
        ("traceparent", f"00-{TRACE}-{SPAN}-00"), ("tracestate", "k=v"), ("b3", f"{TRACE}-{SPAN}-0-{'1' * 16}")]
    assert propagation_headers(TRACE, SPAN, True, b3=MULTI) == [
        ("traceparent", f"00-{TRACE}-{SPAN}-01"), ("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1")]


class Collected:
    def __init__(self) -> None:
        self.spans = []
        self.closed = False

    def export(self, span) -> None:
        self.spans.append(span)

    def close(self) -> None:
        self.closed = True


def tracing(percent: float = 100.0):
    state = MeshState(WEB)
    exporters = []

    def exporter_for(settings):
        exporters.append(Collected())
        return exporters[-1]

    policy = Tracing(state, exporter_for)
    state.apply(SidecarConfig("v1", telemetry=Telemetry(tracing=TracingSettings("http://c:4318/v1/traces", percent))))
    return policy, exporters


def run(policy, fields, direction=OUTBOUND):
    exchange = Exchange(direction, "GET", "payment:8080", "/pay?x=1")
    headers = [(b"host", b"payment:8080")] + [(n.encode(), v.encode()) for n, v in fields.items()]
    policy.start(exchange, fields, headers)
    return exchange, headers


def test_off_touches_nothing():
    policy = Tracing(MeshState(WEB), lambda settings: pytest.fail("no exporter when off"))
    fields = {"traceparent": f"00-{TRACE}-{SPAN}-01"}
    exchange, headers = run(policy, fields)
    assert headers == [(b"host", b"payment:8080"), (b"traceparent", fields["traceparent"].encode())]
    assert exchange.span is None and exchange.trace_id == "" and exchange.events is None


def test_a_sampled_hop_is_the_parent_of_the_next():
    policy, [exporter] = tracing()
    exchange, headers = run(policy, {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "k=v"})
    span = exchange.span
    assert (span.trace_id, span.parent_id, span.kind) == (TRACE, SPAN, "client")
    assert [h for h in headers if h[0] in (b"traceparent", b"tracestate")] == [
        (b"traceparent", f"00-{TRACE}-{span.span_id}-01".encode()), (b"tracestate", b"k=v")]  # replaced, once
    exchange.note("retry", attempt=2)
    exchange.status, exchange.ended = 503, exchange.started + 0.01
    policy.finish(exchange)
    [done] = exporter.spans
    assert done.error and [name for _, name, _ in done.events] == ["retry"]
    assert done.attributes["http.response.status_code"] == 503 and done.attributes["url.path"] == "/pay"


def test_a_new_trace_starts_when_none_came_and_the_callers_decision_is_kept():
    policy, [exporter] = tracing(percent=0.0)
    exchange, headers = run(policy, {})
    assert exchange.span is None and len(exchange.trace_id) == 32
    assert headers[-1] == (b"traceparent", f"00-{exchange.trace_id}-".encode() + headers[-1][1][36:52] + b"-00")
    sampled_by_caller, _ = run(policy, {"traceparent": f"00-{TRACE}-{SPAN}-01"}, INBOUND)
    assert sampled_by_caller.span.kind == "server"
    unsampled_by_caller, untouched = run(tracing(percent=100.0)[0], {"b3": f"{TRACE}-{SPAN}-0"})
    assert unsampled_by_caller.span is None and untouched[-1] == (b"b3", f"{TRACE}-{SPAN}-0".encode())


def test_a_malformed_traceparent_gives_way_to_the_new_trace():
    policy, _ = tracing()
    exchange, headers = run(policy, {"traceparent": "00-not-a-trace-01"})
    assert [v for n, v in headers if n == b"traceparent"] == [
        f"00-{exchange.trace_id}-{exchange.span.span_id}-01".encode()]  # one, ours


def test_sampling_takes_the_exact_share():
    policy, _ = tracing(percent=25.0)
    assert sum(run(policy, {})[0].span is not None for _ in range(100)) == 25


def test_a_config_change_replaces_the_exporter_and_off_closes_it():
    policy, [first] = tracing()
    policy.state.apply(SidecarConfig("v2"))
    assert first.closed and policy.exporter is None and not policy.on


def test_spans_encode_as_otlp():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    policy, [exporter] = tracing()
    exchange, _ = run(policy, {"traceparent": f"00-{TRACE}-{SPAN}-01"})
    exchange.note("fault.delay", delay_ms=5.0)
    exchange.status = 200
    exchange.ended = exchange.started + 0.02
    policy.finish(exchange)
    request = ExportTraceServiceRequest.FromString(encode(exporter.spans, WEB))
    [resource_spans] = request.resource_spans
    assert {a.key: a.value.string_value for a in resource_spans.resource.attributes}["meshcli.workload"] == "web-v1"
    [span] = resource_spans.scope_spans[0].spans
    assert (span.trace_id.hex(), span.parent_span_id.hex(), span.kind) == (TRACE, SPAN, 3)
    assert 19e6 < span.end_time_unix_nano - span.start_time_unix_nano < 21e6
    assert span.events[0].name == "fault.delay" and span.events[0].attributes[0].value.double_value == 5.0


def test_redaction_keeps_names_and_hides_values():
    redacted = Telemetry(redact_headers=("x-api-key",)).redacted
    assert redact({"authorization": "Bearer t", "cookie": "c", "set-cookie": "s", "x-api-key": "k", "accept": "*/*"},
                  redacted) == {"authorization": REDACTED, "cookie": REDACTED, "set-cookie": REDACTED,
                                "x-api-key": REDACTED, "accept": "*/*"}


def test_default_gateway(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway\tFlags\n"
                     "eth0\t00000000\t0100A8C0\t0003\n"
                     "eth0\t0000A8C0\t00000000\t0001\n")
    assert default_gateway(str(table)) == "192.168.0.1"
    assert default_gateway(str(tmp_path / "none")) is None


def finished_span(policy, exporter):
    exchange, _ = run(policy, {})
    exchange.status, exchange.ended = 200, exchange.started + 0.001
    policy.finish(exchange)
    return exporter.spans.pop()


def test_the_exporter_never_blocks_and_a_down_collector_costs_only_its_spans():
    import socket
    import time

    from meshproxy.otlp import Exporter

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy, [collected] = tracing()
    exporter = Exporter(TracingSettings(f"http://127.0.0.1:{port}/v1/traces"), WEB)
    started = time.perf_counter()
    for _ in range(50):
        exporter.export(finished_span(policy, collected))
    assert time.perf_counter() - started < 0.05  # appends only
    deadline = time.monotonic() + 5
    while exporter.stats()["failed"] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exporter.stats() == {"queued": 0, "sent": 0, "failed": 50, "dropped": 0}
    exporter.close()


def test_the_exporter_delivers_to_an_otlp_receiver():
    import time

    from meshcli.trace import Receiver
    from meshproxy.otlp import Exporter

    receiver = Receiver("127.0.0.1", 0, settle=0.2)
    try:
        policy, [collected] = tracing()
        exporter = Exporter(TracingSettings(f"http://127.0.0.1:{receiver.port}/v1/traces"), WEB)
        span = finished_span(policy, collected)
        exporter.export(span)
        [trace] = list(receiver.traces(count=1, seconds=5))
        exporter.close()
    finally:
        receiver.close()
    [received] = trace.spans
    assert (received.trace_id, received.span_id, received.service, received.kind) == (
        span.trace_id, span.span_id, WEB.service, "client")
    assert exporter.stats()["sent"] == 1 and time.time() - received.end < 10
