"""The policies in their order for one request, whatever HTTP version carries it.

http1.py and http2.py parse and frame; everything a request meets between its headers
and its answer is here, once: routing (outbound: route and version; inbound: the
caller's identity and authorization) and tracing (the trace headers), then for mesh
services faults, mirroring and resilience, and in the end telemetry, the access log, the
span and the tap. Requests leaving the mesh, or reaching the app behind this sidecar, are
sent once, as they came. Tracing off and nobody tapping cost one attribute test each.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Mapping

from meshproxy.config import SecurityPolicy, Version
from meshproxy.exchange import INBOUND, Exchange, LocalReply, Peer, connect_failure, reset_before_headers
from meshproxy.policy.access_log import AccessLog
from meshproxy.policy.authz import Authorization, denied_reply
from meshproxy.policy.faults import HttpFaults
from meshproxy.policy.mirroring import Mirroring, SendCopy
from meshproxy.policy.resilience import Attempt, Forwarded, Resilience
from meshproxy.policy.routing import Router
from meshproxy.policy.tap import Tap
from meshproxy.policy.telemetry import Telemetry
from meshproxy.policy.tracing import Tracing
from meshproxy.upstream import ConnectFailure, Reset


class Pipeline:
    def __init__(self, router: Router, faults: HttpFaults, mirroring: Mirroring, resilience: Resilience,
                 telemetry: Telemetry, access_log: AccessLog, tracing: Tracing, tap: Tap,
                 authz: Authorization | None = None, secures: Callable[[str], bool] | None = None) -> None:
        self.router, self.faults, self.mirroring = router, faults, mirroring
        self.resilience, self.telemetry, self.access_log = resilience, telemetry, access_log
        self.tracing, self.tap, self.authz = tracing, tap, authz
        self.secures = secures  # (a version's host) -> whether calls to it go over mesh mTLS

    @property
    def reads_inbound_headers(self) -> bool:
        """Whether a request to the app needs its header fields (route() takes {} otherwise):
        for tracing, a tap, or authorization policies (they may match headers)."""
        return (self.tracing.settings is not None or self.tap.active
                or (self.authz is not None and bool(self.authz.policies)))

    def route(self, exchange: Exchange, fields: Mapping[str, str], headers: list[tuple[bytes, bytes]],
              source: str | None, peer: Peer | None = None) -> Version | None:
        """At the request headers: the version to send to, or None (where the app sent it).
        `fields` are the headers with lower-case names, `headers` the list to forward (the
        policies add to it); inbound, `source` is the caller and `peer` what the connection
        proves about it."""
        if exchange.direction == INBOUND:
            self.router.inbound(exchange, source, peer.principal if peer is not None else "")
            version = None
            if peer is not None:
                exchange.source_principal, exchange.security_policy = peer.principal, peer.security_policy
                if self.authz is not None and self.authz.policies:
                    decision = self.authz.check_request(exchange, fields, peer.port)
                    if not decision.allowed:
                        exchange.denied = denied_reply(decision)
                        exchange.error = decision.reason
                        self.telemetry.authz_denied(decision)
        else:
            version = self.router.outbound(exchange, fields, lambda n, v: headers.append((n.encode(), v.encode())))
            if version is not None and self.secures is not None and self.secures(version.host):
                exchange.security_policy = SecurityPolicy.MUTUAL_TLS.value
        if self.tracing.settings is not None:
            self.tracing.start(exchange, fields, headers)
        if self.tap.active:
            exchange.headers = fields
        return version

    async def forward(self, exchange: Exchange, replayable: bool | Callable[[], bool], attempt: Attempt,
                      send_direct: Callable[[], Awaitable], send_copy: SendCopy) -> Forwarded | LocalReply | str:
        """The answer (Forwarded), a fault's reply (LocalReply), or policy.faults.RESET.
        `replayable` says whether the request body is whole and kept (then it can be
        mirrored and retried); a callable is asked each time, as a streamed body may end."""
        if exchange.denied is not None:
            return exchange.denied
        if exchange.service is not None:
            verdict = await self.faults.apply(exchange)
            if verdict is not None:
                return verdict
            whole = replayable() if callable(replayable) else replayable
            if whole and (mirror := self.mirroring.wants_copy(exchange)) is not None:
                self.mirroring.copy(exchange, mirror, send_copy)
            return await self.resilience.forward(exchange, attempt, replayable)
        exchange.attempts = 1
        try:
            return Forwarded(await send_direct(), None)
        except ConnectFailure:
            return Forwarded(None, connect_failure())
        except Reset:
            return Forwarded(None, reset_before_headers())

    def finish(self, exchange: Exchange) -> None:
        """Count the request, once: called just before the last bytes of its answer go out,
        so whoever got the answer sees it counted (and again, as a no-op, at the end)."""
        if exchange.ended is not None:
            return
        exchange.ended = time.time()
        exchange.release()
        self.telemetry.record(exchange)
        self.access_log.record(exchange)
        if exchange.span is not None:
            self.tracing.finish(exchange)
        if self.tap.active:
            self.tap.publish(exchange)

