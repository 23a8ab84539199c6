"""Where meshcli's own files are: the demo, the sample apps and the sidecar's build context.

From a source checkout they are the repository's folders; from an installed wheel they
are the copies bundled under meshcli/_bundled (see pyproject.toml). They are only ever
read: `meshcli demo` runs the demo on a copy (meshcli/demo.py).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
DEMO_PARTS = ("compose", "sample-apps")  # the demo's compose file builds ../sample-apps


def _root() -> Path:
    checkout = _PACKAGE.parent
    if (checkout / "proxy" / "Dockerfile").is_file():
        return checkout
    return _PACKAGE / "_bundled"


def proxy_dir() -> Path:
    return _root() / "proxy"


def bundled(part: str) -> Path:
    """One of DEMO_PARTS, as bundled."""
    return _root() / part
