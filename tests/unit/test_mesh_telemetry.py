"""The mesh file's `telemetry` block: redacted headers and tracing, parsed, validated and compiled."""

from __future__ import annotations

import pytest

from meshproxy import config as wire

from meshcli import sidecar_config
from meshcli.mesh_config import Telemetry, Tracing

HEADER = "apiVersion: meshcli/v1\n"
COMPOSE = "services:\n  payment-v1: {image: pay, expose: ['8080']}\n"


def test_the_docs_example_sets_telemetry(files):
    from test_mesh_config import docs_example

    assert files.mesh(docs_example()).telemetry == Telemetry(
        ("x-api-key",), Tracing("http://host.docker.internal:4318/v1/traces", 1.0))


@pytest.mark.parametrize("text, expected", [
    ("telemetry:\n  redactHeaders: [X-Api-Key, x-api-key, Authorization]\n", Telemetry(("x-api-key",))),
    ("telemetry:\n  tracing: {endpoint: 'http://c:4318/custom', sampling: 12.5}\n",
     Telemetry((), Tracing("http://c:4318/custom", 12.5))),
    ("telemetry:\n  tracing: {endpoint: 'https://c/'}\n", Telemetry((), Tracing("https://c/v1/traces", 1.0))),
    ("telemetry: {}\n", Telemetry()),
    ("", Telemetry()),
])
def test_telemetry(files, text, expected):
    assert files.mesh(HEADER + text).telemetry == expected


@pytest.mark.parametrize("text, expected", [
    ("telemetry:\n  redact: [a]\n", ("MESH0101", 3, 3, 'unknown field "redact" in telemetry')),
    ("telemetry:\n  redactHeaders: x-api-key\n", ("MESH0102", 3, 3, "must be a list of header names")),
    ("telemetry:\n  redactHeaders: ['bad header']\n", ("MESH0102", 3, 19, "is not an HTTP header name")),
    ("telemetry:\n  tracing: {sampling: 5}\n", ("MESH0103", 3, 3, 'telemetry.tracing: missing "endpoint"')),
    ("telemetry:\n  tracing: {endpoint: 'collector:4318'}\n", ("MESH0102", 3, 13, "is not an http(s) URL")),
    ("telemetry:\n  tracing: {endpoint: 'http://c', sampling: 101}\n",
     ("MESH0106", 3, 35, "telemetry.tracing.sampling is 101")),
])
def test_telemetry_problems(files, text, expected):
    code, line, column, message = expected
    [diag] = files.mesh_errors(HEADER + text)
    assert (diag.code, diag.line, diag.column) == (code, line, column)
    assert message in diag.message


def test_telemetry_reaches_the_sidecars_and_round_trips(files):
    mesh = files.resolve(COMPOSE, HEADER + "telemetry:\n  redactHeaders: [x-token]\n"
                                            "  tracing: {endpoint: 'http://c:4318', sampling: 5}\n")
    compiled = sidecar_config.compile_mesh(mesh)
    assert compiled.telemetry == wire.Telemetry(("x-token",), wire.Tracing("http://c:4318/v1/traces", 5.0))
    assert wire.parse(wire.dump(compiled)) == compiled
    assert "authorization" in compiled.telemetry.redacted and "x-token" in compiled.telemetry.redacted


def test_without_telemetry_the_compiled_config_is_unchanged(files):
    """No "telemetry" key: configs compiled before this setting keep their versions."""
    compiled = sidecar_config.compile_mesh(files.resolve(COMPOSE, HEADER))
    assert "telemetry" not in wire.dump(compiled)
