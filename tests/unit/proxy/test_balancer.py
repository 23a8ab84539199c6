"""Load-balancing policies, without a network."""

import collections

import pytest

from meshproxy import balancer, config
from meshproxy.config import Version

V1 = Version("v1", "payment-v1")
V2 = Version("v2", "payment-v2")
V3 = Version("v3", "payment-v3")


def test_round_robin_cycles_in_order():
    lb = balancer.make("round-robin", [V1, V2, V3])

    assert [lb.pick() for _ in range(7)] == [V1, V2, V3, V1, V2, V3, V1]


def test_round_robin_done_changes_nothing():
    lb = balancer.make("round-robin", [V1, V2])
    lb.done(lb.pick())

    assert lb.pick() == V2


def test_random_only_picks_known_versions_and_spreads_evenly():
    lb = balancer.make("random", [V1, V2])

    counts = collections.Counter(lb.pick() for _ in range(2000))

    assert set(counts) == {V1, V2}
    for version in (V1, V2):
        assert 800 <= counts[version] <= 1200, counts


def test_least_request_prefers_the_less_busy_version():
    lb = balancer.make("least-request", [V1, V2])
    busy = lb.pick()
    idle = V2 if busy == V1 else V1

    # busy has one request in flight, idle none: every pick goes to idle until it catches up
    assert lb.pick() == idle
    assert lb.pick() in (V1, V2)  # now a tie


def test_least_request_done_releases():
    lb = balancer.make("least-request", [V1, V2])
    first = lb.pick()
    second = lb.pick()
    assert {first, second} == {V1, V2}

    lb.done(first)

    # first is idle again, second still busy
    assert lb.pick() == first


def test_least_request_balances_a_burst():
    lb = balancer.make("least-request", [V1, V2])

    counts = collections.Counter(lb.pick() for _ in range(100))

    assert counts == {V1: 50, V2: 50}


def test_least_request_ignores_extra_done():
    lb = balancer.make("least-request", [V1, V2])
    lb.done(V1)  # nothing in flight: must not go negative and attract every request
    lb.done(Version("v9", "gone"))
    lb.pick()
    lb.pick()

    assert lb._active == {V1: 1, V2: 1}


def test_least_request_with_one_version():
    lb = balancer.make("least-request", [V1])

    assert [lb.pick() for _ in range(3)] == [V1, V1, V1]


@pytest.mark.parametrize("policy", sorted(balancer.POLICIES))
def test_every_policy_works_with_one_version(policy):
    lb = balancer.make(policy, [V1])

    assert lb.pick() == V1


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown load balancer 'fastest'; expected one of round-robin"):
        balancer.make("fastest", [V1])


@pytest.mark.parametrize("policy", ["round-robin", "random", "least-request"])
def test_empty_versions_are_rejected(policy):
    with pytest.raises(ValueError, match="at least one version"):
        balancer.make(policy, [])


def test_config_accepts_exactly_the_implemented_policies():
    assert set(config.LOAD_BALANCERS) == set(balancer.POLICIES)


def test_smooth_weighted_gives_exact_shares_interleaved():
    lb = balancer.make_split("round-robin", [(V1, 90), (V2, 10)])

    picks = [lb.pick() for _ in range(1000)]

    assert collections.Counter(picks) == {V1: 900, V2: 100}
    assert all(picks[i:i + 10].count(V2) == 1 for i in range(0, 1000, 10))  # one v2 in every ten


def test_smooth_weighted_three_ways_and_zero_weights():
    lb = balancer.make_split("least-request", [(V1, 50), (V2, 30), (V3, 20), (Version("v4", "x"), 0)])

    assert collections.Counter(lb.pick() for _ in range(100)) == {V1: 50, V2: 30, V3: 20}


def test_smooth_weighted_skips_avoided_versions():
    lb = balancer.make_split("round-robin", [(V1, 90), (V2, 10)])

    assert {lb.pick(avoid={V1}) for _ in range(20)} == {V2}
    assert collections.Counter(lb.pick() for _ in range(100)) == {V1: 90, V2: 10}


def test_weighted_random_follows_the_weights():
    lb = balancer.make_split("random", [(V1, 80), (V2, 20)])

    counts = collections.Counter(lb.pick() for _ in range(5000))

    assert 3800 <= counts[V1] <= 4200, counts
    assert {lb.pick(avoid={V1}) for _ in range(20)} == {V2}


def test_a_split_needs_a_positive_weight():
    with pytest.raises(ValueError, match="positive weight"):
        balancer.make_split("round-robin", [(V1, 0)])


@pytest.mark.parametrize("policy", sorted(balancer.POLICIES))
def test_every_policy_skips_avoided_versions(policy):
    lb = balancer.make(policy, [V1, V2, V3])

    picks = {lb.pick(avoid={V1, V3}) for _ in range(20)}

    assert picks == {V2}


def test_round_robin_continues_after_an_avoided_version():
    lb = balancer.make("round-robin", [V1, V2, V3])

    assert [lb.pick(), lb.pick(avoid={V2}), lb.pick()] == [V1, V3, V1]
