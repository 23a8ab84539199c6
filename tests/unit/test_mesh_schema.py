"""The published JSON Schema of mesh.yaml and the validator agree: same valid files, same rejections."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import pytest
from test_mesh_config import COMPOSE, DOCS_COMPOSE, HEADER, RULE_PROBLEMS
from test_sidecar_config import COMPOSE as ROUND_TRIP_COMPOSE
from test_sidecar_config import REPO, ROUND_TRIP_MESHES

from meshcli import durations, mesh_config, mesh_init, yaml_source
from meshcli.cli.main import main

SCHEMA = json.loads(mesh_config.json_schema())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)

# What a JSON Schema cannot say: weights summing to 100, route order, unique route names.
VALIDATOR_ONLY = {"MESH0107", "MESH0110", "MESH0111"}


def schema_errors(path) -> list[str]:
    data = yaml_source.to_plain(yaml_source.load(path).data)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)]


def test_the_schema_is_a_valid_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_the_schema_uses_the_validators_names_and_patterns():
    defs = SCHEMA["definitions"]
    assert SCHEMA["properties"]["apiVersion"] == {"const": mesh_config.API_VERSION}
    assert tuple(defs["service"]["properties"]) == mesh_config.SERVICE_FIELDS
    assert tuple(defs["route"]["properties"]) == mesh_config.ROUTE_FIELDS
    assert tuple(defs["match"]["properties"]) == mesh_config.MATCH_FIELDS
    assert tuple(defs["retries"]["properties"]) == mesh_config.RETRIES_FIELDS
    assert tuple(defs["tcpFault"]["properties"]) == mesh_config.TCP_FAULT_ALL_FIELDS
    assert tuple(defs["service"]["properties"]["loadBalancer"]["enum"]) == mesh_config.LOAD_BALANCERS
    assert tuple(defs["retries"]["properties"]["retryOn"]["items"]["enum"]) == mesh_config.RETRY_ON
    assert tuple(defs["method"]["enum"]) == mesh_config.HTTP_METHODS
    assert tuple(defs["tcpFault"]["properties"]["kind"]["enum"]) == tuple(mesh_config.TCP_FAULT_FIELDS)
    assert tuple(defs["stringMatch"]["properties"]) == mesh_config.STRING_MATCH_KINDS
    assert tuple(defs["pathMatch"]["properties"]) == mesh_config.PATH_MATCH_KINDS
    assert defs["duration"]["pattern"] == durations.DURATION_PATTERN
    assert defs["tcpFault"]["properties"]["rate"]["oneOf"][1]["pattern"] == durations.RATE_PATTERN


@pytest.mark.parametrize("name, compose", [("demo", (REPO / "compose" / "compose.yaml").read_text()),
                                           ("docs example", DOCS_COMPOSE), ("every rule", ROUND_TRIP_COMPOSE)])
def test_valid_files_are_valid_for_both(files, name, compose):
    path = files.write("mesh.yaml", ROUND_TRIP_MESHES[name])
    assert schema_errors(path) == []
    mesh_config.resolve(mesh_config.load(path), files.compose(compose))


def test_the_starter_file_with_its_examples_uncommented_is_valid_for_the_schema(files):
    text = mesh_init.starter(files.compose(COMPOSE))
    uncommented = re.sub(r"^    # ((?:split|timeout|retries): .*?)(?:   # .*)?$", r"    \1", text, flags=re.M)
    assert schema_errors(files.write("mesh.yaml", uncommented)) == []


@pytest.mark.parametrize("text, expected, message", [case for case in RULE_PROBLEMS if case[1][0] not in VALIDATOR_ONLY],
                         ids=[case[0] for case in RULE_PROBLEMS if case[1][0] not in VALIDATOR_ONLY])
def test_invalid_files_are_rejected_by_both(files, text, expected, message):
    body = "".join(f"    {line}\n" for line in text.splitlines())
    path = files.write("mesh.yaml", HEADER + "services:\n  payment:\n" + body)
    assert files.mesh_errors(HEADER + "services:\n  payment:\n" + body)
    assert schema_errors(path), "the schema accepts what meshcli validate rejects"


@pytest.mark.parametrize("text", [
    "services:\n  payment: {}\n",  # no apiVersion
    HEADER + "services:\n  payment:\n    versions: [payment-v1]\n",
    HEADER + "services:\n  payment:\n    ports: [0]\n",
    HEADER + "services:\n  payment:\n    loadBalancer: fastest\n",
    HEADER + "extra: 1\n",
])
def test_invalid_service_shapes_are_rejected_by_both(files, text):
    path = files.write("mesh.yaml", text)
    assert files.mesh_errors(text)
    assert schema_errors(path)


def test_meshcli_schema_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == SCHEMA
    assert main(["schema", "--json"]) == 0
    assert capsys.readouterr().out == out


def test_the_schema_is_a_file_of_the_package():
    assert resources.files("meshcli").joinpath(mesh_config.SCHEMA_RESOURCE).is_file()


# --- the CLI validator and the schema agree on every edge case ------------------------------

def payment(body: str) -> str:
    return HEADER + "services:\n  payment:\n" + "".join(f"    {line}\n" for line in body.splitlines())


def tcp(fault: str) -> str:
    return payment(f"tcpFault: {{{fault}}}")


# (mesh file, valid?): empty and comment-only files, the limits of docs/mesh-file.md
# ("Limits") exactly and just beyond, zero, negative and huge numbers.
AGREEMENT = [
    ("", True),
    ("# nothing here yet\n", True),
    ("\n\n# comments\n   # and blank lines\n\n", True),
    ("---\n", True),
    (HEADER, True),
    (HEADER + "services:\n", True),
    (HEADER + "services: {}\n", True),
    ("services: {}\n", False),  # no apiVersion
    ("[]\n", False),
    ("42\n", False),
    ("just text\n", False),
    *[(payment(f"timeout: {value}"), True) for value in (
        "0s", "0ms", "1ms", "0.5ms", "2s", "1.5s", "24h", "24.0h", "0024h", "23.9999h", "1440m", "86400s",
        "86400.000s", "86400000ms", "86399999.999ms")],
    *[(payment(f"timeout: {value}"), False) for value in (
        "24.001h", "25h", "1441m", "86401s", "86400.001s", "86400001ms", "99999999999999999999h", "-1s", "1e3s",
        "2", "0", "soon", "1.s", ".5s", "1 s", "2S")],
    *[(payment(f"retries: {{attempts: {value}}}"), True) for value in ("0", "1", "3", "10", "3.0")],
    *[(payment(f"retries: {{attempts: {value}}}"), False) for value in (
        "11", "100", "100000000", "-1", "2.5", "true", '"3"', "1e400")],
    (payment("retries: {attempts: 3, perTryTimeout: 24h, backoff: 24h}"), True),
    (payment("retries: {attempts: 3, perTryTimeout: 25h}"), False),
    (payment("retries: {attempts: 3, backoff: 86401s}"), False),
    *[(payment(f"circuitBreaker: {{maxConnections: {value}}}"), True) for value in ("0", "1", "2147483647")],
    *[(payment(f"circuitBreaker: {{maxPendingRequests: {value}}}"), False) for value in (
        "2147483648", "99999999999999999999", "-1", "1.5")],
    *[(payment(f"outlierDetection: {{consecutive5xxErrors: {value}}}"), True) for value in ("0", "2147483647")],
    (payment("outlierDetection: {consecutiveGatewayErrors: 2147483648}"), False),
    (payment("outlierDetection: {baseEjectionTime: 24h, maxEjectionPercent: 100}"), True),
    (payment("outlierDetection: {baseEjectionTime: 24h1m}"), False),
    (payment("outlierDetection: {maxEjectionPercent: 101}"), False),
    *[(payment(f"mirror: {{version: v2, percent: {value}}}"), True) for value in ("0", "100", "99.5", "0.001")],
    *[(payment(f"mirror: {{version: v2, percent: {value}}}"), False) for value in (
        "100.1", "-0.5", "1e400", "101", '"50"')],
    (payment("fault: {delay: {fixed: 24h, percent: 100}}"), True),
    (payment("fault: {delay: {fixed: 25h}}"), False),
    (payment("fault: {abort: {httpStatus: 599, percent: 0}}"), True),
    (payment("fault: {abort: {httpStatus: 600}}"), False),
    (payment("split: {v1: 100, v2: 0}"), True),
    (payment("split: {v1: 101, v2: -1}"), False),
    *[(tcp(fault), True) for fault in (
        "kind: latency, latency: 24h, jitter: 24h", "kind: bandwidth, rate: 1GiB/s", "kind: bandwidth, rate: 1024MiB/s",
        "kind: bandwidth, rate: 1073741824", "kind: bandwidth, rate: 1073741824B/s", "kind: bandwidth, rate: 0",
        "kind: bandwidth, rate: 1.073741824GB/s", "kind: bandwidth, rate: 64KB/s",
        "kind: limit-data, bytes: 2147483647", "kind: slicer, bytes: 0, latency: 0ms")],
    *[(tcp(fault), False) for fault in (
        "kind: latency, latency: 25h", "kind: latency, latency: 1ms, jitter: 24.5h",
        "kind: bandwidth, rate: 1.1GiB/s", "kind: bandwidth, rate: 1073741825", "kind: bandwidth, rate: 2GB/s",
        "kind: bandwidth, rate: 1.073741825GB/s", "kind: bandwidth, rate: -1", "kind: bandwidth, rate: 1TB/s",
        "kind: limit-data, bytes: 2147483648", "kind: limit-data, bytes: -1")],
]


@pytest.mark.parametrize("text, valid", AGREEMENT, ids=[f"{i}-{'valid' if v else 'invalid'}"
                                                         for i, (_, v) in enumerate(AGREEMENT)])
def test_the_cli_validator_and_the_json_schema_agree(files, capsys, text, valid):
    files.write("compose.yaml", COMPOSE)
    path = files.root / "mesh.yaml"
    path.write_text(text)

    cli = main(["validate", "-f", str(files.root / "compose.yaml"), "--mesh", str(path)])
    cli_output = capsys.readouterr().err
    schema = schema_errors(path)

    assert (cli == 0) is valid, cli_output
    assert (schema == []) is valid, schema
    if not valid:
        assert cli == 2 and "Traceback" not in cli_output


@pytest.mark.parametrize("text", [payment("retries: {attempts: .nan}"), payment("mirror: {version: v2, percent: .nan}")])
def test_nan_is_no_number_for_the_validator(files, text):
    # JSON has no NaN, so a JSON Schema never sees one: only YAML can write it.
    assert files.mesh_errors(text)[0].code == "MESH0102"
