"""mesh_edit: edits of mesh.yaml keep the user's comments, order, quoting and indentation,
and change only the lines they must."""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path

import pytest

from meshcli import mesh_edit
from meshcli.errors import InputError
from meshcli.yaml_source import load, to_plain

PATH = Path("mesh.yaml")

# The reference example of docs/mesh-file.md, comments and all.
COMMENTED = textwrap.dedent('''\
    # yaml-language-server: $schema=./mesh.schema.json
    apiVersion: meshcli/v1
    services:
      payment:
        versions:                      # version name -> compose service
          v1: payment-v1
          v2: payment-v2
        ports: [8080]                  # informational
        loadBalancer: round-robin      # round-robin | random | least-request (between versions
                                       #   when no split is given)

        # The default route: every request that no entry of `routes` matches.
        split: {v1: 90, v2: 10}        # percent per version, sum 100
        timeout: 2s                    # whole request, retries included
        retries:
          attempts: 3                  # retries after the first try
          perTryTimeout: 500ms
          retryOn: [5xx, gateway-error, connect-failure]
          retryNonIdempotent: false    # POST, PATCH... only when true;
                                       #   a connect failure is always retried

        # Ordered rules; the first that matches decides.
        routes:
          - name: canary-testers       # optional; shown in access logs and metrics
            match:
              - headers:
                  x-canary: {exact: "true"}   # exact | prefix | regex | present: true
                path: {prefix: /api}
            to: v2

        # Connection policy for the callers' sidecars.
        circuitBreaker:
          maxConnections: 100          # requests in flight
      orders:
        versions: {v1: orders}
    ''')

# What `meshcli init` writes: a comment above every key.
STARTER = textwrap.dedent('''\
    apiVersion: meshcli/v1
    services:
      orders:
        # version name: the compose service that runs it
        versions:
          v1: orders
        # TCP ports the service listens on (informational)
        ports: [8080]
      payment:
        # version name: the compose service that runs it
        versions:
          v1: payment-v1
          v2: payment-v2
        # TCP ports the service listens on (informational)
        ports: [8080]
        # how a caller's sidecar picks a version: round-robin | random | least-request
        loadBalancer: round-robin
    ''')


def changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) of the unified diff."""
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def plain(text: str) -> dict:
    return to_plain(load(PATH, text).data)


def test_split_changes_only_its_line_and_keeps_the_comment():
    after = mesh_edit.set_split(COMMENTED, PATH, "payment", {"v1": 50, "v2": 50})

    assert changes(COMMENTED, after) == (
        ["    split: {v1: 90, v2: 10}        # percent per version, sum 100"],
        ["    split: {v1: 50, v2: 50}        # percent per version, sum 100"])


def test_promotion_removes_the_versions_not_named():
    after = mesh_edit.set_split(COMMENTED, PATH, "payment", {"v2": 100})

    assert changes(COMMENTED, after)[1] == ["    split: {v2: 100}               # percent per version, sum 100"]
    assert plain(after)["services"]["payment"]["split"] == {"v2": 100}


def test_split_replaces_to():
    text = "apiVersion: meshcli/v1\nservices:\n  payment:\n    to: v1   # pinned\n"

    after = mesh_edit.set_split(text, PATH, "payment", {"v1": 90, "v2": 10})

    assert plain(after)["services"]["payment"] == {"split": {"v1": 90, "v2": 10}}


def test_new_key_goes_in_reference_order_and_the_next_comment_stays_with_its_key():
    after = mesh_edit.set_split(STARTER, PATH, "orders", {"v1": 100})

    assert changes(STARTER, after) == ([], ["    split: {v1: 100}"])
    lines = after.splitlines()
    # after ports, before the next service's first comment
    assert lines[lines.index("    split: {v1: 100}") - 1] == "    ports: [8080]"
    assert lines[lines.index("    split: {v1: 100}") + 1] == "  payment:"


def test_new_key_after_a_block_keeps_the_following_comment_below_it():
    text = STARTER.replace("    ports: [8080]\n  payment:", "    ports: [8080]\n    # how to balance\n"
                                                                 "    loadBalancer: random\n  payment:")
    after = mesh_edit.set_timeout(text, PATH, "orders", "300ms")
    assert changes(text, after) == ([], ["    timeout: 300ms"])
    # versions gets a timeout inserted after loadBalancer, not between versions and its comment
    after = mesh_edit.set_split(STARTER, PATH, "payment", {"v1": 90, "v2": 10})
    assert after.endswith("    loadBalancer: round-robin\n    split: {v1: 90, v2: 10}\n")


def test_timeout_value_changes_and_its_comment_stays():
    after = mesh_edit.set_timeout(COMMENTED, PATH, "payment", "300ms")

    assert changes(COMMENTED, after) == (["    timeout: 2s                    # whole request, retries included"],
                                         ["    timeout: 300ms                 # whole request, retries included"])


def test_removing_a_block_keeps_the_comment_of_the_next_key():
    after = mesh_edit.remove(COMMENTED, PATH, "payment", "retries")

    removed, added = changes(COMMENTED, after)
    assert added == []
    assert removed[0] == "    retries:" and removed[-1].strip() == "#   a connect failure is always retried"
    assert "    # Ordered rules; the first that matches decides.\n    routes:" in after


def test_retries_replace_the_policy_keeping_comments_of_kept_fields():
    after = mesh_edit.set_retries(COMMENTED, PATH, "payment", {"attempts": 5, "perTryTimeout": "500ms"})

    removed, added = changes(COMMENTED, after)
    assert added == ["      attempts: 5                  # retries after the first try"]
    assert "      retryOn: [5xx, gateway-error, connect-failure]" in removed
    assert plain(after)["services"]["payment"]["retries"] == {"attempts": 5, "perTryTimeout": "500ms"}
    assert "    # Ordered rules; the first that matches decides." in after


def test_new_block_in_a_service_without_policy():
    after = mesh_edit.set_circuit_breaker(STARTER, PATH, "payment", {"maxConnections": 10, "maxPendingRequests": 1})

    assert changes(STARTER, after) == ([], ["    circuitBreaker:", "      maxConnections: 10",
                                            "      maxPendingRequests: 1"])


def test_outlier_detection_and_mirror():
    after = mesh_edit.set_outlier_detection(STARTER, PATH, "payment", {"consecutive5xxErrors": 3,
                                                                       "baseEjectionTime": "30s"})
    after = mesh_edit.set_mirror(after, PATH, "payment", "v2", 50)

    body = plain(after)["services"]["payment"]
    assert body["outlierDetection"] == {"consecutive5xxErrors": 3, "baseEjectionTime": "30s"}
    assert body["mirror"] == {"version": "v2", "percent": 50}
    assert changes(STARTER, after)[0] == []


def test_match_route_is_added_after_the_existing_routes_keeping_the_next_comment():
    after = mesh_edit.set_match_route(COMMENTED, PATH, "payment", "mobile",
                                      {"headers": {"user-agent": {"prefix": "Mobile"}}}, "v1")

    assert changes(COMMENTED, after) == ([], ["      - name: mobile", "        match:",
                                              "          - headers: {user-agent: {prefix: Mobile}}",
                                              "        to: v1"])
    assert "        to: v1\n\n    # Connection policy" in after


def test_match_route_goes_before_a_catch_all_route():
    text = textwrap.dedent('''\
        apiVersion: meshcli/v1
        services:
          payment:
            routes:
              - name: rest
                to: v1
        ''')
    after = mesh_edit.set_match_route(text, PATH, "payment", "canary", {"headers": {"x-canary": {"exact": "true"}},
                                                                         "method": "GET"}, "v2")

    routes = plain(after)["services"]["payment"]["routes"]
    assert [r["name"] for r in routes] == ["canary", "rest"]
    assert routes[0] == {"name": "canary", "match": [{"headers": {"x-canary": {"exact": "true"}}, "method": "GET"}],
                         "to": "v2"}


def test_match_route_replaces_a_route_of_the_same_name_in_place():
    after = mesh_edit.set_match_route(COMMENTED, PATH, "payment", "canary-testers", {"path": {"prefix": "/v2"}}, "v1")

    route = plain(after)["services"]["payment"]["routes"][0]
    assert route == {"name": "canary-testers", "match": [{"path": {"prefix": "/v2"}}], "to": "v1"}
    assert "      - name: canary-testers       # optional; shown in access logs and metrics" in after


def test_settings_of_a_named_route():
    after = mesh_edit.set_timeout(COMMENTED, PATH, "payment", "1s", route="canary-testers")

    assert changes(COMMENTED, after) == ([], ["        timeout: 1s"])
    assert plain(after)["services"]["payment"]["routes"][0]["timeout"] == "1s"


def test_unknown_route_is_an_input_error_naming_the_routes():
    with pytest.raises(InputError, match='no route named "canary-tester" .did you mean "canary-testers"'):
        mesh_edit.set_timeout(COMMENTED, PATH, "payment", "1s", route="canary-tester")


def test_delete_route_removes_routes_when_it_was_the_last():
    after = mesh_edit.delete_route(COMMENTED, PATH, "payment", "canary-testers")

    assert "routes" not in plain(after)["services"]["payment"]
    assert changes(COMMENTED, after)[1] == []
    assert "    # Connection policy for the callers' sidecars.\n    circuitBreaker:" in after


def test_missing_service_and_missing_file_are_created():
    after = mesh_edit.set_split(STARTER, PATH, "greeter", {"v1": 100})
    assert changes(STARTER, after) == ([], ["  greeter:", "    split: {v1: 100}"])

    created = mesh_edit.set_timeout("", PATH, "payment", "300ms")
    assert created == "apiVersion: meshcli/v1\nservices:\n  payment:\n    timeout: 300ms\n"


@pytest.mark.parametrize("text", [
    "apiVersion: meshcli/v1\nservices:\n    payment:\n        versions:\n            v1: payment-v1\n"
    "        routes:\n        - name: a\n          match:\n          - path: {prefix: /a}\n          to: v1\n",
    "apiVersion: meshcli/v1\nservices:\n  payment:\n    versions:\n      v1: payment-v1\n"
    "    routes:\n    - name: a\n      match:\n      - path: {prefix: /a}\n      to: v1\n",
])
def test_other_indentation_styles_are_kept(text):
    after = mesh_edit.set_timeout(text, PATH, "payment", "1s", route="a")

    removed, added = changes(text, after)
    assert removed == [] and len(added) == 1 and added[0].strip() == "timeout: 1s"


def test_quoting_of_untouched_values_is_kept():
    text = "apiVersion: 'meshcli/v1'\nservices:\n  payment:\n    versions: {v1: \"payment-v1\"}\n"

    after = mesh_edit.set_timeout(text, PATH, "payment", "300ms")

    assert changes(text, after) == ([], ["    timeout: 300ms"])


def test_a_match_list_written_on_one_line_keeps_its_braces():
    # ruamel.yaml would write a one-key mapping in a flow list without braces (`[headers: ...]`):
    # the same data, but every such line of the file would change.
    text = ("apiVersion: meshcli/v1\nservices:\n  payment:\n    routes:\n"
            "      - name: testers\n        match: [{headers: {x-user: {exact: \"u0\"}}}, {path: {prefix: /a}}]\n"
            "        to: v2\n      - name: beta\n        match: [{headers: {x-beta: {present: true}}}]\n")

    after = mesh_edit.set_split(text, PATH, "payment", {"v1": 90, "v2": 10})

    assert changes(text, after) == ([], ["    split: {v1: 90, v2: 10}"])

ROUTES = textwrap.dedent('''\
    apiVersion: meshcli/v1
    services:
      payment:
        # deadline of every call
        timeout: 2s
        routes:
          # testers go to v2
          - name: testers
            match:
              - headers: {x-canary: {exact: "true"}}
            to: v2   # always

          # the rest
          - name: rest
            timeout: 3s
        # breaker
        circuitBreaker:
          maxConnections: 100   # lots
    ''')


def test_removing_a_setting_takes_the_comment_right_above_it_along():
    after = mesh_edit.remove(ROUTES, PATH, "payment", "timeout")
    assert changes(ROUTES, after) == (["    # deadline of every call", "    timeout: 2s"], [])

    after = mesh_edit.remove(ROUTES, PATH, "payment", "circuitBreaker")
    assert changes(ROUTES, after) == (["    # breaker", "    circuitBreaker:", "      maxConnections: 100   # lots"],
                                      [])


@pytest.mark.parametrize("name, gone", [
    ("testers", ["      # testers go to v2", "      - name: testers", "        match:",
                 '          - headers: {x-canary: {exact: "true"}}', "        to: v2   # always"]),
    ("rest", ["      # the rest", "      - name: rest", "        timeout: 3s"]),
])
def test_deleting_a_route_takes_its_comment_along_and_keeps_the_others(name, gone):
    after = mesh_edit.delete_route(ROUTES, PATH, "payment", name)

    removed, added = changes(ROUTES, after)
    assert (removed, added) == (gone, [])
    assert [r["name"] for r in plain(after)["services"]["payment"]["routes"]] == [
        n for n in ("testers", "rest") if n != name]
