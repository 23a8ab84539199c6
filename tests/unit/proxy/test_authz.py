"""Authorization's one evaluator (meshproxy/policy/authz.py), which the sidecars and
`meshcli authz check` share: DENY first, then ALLOW, default allow without ALLOW policies,
and what a raw TCP connection (no method, path or headers) matches."""

from __future__ import annotations

import pytest

from meshproxy.config import NO_IDENTITY, AuthzPolicy, AuthzRule, StringMatch
from meshproxy.policy.authz import Call, decide, denied_reply

ORDERS = "spiffe://cluster.local/ns/shop/sa/orders"
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
POLICIES = (
    AuthzPolicy("only-orders", "ALLOW", (AuthzRule(principals=(ORDERS,)),)),
    AuthzPolicy("no-debug", "DENY", (AuthzRule(paths=(StringMatch("prefix", "/debug"),)),)),
    AuthzPolicy("frontend-read", "ALLOW", (
        AuthzRule(principals=(FRONTEND,), methods=("GET",), paths=(StringMatch("suffix", ".html"),)),
        AuthzRule(principals=(FRONTEND,), headers=(("x-token", StringMatch("present")),), ports=(9090,)),
    )),
    AuthzPolicy("health", "ALLOW", (AuthzRule(principals=(NO_IDENTITY,), paths=(StringMatch("exact", "/healthz"),)),)),
)


@pytest.mark.parametrize("call, expected", [
    (Call(ORDERS, 8080, "GET", "/pay"), (True, "only-orders", 1)),
    (Call(ORDERS, 8080, "GET", "/debug/vars"), (False, "no-debug", 1)),  # DENY before ALLOW
    (Call(FRONTEND, 8080, "GET", "/index.html"), (True, "frontend-read", 1)),
    (Call(FRONTEND, 8080, "post", "/index.html"), (False, None, None)),  # methods compare upper case
    (Call(FRONTEND, 8080, "GET", "/pay"), (False, None, None)),
    (Call(FRONTEND, 9090, "POST", "/x", {"x-token": "1"}), (True, "frontend-read", 2)),
    (Call(FRONTEND, 8080, "POST", "/x", {"x-token": "1"}), (False, None, None)),  # wrong port
    (Call("", 8080, "GET", "/healthz"), (True, "health", 1)),
    (Call("", 8080, "GET", "/healthz/x"), (False, None, None)),
    (Call(ORDERS, 8080), (False, "no-debug", 1)),  # raw TCP: a DENY rule with a path fails closed
])
def test_decide(call, expected):
    decision = decide(POLICIES, call)
    assert (decision.allowed, decision.policy, decision.rule) == expected


def test_raw_tcp_matches_allow_rules_without_http_conditions_only():
    allow = tuple(p for p in POLICIES if p.action == "ALLOW")
    assert decide(allow, Call(ORDERS, 8080)).policy == "only-orders"
    assert not decide(allow, Call(FRONTEND, 9090)).allowed  # its rules need a method, a path or a header
    assert not decide(allow, Call("", 8080)).allowed


def test_without_allow_policies_what_is_not_denied_is_allowed():
    deny_only = (POLICIES[1],)
    assert decide(deny_only, Call("", 80, "GET", "/")).allowed
    assert not decide(deny_only, Call("", 80, "GET", "/debug")).allowed
    assert decide((), Call("", 80)).reason == "allowed: no policy applies"


def test_a_denial_is_a_403_naming_policy_and_rule():
    reply = denied_reply(decide(POLICIES, Call(ORDERS, 8080, "GET", "/debug")))
    assert (reply.status, reply.flag) == (403, "RBAC")
    assert reply.body == b'RBAC: access denied (denied by DENY policy "no-debug" rule 1)\n'
