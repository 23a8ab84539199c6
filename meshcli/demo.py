"""The demo, on a copy: `meshcli demo [DIR]` copies the bundled demo (compose/ and
sample-apps/) into a directory of the user's, and runs it there. Nothing is ever written
inside the installed package, and the checkout's own demo files stay as they are.

A directory is only written into when it is empty, missing, or a previous copy (it holds
MARKER); a previous copy is used as it is, with the user's edits of its mesh.yaml.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshcli import resources
from meshcli.errors import InputError, MeshError

DEFAULT_DIR = "meshcli-demo"
MARKER = ".meshcli-demo"


@dataclass(frozen=True)
class DemoCopy:
    directory: Path
    reused: bool  # a previous copy, left as it was

    @property
    def compose_dir(self) -> Path:
        return self.directory / "compose"

    @property
    def compose_file(self) -> Path:
        return self.compose_dir / "compose.yaml"


def copy(target: Path) -> DemoCopy:
    """Copy the demo into `target` (atomically: a failure leaves nothing behind)."""
    target = target.absolute()
    if (target / MARKER).is_file():
        return DemoCopy(target, reused=True)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target} exists and is not an empty directory nor a meshcli demo copy",
                         hint="name another directory: `meshcli demo DIR`")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise MeshError(f"cannot create {target}: {exc.strerror or exc}") from exc
    try:
        for part in resources.DEMO_PARTS:
            shutil.copytree(resources.bundled(part), staging / part, copy_function=shutil.copyfile,
                            ignore=shutil.ignore_patterns(".mesh", "__pycache__"))
        _writable(staging)
        (staging / MARKER).write_text("a copy of the meshcli demo, made by `meshcli demo`\n", encoding="utf-8")
        os.replace(staging, target)  # an empty target directory is replaced too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DemoCopy(target, reused=False)


def _writable(root: Path) -> None:
    """The copy is the user's: writable, whatever the modes of an installed (read-only) package."""
    for directory, _, names in os.walk(root):
        os.chmod(directory, 0o755)
        for name in names:
            os.chmod(os.path.join(directory, name), 0o644)
