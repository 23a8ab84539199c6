"""The pytest plugin's options and fixture wiring, with the engine calls stubbed.

Inner sessions run in this process (pytester), so the fake `Mesh.up`/`Mesh.attach`
installed here are what the plugin's fixtures call.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshcli import testing
from meshcli.errors import MeshError

pytest_plugins = ["pytester"]


class FakeMesh:
    """Records what the plugin does with the Mesh it gets."""

    def __init__(self, calls: list, project: str | None) -> None:
        self.calls = calls
        self.project = project or "from-compose-file"
        project = type("P", (), {"path": Path("/somewhere/compose.yaml")})()
        self.workspace = type("W", (), {"project": project})()

    def down(self) -> None:
        self.calls.append(("down", self.project))

    def reset(self) -> None:
        self.calls.append(("reset", self.project))

    @contextmanager
    def scope(self):
        self.calls.append(("scope-enter",))
        try:
            yield self
        finally:
            self.calls.append(("scope-exit",))


@pytest.fixture
def calls(monkeypatch) -> list:
    recorded: list = []

    def up(compose_file=None, mesh_file=None, project=None, timeout=120, *, build=False, keep_on_failure=False):
        recorded.append(("up", compose_file, project, timeout, keep_on_failure))
        return FakeMesh(recorded, project)

    def attach(compose_file=None, mesh_file=None, project=None, timeout=30.0):
        recorded.append(("attach", compose_file, project))
        return FakeMesh(recorded, project)

    monkeypatch.setattr(testing.Mesh, "up", staticmethod(up))
    monkeypatch.setattr(testing.Mesh, "attach", staticmethod(attach))
    return recorded


TWO_TESTS = """
    def test_one(mesh):
        assert mesh.project

    def test_two(mesh):
        assert mesh.project
"""


def test_options_and_ini_keys_are_registered(pytester):
    result = pytester.runpytest("--help")
    for option in ("--mesh-compose=PATH", "--mesh-project=NAME", "--mesh-attach", "--mesh-keep",
                   "--mesh-timeout=SECONDS", "mesh_compose (string)", "mesh_project (string)"):
        result.stdout.fnmatch_lines([f"*{option}*"])


def test_a_session_that_uses_no_fixture_imports_neither_docker_nor_meshcli_core(pytester):
    pytester.makepyfile("""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.hasplugin("meshcli")
            loaded = [m for m in ("docker", "meshcli.testing", "meshcli.lifecycle", "meshcli.status")
                      if m in sys.modules]
            assert loaded == []
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_mesh_is_up_once_per_session_under_a_unique_name_and_down_at_the_end(pytester, calls):
    pytester.makepyfile(TWO_TESTS)
    compose = pytester.path / "app" / "compose.yaml"
    result = pytester.runpytest("--mesh-compose", str(compose), "--mesh-timeout", "90")
    result.assert_outcomes(passed=2)
    assert [c[0] for c in calls] == ["up", "down"]
    _, compose_file, project, timeout, keep = calls[0]
    assert compose_file == compose and timeout == 90 and keep is False
    assert re.fullmatch(r"meshtest-[0-9a-f]{8}", project)
    assert calls[1] == ("down", project)


def test_each_session_gets_its_own_project_name(pytester, calls):
    pytester.makepyfile(TWO_TESTS)
    pytester.runpytest().assert_outcomes(passed=2)
    pytester.runpytest().assert_outcomes(passed=2)
    first, second = [c[2] for c in calls if c[0] == "up"]
    assert first != second


def test_no_test_asking_for_the_mesh_means_no_up(pytester, calls):
    pytester.makepyfile("def test_plain():\n    pass\n")
    pytester.runpytest().assert_outcomes(passed=1)
    assert calls == []


def test_attach_uses_the_running_project_and_never_takes_it_down(pytester, calls):
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest("--mesh-attach")
    result.assert_outcomes(passed=2)
    assert calls == [("attach", None, None), ("reset", "from-compose-file")]


def test_attach_with_a_project_name(pytester, calls):
    pytester.makepyfile(TWO_TESTS)
    pytester.runpytest("--mesh-attach", "--mesh-project", "ci-42").assert_outcomes(passed=2)
    assert calls[0] == ("attach", None, "ci-42")


def test_keep_leaves_the_project_running_and_says_how_to_remove_it(pytester, calls):
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest("--mesh-keep", "--mesh-project", "debugme")
    result.assert_outcomes(passed=2)
    assert ("down", "debugme") not in calls
    assert calls[0][4] is True  # a failed up is left running too
    result.stdout.fnmatch_lines(["*left project debugme running*meshcli down*-p debugme*"])


def test_ini_settings_are_relative_to_the_ini_file(pytester, calls):
    pytester.makeini("[pytest]\nmesh_compose = deploy/compose.yaml\nmesh_project = from-ini\nmesh_timeout = 45\n")
    pytester.makepyfile(TWO_TESTS)
    pytester.runpytest().assert_outcomes(passed=2)
    assert calls[0][1:4] == (pytester.path / "deploy" / "compose.yaml", "from-ini", 45)


def test_a_conftest_can_override_the_compose_file(pytester, calls):
    pytester.makeconftest("""
        import pytest
        from pathlib import Path

        @pytest.fixture(scope="session")
        def mesh_compose_file():
            return Path("/srv/shop/compose.yaml")
    """)
    pytester.makepyfile(TWO_TESTS)
    pytester.runpytest().assert_outcomes(passed=2)
    assert calls[0][1] == Path("/srv/shop/compose.yaml")


def test_mesh_rules_undoes_each_tests_changes_even_when_it_fails(pytester, calls):
    pytester.makepyfile("""
        def test_passes(mesh_rules):
            pass

        def test_fails(mesh_rules):
            assert False
    """)
    pytester.runpytest().assert_outcomes(passed=1, failed=1)
    assert [c[0] for c in calls] == ["up", "scope-enter", "scope-exit", "scope-enter", "scope-exit", "down"]


def test_a_mesh_that_does_not_come_up_fails_its_tests_with_the_reason(pytester, monkeypatch):
    def up(*args, **kwargs):
        raise MeshError("project meshtest-x is not ready after 120s: payment-v1: sidecar unhealthy",
                        hint="see `docker compose -p meshtest-x logs`")

    monkeypatch.setattr(testing.Mesh, "up", staticmethod(up))
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*meshcli: project meshtest-x is not ready after 120s*",
                                 "*hint: see `docker compose -p meshtest-x logs`*"])
    assert "Traceback" not in result.stdout.str()


def test_a_bad_ini_timeout_is_a_usage_error(pytester, calls):
    pytester.makeini("[pytest]\nmesh_timeout = soon\n")
    pytester.makepyfile(TWO_TESTS)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*ini mesh_timeout: expected whole seconds, got 'soon'*"])
    assert calls == []


def test_the_command_line_compose_file_wins_over_a_conftest_override(pytester, calls):
    pytester.makeconftest("""
        import pytest
        from pathlib import Path

        @pytest.fixture(scope="session")
        def mesh_compose_file():
            return Path("/srv/shop/compose.yaml")
    """)
    pytester.makepyfile(TWO_TESTS)
    pytester.runpytest("--mesh-compose", "ci/compose.yaml").assert_outcomes(passed=2)
    assert calls[0][1] == Path("ci/compose.yaml").absolute()
