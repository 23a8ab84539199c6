"""The benchmark's images: the tools image (benchmarks/tools/) and the real sidecar image.

The tools image is tagged by a hash of its build context and of the base image's id, like
meshcli/images.py tags the sidecar, so it is built once per change and kept between runs.
It is built from the same base as the sidecar (python:3.11-slim or, without a registry,
meshcli-base:bookworm); both are Debian bookworm, whose package mirror is reachable.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"
TOOLS_REPO = "meshcli-bench-tools"


def _docker_image_id(name: str) -> str | None:
    done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def base_image() -> str:
    from meshcli import images
    from meshcli.docker_engine import client

    return images.base_image(client())


def tools_tag(base: str, base_id: str) -> str:
    digest = hashlib.sha256(f"{base}\n{base_id}\n".encode())
    for path in sorted(p for p in TOOLS.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(TOOLS).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{TOOLS_REPO}:{digest.hexdigest()[:12]}"


def build_tools_image() -> str:
    """The tools image's tag, built first if missing (about 20 s: apt from Debian's mirror)."""
    base = base_image()
    base_id = _docker_image_id(base)
    if base_id is None:
        raise RuntimeError(f"base image {base} is missing: run `bash scripts/install.sh`")
    tag = tools_tag(base, base_id)
    if _docker_image_id(tag) is None:
        done = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "--label",
                               "io.meshcli.image=bench-tools", "-t", tag, str(TOOLS)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {tag} failed:\n{done.stderr.strip()[-2000:]}")
    return tag


def build_sidecar_image() -> str:
    """The real sidecar image built from this tree's proxy/ (meshcli builds it only if missing)."""
    from meshcli import images

    return images.build_sidecar_image(progress=lambda message: None)
