"""Which requests (or connections) a percentage picks: an exact share, in random order.

A fault "on 30 % of requests" hits exactly 30 of every 100, at random positions (a
shuffled bag, refilled when empty), instead of an independent coin toss per request:
a CI test that sends 100 requests sees the share it asked for, and a long run never
drifts. Whole percentages use bags of 100, others (12.5 %) bags of 1000.
"""

from __future__ import annotations

import random


class Share:
    def __init__(self, percent: float) -> None:
        self.size = 100 if percent == int(percent) else 1000
        self.hits = max(0, min(self.size, round(percent * self.size / 100)))
        self._bag: list[bool] = []

    def pick(self) -> bool:
        if not self._bag:
            self._bag = [True] * self.hits + [False] * (self.size - self.hits)
            random.shuffle(self._bag)
        return self._bag.pop()


class Shares:
    """One Share per percentage setting (a fault's delay, abort, TCP fault...), forgotten
    when the config changes so a new setting starts a fresh bag."""

    def __init__(self) -> None:
        self._shares: dict[object, Share] = {}

    def pick(self, setting: object, percent: float) -> bool:
        if percent >= 100:
            return True
        if percent <= 0:
            return False
        share = self._shares.get(setting)
        if share is None:
            share = self._shares[setting] = Share(percent)
        return share.pick()

    def clear(self) -> None:
        self._shares.clear()
