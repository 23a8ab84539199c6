"""durations: the limits (24h, 1GiB/s), and the JSON Schema's patterns accept exactly what
parse_ms() and parse_rate() accept."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest

from meshcli import durations

CASES = [(durations.DURATION_UNITS_MS, durations.MAX_DURATION_MS, "", durations.DURATION_PATTERN,
          durations.parse_ms),
         (durations.RATE_UNITS, durations.MAX_RATE, "/s", durations.RATE_PATTERN, durations.parse_rate)]


def accepted(parse, value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def samples(limit: Decimal, rng: random.Random):
    """Numbers around and below `limit`, with 0 to 12 decimals, sometimes with leading zeros."""
    for _ in range(3000):
        number = rng.choice([limit, limit * Decimal(rng.random() * 2), Decimal(rng.randint(0, int(limit) + 2)),
                             limit + Decimal(rng.choice([1, -1])).scaleb(-rng.randint(0, 12))])
        places = rng.choice([0, 1, 3, 6, 12])
        text = format(number.quantize(Decimal(1).scaleb(-places)) if places else number.to_integral_value(), "f")
        if not text.startswith("-"):
            yield ("00" if rng.random() < 0.1 else "") + text


@pytest.mark.parametrize("units, limit, suffix, pattern, parse", CASES, ids=["durations", "rates"])
def test_the_schema_pattern_accepts_exactly_what_the_parser_accepts(units, limit, suffix, pattern, parse):
    rng = random.Random(11)
    for unit, factor in units.items():
        for number in samples(Decimal(limit) / factor, rng):
            value = number + unit + suffix
            within = Decimal(number) * factor <= limit
            assert bool(re.match(pattern, value)) is within, value
            assert accepted(parse, value) is within, value


@pytest.mark.parametrize("value, message", [
    ("25h", '"25h" is longer than 24h, the longest duration meshcli takes'),
    ("86400001ms", "longer than 24h"),
    ("99999999999999999999h", "longer than 24h"),
    ("24.0000000000000001h", "longer than 24h"),  # exact: a float would round it to 24h
])
def test_durations_above_24h_are_out_of_range(value, message):
    with pytest.raises(durations.OutOfRangeError, match=message):
        durations.parse_ms(value)


def test_the_limits_themselves_are_accepted():
    assert durations.parse_ms("24h") == durations.parse_ms("86400000ms") == 86_400_000
    assert durations.parse_rate("1GiB/s") == durations.parse_rate(1024**3) == durations.MAX_RATE
    with pytest.raises(durations.OutOfRangeError, match="more than 1GiB/s"):
        durations.parse_rate(1024**3 + 1)
