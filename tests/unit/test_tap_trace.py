"""meshcli's side of tap (filters) and trace (the OTLP/HTTP receiver and the trace tree)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from meshcli import tap, trace
from meshcli.errors import InputError

RECORD = {"path": "/pay?x=1", "method": "GET", "status": 503, "source": "orders", "sourceService": "orders"}


@pytest.mark.parametrize("filters, shown", [
    (tap.Filters(), True),
    (tap.Filters(path="/pay"), True), (tap.Filters(path="/other"), False),
    (tap.Filters(method="get"), True), (tap.Filters(method="POST"), False),
    (tap.Filters(status="503"), True), (tap.Filters(status="5xx"), True), (tap.Filters(status="2xx"), False),
    (tap.Filters(source="orders"), True), (tap.Filters(source="frontend"), False),
])
def test_filters(filters, shown):
    assert filters.matches(RECORD) is shown


@pytest.mark.parametrize("value", ["50", "5x", "abc", "5000"])
def test_a_bad_status_filter_is_an_input_error(value):
    with pytest.raises(InputError, match="expected an HTTP status"):
        tap.check_status(value)


def otlp_json(trace_id: str, spans: list[tuple[str, str, int, int]]) -> bytes:
    """An OTLP/HTTP JSON export: (span id, parent id, start ns, end ns) of one service."""
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payment"}},
                                    {"key": "meshcli.workload", "value": {"stringValue": "payment-v1"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": trace_id, "spanId": span, "parentSpanId": parent, "name": f"span {span[-1]}", "kind": 2,
             "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
             "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}],
             "events": [{"name": "retry", "timeUnixNano": str(start + 1)}]}
            for span, parent, start, end in spans]}]}]}).encode()


def post(port: int, body: bytes, content_type: str = "application/json", path: str = "/v1/traces") -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_receiver_groups_spans_into_trees():
    # OTLP's JSON encodes ids in hex (unlike protobuf's JSON mapping), as the spec says.
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    receiver = trace.Receiver("127.0.0.1", 0, settle=0.2)
    try:
        assert post(receiver.port, otlp_json(trace_id, [("0000000000000002", "0000000000000001", 2_000, 9_000)])) == 200
        assert post(receiver.port, otlp_json(trace_id, [("0000000000000001", "00000000000000ff", 1_000, 10_000),
                                                          ("0000000000000003", "0000000000000001", 3_000, 4_000)])) == 200
        assert post(receiver.port, b"not otlp", "application/x-protobuf") == 400
        assert post(receiver.port, b"{}", path="/v1/metrics") == 404
        [received] = list(receiver.traces(count=1, seconds=5))
    finally:
        receiver.close()
    data = received.to_json()
    assert [(s["spanId"][-1], s["depth"]) for s in data["spans"]] == [("1", 0), ("2", 1), ("3", 1)]
    assert data["spans"][0]["parentSpanId"] == "00000000000000ff"  # a parent that never came: shown as a root
    assert (data["spans"][1]["workload"], data["spans"][1]["kind"], data["spans"][1]["events"][0]["name"]) == (
        "payment-v1", "server", "retry")
    assert data["durationMs"] == pytest.approx(0.009)


def test_a_busy_port_is_a_clear_error():
    first = trace.Receiver("127.0.0.1", 0)
    try:
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{first.port}"):
            trace.Receiver("127.0.0.1", first.port)
    finally:
        first.close()
