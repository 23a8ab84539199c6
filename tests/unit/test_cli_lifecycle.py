"""`meshcli down` keeps the project's volumes, as `docker compose down` does, unless -v."""

from __future__ import annotations

import json

import pytest

from meshcli import docker_engine, watcher
from meshcli.cli.main import main


@pytest.fixture
def composed(tmp_path, monkeypatch) -> list[list[str]]:
    """The `docker compose` argument lists meshcli runs (nothing runs)."""
    (tmp_path / "compose.yaml").write_text("name: shop\nservices:\n  db:\n    image: app\n"
                                           "    volumes: [data:/var/lib/data]\nvolumes:\n  data: {}\n")
    calls: list[list[str]] = []
    monkeypatch.setattr(docker_engine, "compose", lambda project, files, args, **kw: calls.append(list(args)))
    monkeypatch.setattr(watcher, "stop", lambda workspace: None)
    monkeypatch.chdir(tmp_path)
    return calls


@pytest.mark.parametrize("argv, removes_volumes", [
    ([], False),
    (["--keep-volumes"], False),  # the old flag: still accepted, now what happens anyway
    (["-v"], True),
    (["--volumes"], True),
])
def test_down_removes_volumes_only_with_v(composed, capsys, argv, removes_volumes):
    assert main(["down", *argv, "--json"]) == 0
    [args] = composed
    assert args[0] == "down" and "--remove-orphans" in args
    assert ("-v" in args) is removes_volumes
    assert json.loads(capsys.readouterr().out)["volumesRemoved"] is removes_volumes


def test_down_says_the_volumes_stay(composed, capsys):
    assert main(["down"]) == 0
    assert "volumes kept: -v removes them" in capsys.readouterr().err


def test_v_and_keep_volumes_together_are_a_usage_error(composed, capsys):
    assert main(["down", "-v", "--keep-volumes"]) == 2
    assert composed == []
    assert "contradict" in capsys.readouterr().err


def test_keep_volumes_is_hidden_from_help(composed, capsys):
    assert main(["down", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--volumes" in help_text and "--keep-volumes" not in help_text
