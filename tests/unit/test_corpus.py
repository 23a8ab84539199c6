"""Every compose file of the awesome-compose corpus renders to a file `docker compose` accepts,
and means the same thing: the apps keep their build, volumes, environment and so on, the pods
get their ports and networks, and the project keeps its name, volumes and networks.

The corpus lives outside the repository (see its SOURCE.txt): build contexts and bind-mounted
files are not there, so only `docker compose config` runs (it needs none of them); nothing is
built or started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshcli import workspace
from meshcli.compose_rewrite import NAMESPACE_KEYS, pod_name

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "awesome-compose"
FILES = sorted(p.name for p in CORPUS.glob("*") if p.suffix in (".yaml", ".yml")) if CORPUS.is_dir() else []
IMAGE = "meshcli-sidecar:test"

# Files whose ORIGINAL is rejected by `docker compose config`, and why. Their test is an xfail.
# None today; plex needs a variable its README asks the user to set (see VARIABLES).
SKIPPED: dict[str, str] = {}

# Variables a corpus file requires the user to set; without them compose rejects the original.
VARIABLES = {
    "PLEX_MEDIA_PATH": "/srv/media",  # plex: `${PLEX_MEDIA_PATH}:/media/`
}

# Keys that the rewrite moves to the pod or extends; every other key of a service must survive.
MOVED = set(NAMESPACE_KEYS) | {"depends_on", "sysctls"}

if not FILES:
    pytest.skip(f"the awesome-compose corpus is not at {CORPUS}", allow_module_level=True)


def compose_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not compose_available(), reason="`docker compose version` is not available")


def compose_config(path: Path) -> subprocess.CompletedProcess:
    """`docker compose config` as JSON, with paths resolved, unaffected by the caller's COMPOSE_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")} | VARIABLES
    return subprocess.run(["docker", "compose", "-f", str(path), "config", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each corpus file copied to its own directory as compose.yaml, and its config (run in parallel)."""
    copies = {}
    for name in FILES:
        copy = tmp_path_factory.mktemp(name.split("__")[0]) / "compose.yaml"
        shutil.copyfile(CORPUS / name, copy)
        copies[name] = copy
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(copies, pool.map(compose_config, copies.values())))
    return {name: (copies[name], results[name]) for name in FILES}


def kept(service: dict) -> dict:
    return {key: value for key, value in service.items() if key not in MOVED}


def assert_same_meaning(original: dict, rendered: dict, meshed: set[str]) -> None:
    assert rendered["name"] == original["name"]
    for section in ("volumes", "networks", "secrets", "configs"):
        assert rendered.get(section) == original.get(section), section
    services = rendered["services"]
    for name, service in original["services"].items():
        assert kept(services[name]) == kept(service), name
        if name in meshed:
            pod = services[pod_name(name)]
            assert services[name]["network_mode"] == f"service:{pod_name(name)}"
            assert pod.get("ports") == service.get("ports"), name
            assert set(pod.get("networks", {})) == set(service.get("networks", {})), name
            assert name in pod["networks"][next(iter(pod["networks"]))]["aliases"]
        else:
            assert services[name] == service, name


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_renders_to_an_equivalent_valid_compose_file(name, originals):
    copy, original = originals[name]
    loaded = workspace.load(workspace.locate(copy))
    rendered_path = workspace.render(loaded, IMAGE)
    assert rendered_path == copy.parent / ".mesh" / "compose.yaml"

    if original.returncode != 0:
        assert name in SKIPPED, f"docker compose rejects the original; list it in SKIPPED with why:\n{original.stderr}"
        pytest.xfail(f"{name}: {SKIPPED[name]}")
    assert name not in SKIPPED, "docker compose accepts the original now: remove it from SKIPPED"

    rendered = compose_config(rendered_path)
    assert rendered.returncode == 0, rendered.stderr
    assert_same_meaning(json.loads(original.stdout), json.loads(rendered.stdout), set(loaded.mesh.workloads))
    assert set(loaded.mesh.workloads) | set(loaded.project.skipped) == set(loaded.project.services)
