"""Where meshcli's own files are: the demo, the sample apps and the sidecar's build context.

From a source checkout they are the repository's folders; from an installed wheel they
are the copies bundled under meshcli/_bundled (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _root() -> Path:
    checkout = _PACKAGE.parent
    if (checkout / "proxy" / "Dockerfile").is_file():
        return checkout
    return _PACKAGE / "_bundled"


def proxy_dir() -> Path:
    return _root() / "proxy"


def demo_compose_file() -> Path:
    return _root() / "compose" / "compose.yaml"


def demo_mesh_file() -> Path:
    return _root() / "compose" / "mesh.yaml"
