"""Coded diagnostics: one catalogue of every problem meshcli reports about a file.

Each code is stable and never reused (like istioctl analyze's IST codes). Output reads
like a compiler's: `mesh.yaml:12:5: error MESH0201: unknown service "paymnt"`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Level(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Code:
    code: str
    level: Level
    title: str


# The catalogue, ordered by code. Retired codes stay here, commented, and are never reused.
CATALOGUE: dict[str, Code] = {
    c.code: c
    for c in [
        Code("MESH0001", Level.ERROR, "file is not valid YAML"),
        Code("MESH0002", Level.ERROR, "file does not have the expected top-level shape"),
        Code("MESH0003", Level.ERROR, "file cannot be read"),
        Code("MESH0004", Level.ERROR, "file is too large"),
        Code("MESH0005", Level.ERROR, "values nest too deeply"),
        Code("MESH0006", Level.ERROR, "too many values (aliases expanded)"),
        Code("MESH0007", Level.ERROR, "docker compose rejects the project"),
        Code("MESH0008", Level.WARNING, "docker compose warns about the project"),
        Code("MESH0101", Level.ERROR, "unknown field"),
        Code("MESH0102", Level.ERROR, "value has the wrong type or form"),
        Code("MESH0103", Level.ERROR, "required field missing"),
        Code("MESH0104", Level.ERROR, "unsupported apiVersion"),
        Code("MESH0105", Level.ERROR, "invalid duration or byte rate"),
        Code("MESH0106", Level.ERROR, "number out of range"),
        Code("MESH0107", Level.ERROR, "split weights do not sum to 100"),
        Code("MESH0108", Level.ERROR, "fields that cannot be used together"),
        Code("MESH0109", Level.ERROR, "invalid regular expression"),
        Code("MESH0110", Level.ERROR, "route without match before the last route"),
        Code("MESH0111", Level.ERROR, "route name used twice"),
        Code("MESH0201", Level.ERROR, "unknown service"),
        Code("MESH0202", Level.ERROR, "unknown compose service"),
        Code("MESH0203", Level.ERROR, "workload claimed twice"),
        Code("MESH0204", Level.ERROR, "workload is not part of the mesh"),
        Code("MESH0205", Level.ERROR, "unknown version"),
        Code("MESH0206", Level.ERROR, "unknown source service"),
        Code("MESH0207", Level.ERROR, "too many meshed services"),
        Code("MESH0301", Level.WARNING, "service cannot be meshed"),
        Code("MESH0302", Level.INFO, "service opted out of the mesh"),
        Code("MESH0303", Level.WARNING, "service has more than one replica"),
        # Istio conversion (meshcli/istio_export.py, istio_import.py).
        Code("MESH0401", Level.WARNING, "mesh-file setting has no Istio equivalent: not exported"),
        Code("MESH0402", Level.INFO, "mesh-file setting exported with a difference"),
        Code("MESH0411", Level.ERROR, "not an Istio resource"),
        Code("MESH0412", Level.WARNING, "Istio resource not supported: not imported"),
        Code("MESH0413", Level.WARNING, "Istio setting not supported: not imported"),
        Code("MESH0414", Level.WARNING, "Istio host is not a service of the compose project"),
        Code("MESH0415", Level.WARNING, "Istio subset does not select a version of the service"),
        Code("MESH0416", Level.WARNING, "Istio security setting the sidecars cannot check: not imported"),
        Code("MESH0417", Level.INFO, "Istio setting imported with a difference"),
    ]
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    file: Path | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    @property
    def level(self) -> Level:
        return CATALOGUE[self.code].level

    @property
    def is_error(self) -> bool:
        return self.level is Level.ERROR

    @property
    def location(self) -> str:
        parts = [str(self.file) if self.file else "<input>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.location}: {self.level.value} {self.code}: {self.message}"

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "level": self.level.value,
            "message": self.message,
            "file": str(self.file) if self.file else None,
            "line": self.line,
            "column": self.column,
        }


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
