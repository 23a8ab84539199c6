"""Points the meshcli pytest plugin at the compose file these tests exercise.

In your project, return your own compose file here (or set `mesh_compose` in pytest's
ini file, or pass `--mesh-compose PATH`). This one is meshcli's bundled demo:
frontend -> orders -> payment (v1 and v2).
"""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mesh_compose_file() -> Path:
    return Path(__file__).resolve().parent.parent / "compose" / "compose.yaml"
