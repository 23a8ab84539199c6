"""A percentage picks an exact share of each run of decisions, in random order."""

import pytest

from meshproxy.sampling import Share, Shares


@pytest.mark.parametrize("percent, size, per_bag", [(30, 100, 30), (12.5, 1000, 125), (0.1, 1000, 1), (99, 100, 99)])
def test_every_bag_holds_exactly_the_share(percent, size, per_bag):
    share = Share(percent)
    picks = [share.pick() for _ in range(3 * size)]
    assert [sum(picks[i:i + size]) for i in range(0, 3 * size, size)] == [per_bag] * 3


def test_the_order_is_random():
    share = Share(50)
    first, second = [share.pick() for _ in range(100)], [share.pick() for _ in range(100)]
    assert first != second


def test_shares_keep_one_bag_per_setting_and_forget_them_on_clear():
    shares = Shares()
    assert sum(shares.pick("abort", 10) for _ in range(100)) == 10
    assert sum(shares.pick("delay", 50) for _ in range(100)) == 50  # its own bag
    assert [shares.pick("x", 100), shares.pick("x", 0)] == [True, False]
    shares.pick("abort", 10)
    shares.clear()
    assert sum(shares.pick("abort", 10) for _ in range(100)) == 10  # a fresh bag
