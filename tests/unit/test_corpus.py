"""Every compose file of the awesome-compose corpus renders to a file `docker compose` accepts,
and means the same thing: the apps keep their build, volumes, environment and so on, the pods
get their ports and networks, and the project keeps its name, volumes and networks.

The corpus lives outside the repository (see its SOURCE.txt): build contexts and bind-mounted
files are not there, so only `docker compose config` runs (it needs none of them); nothing is
built or started.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshcli import workspace
from meshcli.compose_rewrite import LABEL_PREFIX, NAMESPACE_KEYS, POD_SUFFIX, pod_name

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

if not FILES:
    pytest.skip(f"the awesome-compose corpus is not at {CORPUS}", allow_module_level=True)


def compose_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not compose_available(), reason="`docker compose version` is not available")


def compose_config(path: Path, profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`docker compose config` as JSON, with paths resolved, unaffected by the caller's COMPOSE_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")} | VARIABLES
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(["docker", "compose", "-f", str(path), *flags, "config", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)


def without_the_mesh(rendered: dict) -> dict:
    """The rendered project's config minus the mesh's own services, with what the rewrite moved
    from each app to its pod (namespace keys, net.* sysctls, aliases) put back, and the
    app's `network_mode`/`depends_on` on the pod and sidecar removed."""
    data = copy.deepcopy(rendered)
    services = data["services"]
    mesh = {name for name, s in services.items() if (s.get("labels") or {}).get(LABEL_PREFIX + "role")}
    for name, service in services.items():
        if name in mesh:
            continue
        pod = services.get(pod_name(name))
        if pod is not None and service.get("network_mode") == f"service:{pod_name(name)}":
            del service["network_mode"]
            for key in NAMESPACE_KEYS:
                if key in pod:
                    service[key] = pod[key]
            if "sysctls" in pod:
                service["sysctls"] = {**pod["sysctls"], **service.get("sysctls", {})}
            added = {name, pod["labels"][LABEL_PREFIX + "service"]}
            for network, settings in (service.get("networks") or {}).items():
                aliases = [a for a in (settings or {}).get("aliases", []) if a not in added]
                rest = {k: v for k, v in (settings or {}).items() if k != "aliases"}
                service["networks"][network] = {**rest, **({"aliases": aliases} if aliases else {})} or None
        mode = service.get("network_mode", "")
        if mode.startswith("service:") and mode.endswith(POD_SUFFIX) and mode[8:] in mesh:
            service["network_mode"] = mode[:-len(POD_SUFFIX)]
        depends = {k: v for k, v in (service.get("depends_on") or {}).items() if k not in mesh}
        if depends:
            service["depends_on"] = depends
        else:
            service.pop("depends_on", None)
        if service.get("links"):
            service["links"] = [link.replace(POD_SUFFIX + ":", ":", 1) for link in service["links"]]
    data["services"] = {name: s for name, s in services.items() if name not in mesh}
    return data


def assert_same_project(original: dict, rendered: dict) -> None:
    """Same name, services (with their profiles, environment, build contexts...), volumes,
    networks, secrets and configs."""
    assert without_the_mesh(rendered) == original


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


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_renders_to_an_equivalent_valid_compose_file(name, originals, monkeypatch):
    copy_path, original = originals[name]
    if original.returncode != 0:
        assert name in SKIPPED, f"docker compose rejects the original; list it in SKIPPED with why:\n{original.stderr}"
        pytest.xfail(f"{name}: {SKIPPED[name]}")
    assert name not in SKIPPED, "docker compose accepts the original now: remove it from SKIPPED"
    for key in [k for k in os.environ if k.startswith("COMPOSE_")]:
        monkeypatch.delenv(key)
    for key, value in VARIABLES.items():
        monkeypatch.setenv(key, value)

    loaded = workspace.load(workspace.locate(copy_path))
    rendered_path = workspace.write_rendered(loaded, IMAGE)
    assert rendered_path == copy_path.parent / ".mesh" / loaded.project.name / "compose.yaml"

    rendered = compose_config(rendered_path)
    assert rendered.returncode == 0, rendered.stderr
    assert_same_project(json.loads(original.stdout), json.loads(rendered.stdout))
    assert set(loaded.mesh.workloads) | set(loaded.project.skipped) == set(loaded.project.services)
    for name in loaded.mesh.workloads:
        pod = json.loads(rendered.stdout)["services"][pod_name(name)]
        assert name in pod["networks"][next(iter(pod["networks"]))]["aliases"]
