"""A light install: the host package depends on exactly what meshcli/ imports; the sidecar's
dependencies are pinned in one place (proxy/requirements.txt); the wheel ships py.typed."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# pytest is the application that loads meshcli's pytest plugin, not a dependency of meshcli.
HOST_OF_THE_PLUGIN = {"pytest"}
# The wheel's own top-level packages (meshcli, and meshproxy for the contract both sides share).
OWN_PACKAGES = {Path(package).name for package in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0]) for line in requirements
            if line.strip() and not line.lstrip().startswith("#")}


def imported_distributions(package: Path) -> set[str]:
    """The distributions whose modules the code under `package` imports (anywhere in a file)."""
    modules = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - OWN_PACKAGES - HOST_OF_THE_PLUGIN
    distributions = importlib.metadata.packages_distributions()
    # The first distribution of a module is the one that provides it (ruamel: ruamel.yaml).
    return {canonical(distributions[module][0]) for module in third_party}


def test_the_host_package_depends_on_exactly_what_the_host_code_imports():
    declared = requirement_names(PYPROJECT["project"]["dependencies"])
    assert declared == imported_distributions(REPO / "meshcli")
    # cryptography is the host's own (meshcli/ca.py issues the mesh's certificates); these are the sidecar's only.
    assert not declared & {"mitmproxy", "prometheus-client"}


def test_the_sidecars_dependencies_are_pinned_only_in_proxy_requirements():
    sidecar = (REPO / "proxy" / "requirements.txt").read_text().splitlines()
    pins = [line for line in sidecar if line.strip() and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    assert "mitmproxy" in requirement_names(pins)
    declared = PYPROJECT["project"]["dependencies"] + sum(PYPROJECT["project"]["optional-dependencies"].values(), [])
    assert not any("==" in requirement for requirement in declared)  # no second copy of a pin
    # The dev venv gets the very same pins, for the unit tests of proxy/meshproxy.
    assert "pip install -q -r proxy/requirements.txt" in (REPO / "scripts" / "install.sh").read_text()


def test_the_wheel_ships_py_typed(tmp_path):
    assert (REPO / "meshcli" / "py.typed").is_file()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "hatchling" in built.stderr and "No matching distribution" in built.stderr:
        pytest.skip("hatchling is not installable here")
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("meshcli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "meshcli/py.typed" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    required = {canonical(line.split(":", 1)[1].strip().split(";")[0].split(">")[0].split("<")[0].split("=")[0])
                for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert required == requirement_names(PYPROJECT["project"]["dependencies"])
