"""Resilience tests for the demo's checkout path (frontend -> orders -> payment), written
against the meshcli pytest plugin: faults and traffic rules are context managers that
return once every sidecar runs them and are undone when the block ends.

    pytest examples/                      # brings the demo up, runs, takes it down
    pytest examples/ --mesh-attach        # against a project `meshcli up` already started
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from meshcli.testing import Mesh


def get(url: str, timeout: float = 10) -> tuple[int, dict]:
    """(status, JSON body) of a GET, also for error answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def payment_hop(answer: dict) -> dict:
    """The payment call inside frontend's answer: its JSON, or the failed call's entry."""
    orders = answer["calls"][0]
    return (orders if "calls" in orders else orders["body"])["calls"][0]


def test_checkout_works_without_faults(mesh_rules: Mesh):
    status, answer = get(mesh_rules.url("frontend"))
    assert status == 200
    assert payment_hop(answer)["service"] == "payment"


def test_payment_outage_shows_the_failure_path(mesh_rules: Mesh):
    frontend = mesh_rules.url("frontend")
    with mesh_rules.fault("payment", abort=503):
        status, answer = get(frontend)
        assert status == 502  # frontend reports the failed chain...
        assert answer["calls"][0]["status"] == 502  # ...orders failed...
        assert payment_hop(answer)["status"] == 503  # ...because payment answered 503
    assert get(frontend)[0] == 200  # the fault is gone with the block


def test_slow_payment_hits_the_timeout(mesh_rules: Mesh):
    with mesh_rules.fault("payment", delay="2s"), mesh_rules.timeout("payment", "300ms"):
        status, answer = get(mesh_rules.url("frontend"))
    assert status == 502
    assert payment_hop(answer)["status"] == 504  # the mesh gave up after 300 ms


def test_all_traffic_to_v2(mesh_rules: Mesh):
    before = mesh_rules.stats("payment")
    with mesh_rules.split("payment", v2=100):
        answers = [get(mesh_rules.url("frontend")) for _ in range(20)]
    assert {payment_hop(answer)["version"] for _, answer in answers} == {"v2"}

    seen = mesh_rules.stats("payment") - before  # what payment's own sidecars received meanwhile
    assert seen.count(version="v2", status=200) == 20
    assert seen.count(version="v1") == 0


def test_orders_reports_every_failed_checkout(mesh_rules: Mesh):
    before = mesh_rules.stats("orders")
    with mesh_rules.fault("payment", abort=503, percent=100):
        for _ in range(10):
            get(mesh_rules.url("frontend"))
    seen = mesh_rules.stats("orders") - before
    assert seen.count(status=502) == 10
    assert seen.error_rate == 1.0
