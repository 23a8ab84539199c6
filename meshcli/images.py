"""The sidecar image: its tag, its base image, and building it when it is missing.

The tag carries a hash of the sidecar's sources, so a changed proxy is rebuilt and an
unchanged one never is. Without a registry (no python:3.11-slim to pull) the build uses
the local Debian base image made by scripts/setup-docker.sh and a wheelhouse built on
this host, so nothing inside the build needs the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from meshcli import __version__, resources
from meshcli.docker_engine import client as docker_client
from meshcli.errors import DockerError

PUBLIC_BASE = "python:3.11-slim"
OFFLINE_BASE = "meshcli-base:bookworm"
IMAGE_REPO = "meshcli-sidecar"

Progress = Callable[[str], None]


def _source_files(proxy: Path) -> list[Path]:
    return sorted(p for p in proxy.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.parent.name != "wheels")


def sidecar_image_tag(proxy: Path | None = None) -> str:
    proxy = proxy or resources.proxy_dir()
    digest = hashlib.sha256()
    for path in _source_files(proxy):
        digest.update(path.relative_to(proxy).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{IMAGE_REPO}:{__version__}-{digest.hexdigest()[:10]}"


def has_image(client, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image(client) -> str:
    """MESHCLI_BASE_IMAGE, else the public base if present or pullable, else the offline one."""
    configured = os.environ.get("MESHCLI_BASE_IMAGE")
    if configured:
        return configured
    if not has_image(client, PUBLIC_BASE) and has_image(client, OFFLINE_BASE):
        return OFFLINE_BASE
    return PUBLIC_BASE


def _wheelhouse(requirements: Path, progress: Progress) -> Path:
    """Wheels for the image, built on this host (same Python 3.11, same platform)."""
    configured = os.environ.get("MESHCLI_WHEELHOUSE")
    if configured:
        return Path(configured)
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:10]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshcli" / f"wheels-{key}"
    if not (cache / ".complete").exists():
        progress("building a wheelhouse for the sidecar (no registry inside builds)")
        cache.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(cache), "-r", str(requirements)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise DockerError(f"could not build wheels for the sidecar image:\n{result.stderr.strip()[-2000:]}",
                              hint="set MESHCLI_WHEELHOUSE to a directory of cp311 manylinux wheels")
        (cache / ".complete").touch()
    return cache


def build_sidecar_image(progress: Progress, force: bool = False) -> str:
    """Build the sidecar image if it is missing; return its tag."""
    client = docker_client()
    tag = sidecar_image_tag()
    if not force and has_image(client, tag):
        return tag
    base = base_image(client)
    proxy = resources.proxy_dir()
    with tempfile.TemporaryDirectory(prefix="meshcli-build-") as tmp:
        context = Path(tmp)
        for path in _source_files(proxy):
            target = context / path.relative_to(proxy)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        wheels = context / "wheels"
        wheels.mkdir(exist_ok=True)
        if base != PUBLIC_BASE or os.environ.get("MESHCLI_WHEELHOUSE"):
            for wheel in _wheelhouse(proxy / "requirements.txt", progress).glob("*.whl"):
                shutil.copy2(wheel, wheels / wheel.name)
        progress(f"building {tag} from {base}")
        stream_build(client, context, tag, {"BASE_IMAGE": base}, progress)
    return tag


def stream_build(client, context: Path, tag: str, buildargs: dict, progress: Progress, label: str = "sidecar") -> None:
    """Build `context` as `tag`, its steps shown through `progress`; DockerError on failure."""
    import docker.errors

    try:
        stream = client.api.build(path=str(context), tag=tag, buildargs=buildargs, rm=True,
                                  forcerm=True, decode=True, labels={"io.meshcli.image": label})
        log: list[str] = []
        for chunk in stream:
            if "error" in chunk:
                raise DockerError(f"building {tag} failed: {chunk['error'].strip()}\n" + "".join(log[-15:]))
            line = chunk.get("stream", "")
            if line.strip():
                log.append(line)
                if line.startswith("Step "):
                    progress(line.strip())
    except docker.errors.APIError as exc:
        raise DockerError(f"building {tag} failed: {exc.explanation or exc}") from exc
