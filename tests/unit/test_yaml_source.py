"""Reading YAML is bounded: any input up to 20 MB gets its answer (a coded diagnostic with
file:line, exit 2) within 5 s and 256 MB, never a traceback: file size, nesting depth and
values as aliases expand them all have limits."""

from __future__ import annotations

import re

import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcli import mesh_config, yaml_source
from meshcli.errors import InvalidFileError

COMPOSE_HEAD = "services:\n  web:\n    image: nginx\n"
MESH_HEAD = "apiVersion: meshcli/v1\nservices:\n  web: {}\n"
# Each level aliases the one before ten times: 10**9 values once expanded.
ALIAS_BOMB = 'x-a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"x-a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
# Runs meshcli, then prints its CPU seconds and peak memory: both hold on a busy machine too,
# where the wall-clock time depends on the other processes.
MEASURE = ("import resource, sys; from meshcli.cli.main import main; code = main(sys.argv[1:]); "
           "usage = resource.getrusage(resource.RUSAGE_SELF); "
           "print('usage', usage.ru_utime + usage.ru_stime, usage.ru_maxrss, file=sys.stderr); sys.exit(code)")


def nested_block(depth: int) -> str:
    return "x-deep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth)) + "  " * (depth + 1) + "end\n"


def nested_flow(depth: int) -> str:
    return "x-deep: " + "[" * depth + "]" * depth + "\n"


def meshcli_bounded(directory: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run meshcli; (result, CPU seconds, peak memory in MB)."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=directory, capture_output=True, text=True,
                            timeout=120)
    usage = next(line.split() for line in result.stderr.splitlines() if line.startswith("usage "))
    return result, float(usage[1]), int(usage[2]) / 1024


@pytest.mark.parametrize("file, text, code, line", [
    ("compose.yaml", COMPOSE_HEAD + ALIAS_BOMB, "MESH0006", 7),
    ("mesh.yaml", MESH_HEAD + ALIAS_BOMB, "MESH0006", 7),
    ("compose.yaml", COMPOSE_HEAD + nested_block(300), "MESH0005", 67),
    ("compose.yaml", COMPOSE_HEAD + nested_flow(300), "MESH0005", 4),
    ("mesh.yaml", MESH_HEAD + nested_flow(300), "MESH0005", 4),
    ("compose.yaml", COMPOSE_HEAD + "x-big: [" + "1," * (10 * 2**20) + "]\n", "MESH0004", 4),  # 20 MB
    ("mesh.yaml", MESH_HEAD + "# padding\n" * (2 * 2**20), "MESH0004",  # 20 MB of comments: the line at 1 MiB
     (yaml_source.MAX_FILE_BYTES - len(MESH_HEAD)) // 10 + 4),
], ids=["compose-alias-bomb", "mesh-alias-bomb", "block-depth-300", "flow-depth-300", "mesh-depth-300",
        "compose-20MB", "mesh-20MB"])
@pytest.mark.parametrize("command", ["validate", "render"])
def test_hostile_input_gets_a_diagnostic_fast_and_small(tmp_path, file, text, code, line, command):
    (tmp_path / "compose.yaml").write_text(COMPOSE_HEAD)
    (tmp_path / file).write_text(text)

    result, seconds, peak_mb = meshcli_bounded(tmp_path, command)

    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / file}:{line}:" in result.stderr and f"error {code}:" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    assert seconds < 5 and peak_mb < 256, (seconds, peak_mb)
    assert not (tmp_path / ".mesh" / "compose.yaml").exists()


def test_the_largest_accepted_file_still_renders_within_the_budget(tmp_path):
    values = yaml_source.MAX_VALUES - 10
    (tmp_path / "compose.yaml").write_text(COMPOSE_HEAD + "x-big: [" + "1," * values + "]\n")
    result, seconds, peak_mb = meshcli_bounded(tmp_path, "render")
    assert result.returncode == 0, result.stderr
    assert seconds < 5 and peak_mb < 256, (seconds, peak_mb)


def load(text: str):
    return yaml_source.load(Path("x.yaml"), text)


def diagnostic(text: str):
    with pytest.raises(InvalidFileError) as info:
        load(text)
    [found] = info.value.diagnostics
    return found


def test_the_depth_limit_is_exact():
    assert load(nested_flow(yaml_source.MAX_DEPTH - 1)).data  # the mapping holding it is one level
    found = diagnostic(nested_flow(yaml_source.MAX_DEPTH))
    assert (found.code, found.line, found.column) == ("MESH0005", 1, 8 + yaml_source.MAX_DEPTH)
    assert found.message == f"values nest more than {yaml_source.MAX_DEPTH} levels deep"


def test_the_value_limit_counts_aliases_each_time_they_are_used():
    def text(uses: int) -> str:
        return "a: &a [1, 2, 3, 4]\nb: [" + ", ".join(["*a"] * uses) + "]\n"

    # The root, key a, the list and its 4 items, key b, its list: 9; then 5 per use of *a.
    most = (yaml_source.MAX_VALUES - 9) // 5
    assert load(text(most)).data["b"][-1] == [1, 2, 3, 4]
    found = diagnostic(text(most + 1))
    assert found.code == "MESH0006" and "once alias *a here is expanded" in found.message
    assert found.column == len("b: [") + len("*a, ") * most + 1  # the use that crosses the limit


def test_an_alias_inside_its_own_anchor_is_refused():
    found = diagnostic("a: &loop [1, *loop]\n")
    assert (found.code, found.line, found.column) == ("MESH0006", 1, 14)
    assert "inside the value it names" in found.message


def test_only_the_limit_is_read_from_a_huge_file(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:
        fh.truncate(2 * 1024**3)  # 2 GB (sparse): reading it all would take seconds and the memory
    started = time.monotonic()
    with pytest.raises(InvalidFileError) as info:
        yaml_source.load(path)
    assert time.monotonic() - started < 1
    assert info.value.diagnostics[0].code == "MESH0004"


def test_text_given_directly_is_bounded_too():
    found = diagnostic("a: 1\n" * (yaml_source.MAX_FILE_BYTES // 5 + 1))
    assert found.code == "MESH0004"


def test_the_largest_project_renders_within_the_budget_and_one_more_service_is_refused(tmp_path):
    services = "".join(f'  s{i}:\n    image: x\n    ports: ["{10000 + i}:8080"]\n'
                       for i in range(mesh_config.MAX_WORKLOADS))  # 7 values each: within MAX_VALUES
    (tmp_path / "compose.yaml").write_text("services:\n" + services)
    result, seconds, peak_mb = meshcli_bounded(tmp_path, "render")
    assert result.returncode == 0, result.stderr
    assert seconds < 5 and peak_mb < 256, (seconds, peak_mb)

    (tmp_path / "compose.yaml").write_text("services:\n" + services + "  one-more: {image: x}\n")
    result, _, _ = meshcli_bounded(tmp_path, "validate")
    assert result.returncode == 2
    # At the line of a service beyond the limit (in docker compose's order of the services).
    assert re.search(r"compose\.yaml:\d+:3: error MESH0207: compose\.yaml has 1001 meshed services; meshcli "
                     r"meshes at most 1000", result.stderr), result.stderr


def test_editing_the_largest_mesh_file_stays_within_the_budget(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  payment-v1: {image: x}\n  payment-v2: {image: x}\n")
    routes = "".join(f'      - name: r{i}\n        match: [{{headers: {{x-user: {{exact: "u{i}"}}}}}}]\n        to: v2\n'
                     for i in range((yaml_source.MAX_VALUES - 20) // 14))
    (tmp_path / "mesh.yaml").write_text("apiVersion: meshcli/v1\nservices:\n  payment:\n    routes:\n" + routes)
    result, seconds, peak_mb = meshcli_bounded(tmp_path, "split", "payment", "v1=90", "v2=10", "--no-wait")
    assert result.returncode == 0, result.stderr
    assert seconds < 5 and peak_mb < 256, (seconds, peak_mb)


def test_load_all_reads_every_document_with_its_own_positions(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("kind: A\n---\n---\n# only a comment\n---\nkind: B\nspec: {x: 1}\n")
    first, second = yaml_source.load_all(path)
    assert (first.data["kind"], second.data["kind"]) == ("A", "B")
    assert second.at(second.data, "spec") == (7, 1) and second.path == path


@pytest.mark.parametrize("text, code, line", [
    ("kind: VirtualService\n---\n" + ALIAS_BOMB, "MESH0006", 6),
    ("kind: VirtualService\n---\n" + nested_flow(300), "MESH0005", 3),
], ids=["alias-bomb", "depth-300"])
def test_hostile_istio_files_get_a_diagnostic_fast_and_small(tmp_path, text, code, line):
    (tmp_path / "compose.yaml").write_text(COMPOSE_HEAD)
    (tmp_path / "rules.yaml").write_text(text)
    result, seconds, peak_mb = meshcli_bounded(tmp_path, "import", "istio", "rules.yaml")
    assert result.returncode == 2, result.stderr
    assert f"rules.yaml:{line}:" in result.stderr and f"error {code}:" in result.stderr, result.stderr
    assert seconds < 5 and peak_mb < 256, (seconds, peak_mb)
    assert not (tmp_path / "mesh.yaml").exists()
