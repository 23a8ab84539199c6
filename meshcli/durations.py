"""Durations ("250ms", "2s", "1.5s", "1m") and byte rates ("64KB/s") as the mesh file writes them.

Both parse to the numbers sidecar.json carries: milliseconds and bytes per second. A
bad value raises ValueError whose message says what was expected (OutOfRangeError when
it is well formed but above the limit); the mesh file's validator adds
file:line:column. The JSON Schema uses DURATION_PATTERN and RATE_PATTERN, which match
exactly the values these functions accept, limits included.

Limits: a duration is at most 24h (MAX_DURATION_MS): no request, fault or ejection a
local mesh or a CI run needs lasts longer, and a bound keeps the sidecars' timers sane. A
rate is at most 1GiB/s (MAX_RATE): a bandwidth fault models a slow link, and above that
it limits nothing.
"""

from __future__ import annotations

import re
from decimal import Decimal

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
RATE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
MAX_DURATION_MS = 24 * DURATION_UNITS_MS["h"]
MAX_RATE = 1024**3  # bytes per second

DURATION_SYNTAX = r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$"
RATE_SYNTAX = r"^([0-9]+(?:\.[0-9]+)?)(B|KB|MB|GB|KiB|MiB|GiB)/s$"

DURATION_EXPECTED = "expected a number with a unit: 250ms, 2s, 1.5s, 1m"
RATE_EXPECTED = "expected bytes per second as a whole number, or a rate with a unit: 512B/s, 64KB/s, 1MB/s, 1MiB/s"


class OutOfRangeError(ValueError):
    """A well-formed duration or rate above its limit."""


def _digit_below(digit: str) -> str:
    return "0" if digit == "1" else f"[0-{int(digit) - 1}]"


def _repeat(count: int) -> str:
    return "" if not count else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


def _integer_below(digits: str) -> list[str]:
    """Regex alternatives for the whole numbers below `digits` (leading zeros are matched
    before them)."""
    options = [f"[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 2 else "[0-9]"] if len(digits) > 1 else []
    for i, digit in enumerate(digits):
        if digit > "0" and not (i == 0 and digit == "1" and len(digits) > 1):  # 0...: fewer digits, above
            options.append(digits[:i] + _digit_below(digit) + _repeat(len(digits) - i - 1))
    return options


def _fraction_at_most(fraction: str) -> str:
    """A regex for an optional `.digits` whose value is at most `.fraction`."""
    if not fraction:
        return r"(?:\.0+)?"
    options = [fraction[:i] + f"{_digit_below(digit)}[0-9]*" for i, digit in enumerate(fraction) if digit > "0"]
    options += [fraction[:i] + "0*" for i in range(1, len(fraction) + 1)]
    return r"(?:\.(?:" + "|".join(options) + "))?"


def _at_most(limit: Decimal) -> str:
    """A regex for the decimal numbers (digits, then maybe a fraction) from 0 to `limit`."""
    whole, _, fraction = format(limit, "f").partition(".")
    options = [f"(?:{'|'.join(_integer_below(whole))})" + r"(?:\.[0-9]+)?"] if whole != "0" else []
    options.append(whole + _fraction_at_most(fraction.rstrip("0")))
    return "0*(?:" + "|".join(options) + ")"


def _bounded_pattern(units: dict[str, int], limit: int, suffix: str = "") -> str:
    return "^(?:" + "|".join(f"{_at_most(Decimal(limit) / factor)}{re.escape(unit + suffix)}"
                             for unit, factor in units.items()) + ")$"


# Shared with meshcli/schema/mesh-v1.schema.json (tests/unit/test_mesh_schema.py keeps them equal).
DURATION_PATTERN = _bounded_pattern(DURATION_UNITS_MS, MAX_DURATION_MS)
RATE_PATTERN = _bounded_pattern(RATE_UNITS, MAX_RATE, "/s")


def _shown(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _whole(number: float) -> int | float:
    """1500.0 -> 1500, so equal values compile to the same JSON (and config version)."""
    return int(number) if number == int(number) else number


def parse_ms(value: object) -> int | float:
    """'1.5s' -> 1500. A bare number is refused: its unit would be a guess."""
    match = re.match(DURATION_SYNTAX, value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{_shown(value)} is not a duration; {DURATION_EXPECTED}")
    number, unit = match.groups()
    if Decimal(number) * DURATION_UNITS_MS[unit] > MAX_DURATION_MS:
        raise OutOfRangeError(f"{_shown(value)} is longer than 24h, the longest duration meshcli takes")
    return _whole(round(float(number) * DURATION_UNITS_MS[unit], 3))


def parse_rate(value: object) -> int:
    """'64KB/s' -> 64000 bytes per second; a whole number is bytes per second already."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        exact: Decimal | int = value
    else:
        match = re.match(RATE_SYNTAX, value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{_shown(value)} is not a byte rate; {RATE_EXPECTED}")
        number, unit = match.groups()
        exact = Decimal(number) * RATE_UNITS[unit]
    if exact > MAX_RATE:
        raise OutOfRangeError(f"{_shown(value)} is more than 1GiB/s, the fastest rate meshcli takes")
    return int(exact)


def format_ms(ms: int | float) -> str:
    """250 -> '250 ms', 2000 -> '2 s', 1500 -> '1.5 s': for people, not for parse_ms()."""
    return f"{_whole(ms)} ms" if ms < 1000 else f"{ms / 1000:g} s"
