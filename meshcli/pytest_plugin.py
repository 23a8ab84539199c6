"""pytest plugin (entry point `pytest11: meshcli`): a meshed Compose project as fixtures.

Options (also settable in the ini file, e.g. `[tool.pytest.ini_options] mesh_compose = "compose.yaml"`):

    --mesh-compose PATH   the compose file (ini `mesh_compose`, relative to the ini file)
    --mesh-project NAME   the Compose project name (ini `mesh_project`)
    --mesh-attach         use a project that is already up (`meshcli up` in an earlier CI step);
                          never start or remove it
    --mesh-keep           leave the project running after the session (to look at it)
    --mesh-timeout SECS   how long `up` may wait for the mesh to be ready (ini `mesh_timeout`)

Fixtures:

    mesh_compose_file     the compose file to use (session; override it in a conftest.py;
                          --mesh-compose on the command line still wins)
    mesh_project_name     the project name (session): --mesh-project, else with --mesh-attach
                          the compose file's own, else a unique `meshtest-<hex>` so parallel
                          CI jobs on one Docker engine do not clash
    mesh                  a meshcli.testing.Mesh (session): up once, down at the end with
                          the volumes it created (`meshcli down -v`); an attached or
                          kept project keeps them
    mesh_rules            the same Mesh (per test); every fault and rule change made during
                          the test is undone after it

The plugin costs nothing to sessions that do not use it: importing it imports neither
Docker nor meshcli's core, and fixtures only do work when a test requests them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from meshcli.testing import Mesh

DEFAULT_TIMEOUT = 120


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshcli", "meshcli: a meshed Docker Compose project for tests")
    group.addoption("--mesh-compose", metavar="PATH", default=None,
                    help="compose file the `mesh` fixture brings up (default: ini mesh_compose, else "
                         "the project in the current directory, found as `docker compose` finds it)")
    group.addoption("--mesh-project", metavar="NAME", default=None,
                    help="Compose project name (default: a unique meshtest-<hex>; with --mesh-attach, "
                         "the compose file's own)")
    group.addoption("--mesh-attach", action="store_true", default=False,
                    help="use a project that is already up; never start or remove it")
    group.addoption("--mesh-keep", action="store_true", default=False,
                    help="leave the project running after the session")
    group.addoption("--mesh-timeout", metavar="SECONDS", type=int, default=None,
                    help=f"seconds to wait for the mesh to be ready (default: ini mesh_timeout, else "
                         f"{DEFAULT_TIMEOUT})")
    parser.addini("mesh_compose", "compose file for the `mesh` fixture, relative to the ini file")
    parser.addini("mesh_project", "Compose project name for the `mesh` fixture")
    parser.addini("mesh_timeout", "seconds to wait for the mesh to be ready", default=str(DEFAULT_TIMEOUT))


def _ini_dir(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath else config.rootpath


def _option_path(config: pytest.Config) -> Path | None:
    option = config.getoption("mesh_compose")
    return Path(option).absolute() if option else None


@pytest.fixture(scope="session")
def mesh_compose_file(pytestconfig: pytest.Config) -> Path | None:
    """The compose file `mesh` uses; None lets meshcli pick as `docker compose` does (compose.yaml here).

    Override it in a conftest.py to point at your project's file; --mesh-compose on the
    command line still wins over the override (so CI can point the same tests elsewhere).
    """
    option = _option_path(pytestconfig)
    if option:
        return option
    ini = pytestconfig.getini("mesh_compose")
    return (_ini_dir(pytestconfig) / ini).absolute() if ini else None


@pytest.fixture(scope="session")
def mesh_project_name(pytestconfig: pytest.Config) -> str | None:
    """--mesh-project (or ini mesh_project); else None with --mesh-attach (the compose
    file's name, what a plain `meshcli up` used); else a unique name for this session."""
    name = pytestconfig.getoption("mesh_project") or pytestconfig.getini("mesh_project")
    if name:
        return name
    if pytestconfig.getoption("mesh_attach"):
        return None
    return f"meshtest-{uuid.uuid4().hex[:8]}"


def _timeout(config: pytest.Config) -> int:
    option = config.getoption("mesh_timeout")
    if option is not None:
        return option
    raw = config.getini("mesh_timeout")
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"ini mesh_timeout: expected whole seconds, got {raw!r}") from None


@pytest.fixture(scope="session")
def mesh(pytestconfig: pytest.Config, mesh_compose_file: Path | None,
         mesh_project_name: str | None) -> Iterator[Mesh]:
    """The meshed project, up for the whole session (or attached with --mesh-attach)."""
    from meshcli.errors import MeshError
    from meshcli.testing import Mesh

    attach = pytestconfig.getoption("mesh_attach")
    keep = pytestconfig.getoption("mesh_keep")
    compose_file = _option_path(pytestconfig) or mesh_compose_file
    try:
        if attach:
            instance = Mesh.attach(compose_file, project=mesh_project_name)
        else:
            instance = Mesh.up(compose_file, project=mesh_project_name, timeout=_timeout(pytestconfig),
                               keep_on_failure=keep)
    except MeshError as exc:
        pytest.fail(f"meshcli: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), pytrace=False)
    try:
        yield instance
    finally:
        if attach or keep:
            instance.reset()
            if keep and not attach:
                _say(pytestconfig, f"meshcli: left project {instance.project} running; remove it with "
                                   f"`meshcli down -v -f {instance.workspace.project.path} -p {instance.project}`")
        else:
            instance.down()


@pytest.fixture
def mesh_rules(mesh: Mesh) -> Iterator[Mesh]:
    """The session's Mesh; faults and rule changes the test makes are undone after it."""
    with mesh.scope():
        yield mesh


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
