"""`meshcli ca`, `certs` and `authz check` through main(argv) on a copy of the demo (not running)."""

from __future__ import annotations

import json

import pytest

from meshcli import demo as demo_copy, status
from meshcli.cli.main import main

POLICIES = """\
    authorization:
      - {name: no-debug, action: DENY, rules: [{path: {prefix: /debug}}]}
      - {name: only-orders, action: ALLOW, rules: [{source: orders, method: [GET, POST]}]}
"""


@pytest.fixture
def demo(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    compose_dir = demo_copy.copy(tmp_path / "demo").compose_dir
    monkeypatch.chdir(compose_dir)
    monkeypatch.setattr(status, "collect", lambda loaded: [])  # nothing runs
    mesh = compose_dir / "mesh.yaml"
    mesh.write_text(mesh.read_text() + POLICIES)  # payment is the file's last service
    return compose_dir


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv, allowed, policy", [
    (["orders", "payment", "GET", "/pay"], True, "only-orders"),
    (["orders", "payment", "DELETE", "/pay"], False, None),
    (["orders", "payment", "GET", "/debug/x"], False, "no-debug"),
    (["frontend", "payment", "GET", "/pay"], False, None),
    (["no-identity", "payment", "GET", "/pay"], False, None),
    (["orders", "payment"], False, "no-debug"),  # raw TCP: the path-only DENY rule fails closed
    (["orders", "frontend", "GET", "/"], True, None),  # no policies: allowed
])
def test_authz_check_answers_with_exit_code_and_the_deciding_policy(demo, capsys, argv, allowed, policy):
    code, answer = run_json(capsys, "authz", "check", *argv)
    assert (code, answer["ok"], answer["allowed"], answer["policy"]) == (0 if allowed else 1, True, allowed, policy)
    assert answer["call"]["port"] == 8080


def test_authz_check_refuses_an_unknown_source(demo, capsys):
    code, answer = run_json(capsys, "authz", "check", "ordres", "payment", "GET", "/")
    assert code == 2 and 'did you mean "orders"' in answer["error"]["message"]


def test_ca_init_show_and_certs_never_print_a_key(demo, capsys):
    code, created = run_json(capsys, "ca", "init")
    assert code == 0 and created["created"] is True
    code, shown = run_json(capsys, "ca", "show")
    assert shown["root"] == created["root"] and shown["previousRoot"] is None
    assert (demo / ".mesh" / "meshcli-demo" / "ca" / "ca.key").is_file()
    code, certs = run_json(capsys, "certs")
    assert code == 0 and {row["serial"] for row in certs["workloads"]} == {None}  # none issued before `up`
    main(["ca", "show"])
    assert "PRIVATE KEY" not in capsys.readouterr().out + json.dumps(created) + json.dumps(shown)
