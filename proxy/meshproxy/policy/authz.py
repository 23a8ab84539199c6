"""Authorization: whether a caller may reach the app behind this sidecar (Istio's
AuthorizationPolicy, evaluated by the server side's sidecar).

`decide()` is the one evaluator: the sidecar calls it for every inbound request and raw
TCP connection, and `meshcli authz check` calls it on the compiled config without sending
traffic, so the two can never disagree. The order is Istio's: a DENY policy that matches
denies; else, if the service has ALLOW policies, one of them must match; else the call
is allowed. A rule's caller is its verified identity only (the SPIFFE ID of its mTLS
certificate, NO_IDENTITY without one): the source header a plaintext caller sends proves
nothing. A raw TCP connection has no method, path or headers: an ALLOW rule that needs
them never matches it and a DENY rule that needs them always does (Istio's choice:
failing closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from meshproxy.config import NO_IDENTITY, AuthzAction, AuthzPolicy, AuthzRule, MeshState
from meshproxy.exchange import Exchange, LocalReply

FLAG = "RBAC"  # Envoy's response flag for a request its RBAC filter denied


@dataclass(frozen=True)
class Call:
    """What a rule can look at. `method` is None for a raw TCP connection."""

    principal: str  # the caller's SPIFFE ID, "" without one
    port: int
    method: str | None = None
    path: str | None = None  # without the query
    headers: Mapping[str, str] | None = None  # names lower case


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None = None  # the policy that decided; None: no policy applies (or none matched)
    rule: int | None = None  # its rule, from 1
    action: str | None = None  # that policy's action

    @property
    def reason(self) -> str:
        if self.policy is None:
            return "allowed: no policy applies" if self.allowed else "denied: no ALLOW policy matched"
        verb = "allowed" if self.allowed else "denied"
        return f"{verb} by {self.action} policy \"{self.policy}\" rule {self.rule}"

    def to_json(self) -> dict:
        return {"allowed": self.allowed, "decision": "ALLOW" if self.allowed else "DENY", "policy": self.policy,
                "rule": self.rule, "action": self.action, "reason": self.reason}


ALLOWED = Decision(True)
NOT_ALLOWED = Decision(False)  # ALLOW policies exist and none matched


def _rule_matches(rule: AuthzRule, call: Call, deny: bool) -> bool:
    if rule.principals and (call.principal or NO_IDENTITY) not in rule.principals:
        return False
    if rule.ports and call.port not in rule.ports:
        return False
    if call.method is None:  # raw TCP
        return deny or not rule.http_only
    if rule.methods and call.method.upper() not in rule.methods:
        return False
    if rule.paths and not any(match.matches(call.path) for match in rule.paths):
        return False
    headers = call.headers or {}
    return all(match.matches(headers.get(name)) for name, match in rule.headers)


def decide(policies: tuple[AuthzPolicy, ...], call: Call) -> Decision:
    """DENY first, then ALLOW; with no ALLOW policy whatever is not denied is allowed."""
    for policy in policies:
        if policy.action == AuthzAction.DENY:
            for number, rule in enumerate(policy.rules, 1):
                if _rule_matches(rule, call, deny=True):
                    return Decision(False, policy.name, number, policy.action)
    allow = [policy for policy in policies if policy.action == AuthzAction.ALLOW]
    for policy in allow:
        for number, rule in enumerate(policy.rules, 1):
            if _rule_matches(rule, call, deny=False):
                return Decision(True, policy.name, number, policy.action)
    return NOT_ALLOWED if allow else ALLOWED


def denied_reply(decision: Decision) -> LocalReply:
    """The 403 a denied request gets: the body names the policy and rule (Envoy's 'RBAC: access denied')."""
    return LocalReply(403, f"RBAC: access denied ({decision.reason})\n".encode(), FLAG)


class Authorization:
    """The sidecar's side: its own service's policies from the current config."""

    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.policies: tuple[AuthzPolicy, ...] = ()
        state.subscribe(self._on_config)

    def _on_config(self, config) -> None:
        service = config.services.get(self.state.identity.service)
        self.policies = service.authorization if service is not None else ()

    def check_request(self, exchange: Exchange, headers: Mapping[str, str], port: int) -> Decision:
        if not self.policies:
            return ALLOWED
        return decide(self.policies, Call(exchange.source_principal, port, exchange.method,
                                          exchange.path.split("?", 1)[0], headers))

    def check_connection(self, principal: str, port: int) -> Decision:
        return decide(self.policies, Call(principal, port)) if self.policies else ALLOWED
