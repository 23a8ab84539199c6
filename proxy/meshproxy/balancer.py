"""Load-balancing policies: pick one version of a service for a request.

Every policy picks among its candidates minus `avoid` (versions ejected by outlier
detection, or already tried by this request's retries); the caller never passes an
`avoid` that covers every candidate. Pure and small, so they are unit-tested without
a network.
"""

from __future__ import annotations

import random
from typing import Collection, Sequence

from meshproxy.config import Version

NOTHING: frozenset = frozenset()


class RoundRobin:
    def __init__(self, versions: Sequence[Version]) -> None:
        self.versions = tuple(versions)
        self._next = 0

    def pick(self, avoid: Collection[Version] = NOTHING) -> Version:
        count = len(self.versions)
        for step in range(count):
            version = self.versions[(self._next + step) % count]
            if version not in avoid:
                self._next = (self._next + step + 1) % count
                return version
        raise ValueError("every version is avoided")

    def done(self, version: Version) -> None:
        pass


class Random:
    def __init__(self, versions: Sequence[Version]) -> None:
        self.versions = tuple(versions)

    def pick(self, avoid: Collection[Version] = NOTHING) -> Version:
        if not avoid:
            return random.choice(self.versions)
        return random.choice([v for v in self.versions if v not in avoid])

    def done(self, version: Version) -> None:
        pass


class LeastRequest:
    """Fewest requests in flight; ties broken at random (like Envoy's power of two choices)."""

    def __init__(self, versions: Sequence[Version]) -> None:
        self.versions = tuple(versions)
        self._active = {v: 0 for v in versions}

    def pick(self, avoid: Collection[Version] = NOTHING) -> Version:
        allowed = self.versions if not avoid else [v for v in self.versions if v not in avoid]
        if len(allowed) == 1:
            version = allowed[0]
        else:
            a, b = random.sample(allowed, 2)
            version = a if self._active[a] <= self._active[b] else b
        self._active[version] += 1
        return version

    def done(self, version: Version) -> None:
        if self._active.get(version, 0) > 0:
            self._active[version] -= 1


class SmoothWeighted:
    """nginx's smooth weighted round robin: over any run of sum(weights) picks every
    version gets exactly its weight, interleaved (90/10 gives one v2 in every ten)."""

    def __init__(self, weighted: Sequence[tuple[Version, int]]) -> None:
        self._peers = [[version, weight, 0] for version, weight in weighted if weight > 0]
        self.versions = tuple(peer[0] for peer in self._peers)

    def pick(self, avoid: Collection[Version] = NOTHING) -> Version:
        best = None
        total = 0
        for peer in self._peers:
            if peer[0] in avoid:
                continue
            peer[2] += peer[1]
            total += peer[1]
            if best is None or peer[2] > best[2]:
                best = peer
        if best is None:
            raise ValueError("every version is avoided")
        best[2] -= total
        return best[0]

    def done(self, version: Version) -> None:
        pass


class WeightedRandom:
    def __init__(self, weighted: Sequence[tuple[Version, int]]) -> None:
        pairs = [(version, weight) for version, weight in weighted if weight > 0]
        self.versions = tuple(version for version, _ in pairs)
        self._weights = tuple(weight for _, weight in pairs)

    def pick(self, avoid: Collection[Version] = NOTHING) -> Version:
        if not avoid:
            return random.choices(self.versions, self._weights)[0]
        allowed = [(v, w) for v, w in zip(self.versions, self._weights) if v not in avoid]
        return random.choices([v for v, _ in allowed], [w for _, w in allowed])[0]

    def done(self, version: Version) -> None:
        pass


POLICIES = {"round-robin": RoundRobin, "random": Random, "least-request": LeastRequest}


def make(policy: str, versions: Sequence[Version]):
    """The service's policy across all its versions (a route without a split)."""
    if not versions:
        raise ValueError("a service needs at least one version to balance across")
    try:
        return POLICIES[policy](versions)
    except KeyError:
        raise ValueError(f"unknown load balancer {policy!r}; expected one of {', '.join(POLICIES)}") from None


def make_split(policy: str, weighted: Sequence[tuple[Version, int]]):
    """A route's split: exact shares, unless the service asked for random."""
    if not any(weight > 0 for _, weight in weighted):
        raise ValueError("a split needs a version with a positive weight")
    return WeightedRandom(weighted) if policy == "random" else SmoothWeighted(weighted)
