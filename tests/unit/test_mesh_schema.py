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
