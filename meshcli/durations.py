"""Durations ("250ms", "2s", "1.5s", "1m") and byte rates ("64KB/s") as the mesh file writes them.

Both parse to the numbers sidecar.json carries: milliseconds and bytes per second. A
bad value raises ValueError whose message says what was expected; the mesh file's
validator adds file:line:column. The JSON Schema uses the same patterns.
"""

from __future__ import annotations

import re

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
RATE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

# Shared with meshcli/schema/mesh-v1.schema.json (tests/unit/test_mesh_schema.py keeps them equal).
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"
RATE_PATTERN = r"^[0-9]+(\.[0-9]+)?(B|KB|MB|GB|KiB|MiB|GiB)/s$"

DURATION_EXPECTED = "expected a number with a unit: 250ms, 2s, 1.5s, 1m"
RATE_EXPECTED = "expected bytes per second as a whole number, or a rate with a unit: 512B/s, 64KB/s, 1MB/s, 1MiB/s"


def _shown(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _whole(number: float) -> int | float:
    """1500.0 -> 1500, so equal values compile to the same JSON (and config version)."""
    return int(number) if number == int(number) else number


def parse_ms(value: object) -> int | float:
    """'1.5s' -> 1500. A bare number is refused: its unit would be a guess."""
    match = re.match(DURATION_PATTERN, value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{_shown(value)} is not a duration; {DURATION_EXPECTED}")
    unit = match.group(2)
    return _whole(round(float(value[: -len(unit)]) * DURATION_UNITS_MS[unit], 3))


def parse_rate(value: object) -> int:
    """'64KB/s' -> 64000 bytes per second; a whole number is bytes per second already."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = re.match(RATE_PATTERN, value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{_shown(value)} is not a byte rate; {RATE_EXPECTED}")
    unit = match.group(2)
    return int(float(value[: -len(unit) - 2]) * RATE_UNITS[unit])


def format_ms(ms: int | float) -> str:
    """250 -> '250 ms', 2000 -> '2 s', 1500 -> '1.5 s': for people, not for parse_ms()."""
    return f"{_whole(ms)} ms" if ms < 1000 else f"{ms / 1000:g} s"
