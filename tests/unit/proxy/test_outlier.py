"""Outlier detection: consecutive errors eject a version for a while, within limits."""

import json
import logging
import time

from meshproxy import config
from meshproxy.config import Identity, MeshState
from meshproxy.outlier import CONNECT_FAILURE, Outliers

HOSTS = ("payment-v1", "payment-v2", "payment-v3", "payment-v4")


def outliers(detection: dict | None, versions: int = 2) -> tuple[MeshState, Outliers]:
    service = {"versions": [{"name": f"v{i + 1}", "host": HOSTS[i]} for i in range(versions)]}
    if detection is not None:
        service["outlierDetection"] = detection
    state = MeshState(Identity("shop", "web-v1", "web", "v1"))
    state.apply(config.parse(json.dumps({"schema": 2, "version": "o1", "services": {"payment": service}})))
    return state, Outliers(state)


def test_consecutive_5xx_eject(caplog):
    _, registry = outliers({"consecutive5xxErrors": 3, "baseEjectionTimeMs": 60000})
    health = registry.services["payment"]

    with caplog.at_level(logging.WARNING, "meshproxy.outlier"):
        health.record("payment-v1", 500)
        health.record("payment-v1", 500)
        assert health.ejected_hosts() == frozenset()
        health.record("payment-v1", 500)

    assert health.ejected_hosts() == {"payment-v1"}
    assert [r.getMessage() for r in caplog.records] == [
        "outlier: ejected payment v1 (payment-v1) for 60.0s after 3 consecutive 5xx"]


def test_a_success_resets_the_count():
    _, registry = outliers({"consecutive5xxErrors": 2})
    health = registry.services["payment"]

    for status in (500, 200, 500, 404, 500):
        health.record("payment-v1", status)

    assert health.ejected_hosts() == frozenset()


def test_gateway_errors_have_their_own_threshold():
    _, registry = outliers({"consecutive5xxErrors": 10, "consecutiveGatewayErrors": 2})
    health = registry.services["payment"]

    health.record("payment-v1", 502)
    health.record("payment-v1", 500)  # a 5xx, but not a gateway error: that count starts over
    health.record("payment-v1", 504)
    assert health.ejected_hosts() == frozenset()
    health.record("payment-v1", CONNECT_FAILURE)

    assert health.ejected_hosts() == {"payment-v1"}


def test_max_ejection_percent_always_allows_one():
    _, registry = outliers({"consecutive5xxErrors": 1, "maxEjectionPercent": 10}, versions=4)
    health = registry.services["payment"]

    for host in HOSTS:
        health.record(host, 503)

    assert health.ejected_hosts() == {"payment-v1"}  # floor(4 * 10%) = 0, but Envoy allows one


def test_max_ejection_percent_of_half():
    _, registry = outliers({"consecutive5xxErrors": 1, "maxEjectionPercent": 50}, versions=4)
    health = registry.services["payment"]

    for host in HOSTS:
        health.record(host, 503)

    assert health.ejected_hosts() == {"payment-v1", "payment-v2"}


def test_an_ejection_ends_by_time_and_the_next_one_lasts_longer(caplog):
    _, registry = outliers({"consecutive5xxErrors": 1, "baseEjectionTimeMs": 100})
    health = registry.services["payment"]

    health.record("payment-v1", 503)
    assert health.stats()["ejected"][0]["ejections"] == 1
    time.sleep(0.12)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "meshproxy.outlier"):
        assert health.ejected_hosts() == frozenset()
    assert caplog.records[0].getMessage() == "outlier: payment v1 (payment-v1) is back after its ejection"

    health.record("payment-v1", 503)
    [entry] = health.stats()["ejected"]
    assert entry["ejections"] == 2
    assert 0.15 < entry["remaining_s"] <= 0.2  # twice the base time
    time.sleep(0.12)
    assert health.ejected_hosts() == {"payment-v1"}


def test_without_outlier_detection_nothing_is_ejected():
    _, registry = outliers(None)
    health = registry.services["payment"]

    for _ in range(100):
        health.record("payment-v1", 503)

    assert health.ejected_hosts() == frozenset()
    assert registry.stats() == {}


def test_state_survives_a_reload_and_removed_hosts_are_forgotten():
    state, registry = outliers({"consecutive5xxErrors": 1, "baseEjectionTimeMs": 60000})
    registry.services["payment"].record("payment-v1", 503)
    before = registry.services["payment"]

    state.apply(config.parse(json.dumps({"schema": 2, "version": "o2", "services": {"payment": {
        "versions": [{"name": "v1", "host": "payment-v1"}, {"name": "v3", "host": "payment-v3"}],
        "outlierDetection": {"consecutive5xxErrors": 1}}}})))

    assert registry.services["payment"] is before
    assert before.ejected_hosts() == {"payment-v1"}
    state.apply(config.parse(json.dumps({"schema": 2, "version": "o3", "services": {"payment": {
        "versions": [{"name": "v3", "host": "payment-v3"}], "outlierDetection": {"consecutive5xxErrors": 1}}}})))
    assert before.ejected_hosts() == frozenset()


def test_stats_per_service():
    _, registry = outliers({"consecutive5xxErrors": 1, "baseEjectionTimeMs": 60000})
    registry.services["payment"].record("payment-v2", 503)

    [entry] = registry.stats()["payment"]["ejected"]

    assert (entry["version"], entry["host"], entry["ejections"]) == ("v2", "payment-v2", 1)
    assert 59 < entry["remaining_s"] <= 60
