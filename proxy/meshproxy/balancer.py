"""Load-balancing policies: pick one version of a service for a request.

Pure and small, so they are unit-tested without a network.
"""

from __future__ import annotations

import itertools
import random
from typing import Sequence

from meshproxy.config import Version


class RoundRobin:
    def __init__(self, versions: Sequence[Version]) -> None:
        self._cycle = itertools.cycle(versions)

    def pick(self) -> Version:
        return next(self._cycle)

    def done(self, version: Version) -> None:
        pass


class Random:
    def __init__(self, versions: Sequence[Version]) -> None:
        self._versions = list(versions)

    def pick(self) -> Version:
        return random.choice(self._versions)

    def done(self, version: Version) -> None:
        pass


class LeastRequest:
    """Fewest requests in flight; ties broken at random (like Envoy's power of two choices)."""

    def __init__(self, versions: Sequence[Version]) -> None:
        self._active = {v: 0 for v in versions}

    def pick(self) -> Version:
        if len(self._active) == 1:
            version = next(iter(self._active))
        else:
            a, b = random.sample(list(self._active), 2)
            version = a if self._active[a] <= self._active[b] else b
        self._active[version] += 1
        return version

    def done(self, version: Version) -> None:
        if self._active.get(version, 0) > 0:
            self._active[version] -= 1


POLICIES = {"round-robin": RoundRobin, "random": Random, "least-request": LeastRequest}


def make(policy: str, versions: Sequence[Version]):
    if not versions:
        raise ValueError("a service needs at least one version to balance across")
    try:
        return POLICIES[policy](versions)
    except KeyError:
        raise ValueError(f"unknown load balancer {policy!r}; expected one of {', '.join(POLICIES)}") from None
