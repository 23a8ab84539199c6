"""Resilience: the client side's forwarder, with Envoy's timeouts, retries, circuit
breaking and outlier bookkeeping.

For an outbound HTTP/1.x or HTTP/2 request to a mesh service whose body is buffered, that
has no response yet and was not killed (the Faults addon may have answered or reset it),
the `request` hook does the upstream exchange itself (upstream.Pool, or upstream_h2.Pool
in the app's HTTP/2, trailers included) and sets flow.response, so mitmproxy does not
forward it. Everything else keeps mitmproxy's own forwarding, without these policies:
inbound flows (the app behind this sidecar is local), streamed bodies (not buffered, so
they cannot be sent twice) and requests with trailers, WebSocket upgrades, hosts outside
the mesh, and requests h11 cannot write as they came (a raw non-ASCII path).

- Timeout: the route's timeout covers the whole exchange, retries and waits included,
  from when Routing saw the request (so an injected delay counts); then 504, flag UT.
- Retries: route.retries.attempts more tries, each with its own per-try timeout (from when
  the circuit breaker lets it through), after an exponential backoff with full jitter;
  each prefers a version not tried yet.
  Non-idempotent requests are retried only when allowed, or after a connect failure
  (nothing was sent). URX when the last allowed try failed too.
- Circuit breaking, per service in this sidecar: max_connections requests in flight,
  max_pending_requests waiting for one of them, the rest get 503 at once (UO).
- Outlier detection: the outcome of every attempt that reached a host goes to outlier.Outliers.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time

from mitmproxy import http

from meshproxy import config, upstream, upstream_h2
from meshproxy.addons import routing
from meshproxy.config import MeshState, SidecarConfig
from meshproxy.outlier import CONNECT_FAILURE, GATEWAY_ERRORS, RESET, TIMEOUT, Outliers

META_ATTEMPTS = "meshcli.attempts"  # upstream tries made for the request (1 = no retry)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MAX_BACKOFF_FACTOR = 10  # the backoff is at most 10x its base, as in Envoy

# Which retryOn values make each kind of failure retriable (Envoy's semantics: a
# connect failure or reset is also a "5xx" and a "gateway-error"; a per-try timeout is a 504).
RETRY_CONNECT_FAILURE = frozenset({"connect-failure", "reset", "5xx", "gateway-error"})
RETRY_RESET = frozenset({"reset", "5xx", "gateway-error"})
RETRY_TIMEOUT = frozenset({"5xx", "gateway-error"})

CONNECTION_FAILURE_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
RESET_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
TIMEOUT_BODY = b"upstream request timeout"
CIRCUIT_HEADER = "x-meshcli-circuit"
# Statuses whose Content-Length describes a body that is not there.
BODYLESS_STATUSES = frozenset({204, 304})

# What a failed attempt counts as for outlier detection.
OUTLIER_STATUS = {"connect-failure": CONNECT_FAILURE, "reset": RESET, "timeout": TIMEOUT}


class CircuitBreaker:
    """One service's admission: at most max_connections requests in flight, at most
    max_pending_requests waiting for a slot (None: no limit). Survives config reloads,
    which only change the limits."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_connections: int | None = None
        self.max_pending: int | None = None
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def configure(self, limits: config.CircuitBreaker | None) -> None:
        self.max_connections = limits.max_connections if limits else None
        self.max_pending = limits.max_pending_requests if limits else None
        while self._has_room() and self._hand_over():  # a higher limit lets waiters in now
            self.in_flight += 1

    def _has_room(self) -> bool:
        return self.max_connections is None or self.in_flight < self.max_connections

    async def acquire(self) -> bool:
        """Take a slot, waiting if allowed; False: overflow."""
        if self._has_room() and not self._waiters:
            self.in_flight += 1
            return True
        if self.max_pending is not None and len(self._waiters) >= self.max_pending:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:  # cancelled by a timeout while waiting
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we gave up: pass it on
            raise
        return True

    def release(self) -> None:
        if not self._hand_over():
            self.in_flight -= 1

    def _hand_over(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter: in_flight is unchanged
                return True
        return False


def is_retriable(retries: config.Retries | None, failure: str | None, status: int, idempotent: bool) -> bool:
    if retries is None:
        return False
    on = retries.retry_on
    if failure == "connect-failure":
        return not on.isdisjoint(RETRY_CONNECT_FAILURE)
    if not idempotent and not retries.retry_non_idempotent:
        return False
    if failure == "reset":
        return not on.isdisjoint(RETRY_RESET)
    if failure == "timeout":
        return not on.isdisjoint(RETRY_TIMEOUT)
    return (("5xx" in on and status >= 500) or ("gateway-error" in on and status in GATEWAY_ERRORS)
            or ("retriable-status-codes" in on and status in retries.retriable_status_codes))


def backoff(base: float, retry: int) -> float:
    """Full jitter (AWS's): uniform in [0, min(base * 2^retry, 10 * base)]."""
    return random.uniform(0, min(base * (2 ** retry), MAX_BACKOFF_FACTOR * base))


def local_reply(status: int, body: bytes, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(status, body, {"content-type": "text/plain", **(headers or {})})


def timed_out(flags: list[str]) -> http.Response:
    """The caller's answer when the route's timeout expired (Envoy's 504, flag UT)."""
    flags.append("UT")
    return local_reply(504, TIMEOUT_BODY)


def _timeout_at(deadline: float):
    return asyncio.timeout_at(None if deadline == math.inf else deadline)


def to_flow_response(answer: upstream.Response, request: http.Request) -> http.Response:
    headers = answer.headers
    if request.method != "HEAD" and answer.status not in BODYLESS_STATUSES:
        # The body is whole now: its length replaces any chunked framing.
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(answer.body)).encode()))
    now = time.time()
    # In the app's HTTP version, as Envoy answers: an HTTP/1.0 server's version would make
    # mitmproxy close the app's kept-alive connection (its Connection header is hop-by-hop, gone).
    return http.Response(request.data.http_version, answer.status, answer.reason, tuple(headers), answer.body,
                         http.Headers(answer.trailers) if answer.trailers else None, now, now)


class Resilience:
    def __init__(self, state: MeshState, outliers: Outliers | None = None, pool: upstream.Pool | None = None,
                 h2_pool: upstream_h2.Pool | None = None) -> None:
        self.outliers = outliers or Outliers(state)
        self.pool = pool or upstream.Pool()
        self.h2_pool = h2_pool or upstream_h2.Pool()
        self.breakers: dict[str, CircuitBreaker] = {}
        state.subscribe(self._configure)

    def _configure(self, config: SidecarConfig) -> None:
        breakers = {}
        for name, service in config.services.items():
            breaker = breakers[name] = self.breakers.get(name) or CircuitBreaker()
            breaker.configure(service.circuit_breaker)
        self.breakers = breakers

    async def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if (flow.response is not None or flow.error is not None or routing.META_ROUTE not in flow.metadata
                or not upstream.carries(request)):
            return
        try:
            flow.response = await self._forward(flow)
        except upstream.Unsendable:
            pass  # e.g. a raw non-ASCII path: mitmproxy forwards it as it came, without these policies

    async def _forward(self, flow: http.HTTPFlow) -> http.Response:
        meta = flow.metadata
        request = flow.request
        service: config.Service = meta[routing.META_SERVICE_CONFIG]
        route: config.Route = meta[routing.META_ROUTE]
        flags: list[str] = meta[routing.META_FLAGS]
        deadline = meta[routing.META_DEADLINE] or math.inf
        retries = route.retries
        allowed_retries = retries.attempts if retries else 0
        idempotent = request.method.upper() in IDEMPOTENT
        body = request.raw_content
        client, pool = (upstream_h2, self.h2_pool) if request.is_http2 else (upstream, self.pool)
        headers = client.request_headers(request.headers.fields, request.host_header, body, request.method)
        breaker = self.breakers.get(service.name) or CircuitBreaker()  # a reload removed the service meanwhile
        health = self.outliers.of(service)
        limits = service.circuit_breaker
        per_connection = limits.max_requests_per_connection if limits else None
        per_try = retries.per_try_timeout if retries else None
        version: config.Version = meta[routing.META_UPSTREAM]
        tried = []
        retry = 0
        while True:
            if routing.now() >= deadline:
                return timed_out(flags)
            tried.append(version)
            meta[META_ATTEMPTS] = retry + 1
            answer, failure = await self._attempt(breaker, pool, version.host, request.port, request.method,
                                                  request.path, headers, body, per_connection, per_try, deadline)
            if failure == "overflow":
                flags.append("UO")
                return local_reply(503, OVERFLOW_BODY, {CIRCUIT_HEADER: "open"})
            if failure == "pending-timeout":  # the deadline passed while waiting for a slot: no host was tried
                return timed_out(flags)
            status = answer.status if answer is not None else 0
            health.record(version.host, status or OUTLIER_STATUS[failure])
            if failure == "timeout" and routing.now() >= deadline:
                return timed_out(flags)
            if not is_retriable(retries, failure, status, idempotent):
                return self._final(answer, failure, flags, request)
            if retry >= allowed_retries:
                if allowed_retries:
                    flags.append("URX")
                return self._final(answer, failure, flags, request)
            pause = backoff(retries.backoff, retry)
            if routing.now() + pause >= deadline:
                await asyncio.sleep(max(0.0, deadline - routing.now()))
                return timed_out(flags)
            await asyncio.sleep(pause)
            retry += 1
            version = routing.pick_again(flow, tried)

    async def _attempt(self, breaker: CircuitBreaker, pool: upstream.Pool | upstream_h2.Pool, host: str, port: int,
                       method: str, target: str, headers: list, body: bytes, per_connection: int | None,
                       per_try: float | None, deadline: float) -> tuple[upstream.Response | None, str | None]:
        """One try: (the answer, None) or (None, what failed). As in Envoy, the per-try
        timeout starts once the circuit breaker let the try through: time spent waiting
        for a slot is the sidecar's queue, not the host's slowness (outlier detection)."""
        try:
            async with _timeout_at(deadline):
                if not await breaker.acquire():
                    return None, "overflow"
        except TimeoutError:
            return None, "pending-timeout"
        try_deadline = deadline if per_try is None else min(deadline, routing.now() + per_try)
        try:
            async with _timeout_at(try_deadline):
                return await pool.request(host, port, method, target, headers, body, per_connection), None
        except upstream.UpstreamError as exc:
            return None, exc.kind
        except TimeoutError:
            return None, "timeout"
        finally:
            breaker.release()

    @staticmethod
    def _final(answer: upstream.Response | None, failure: str | None, flags: list[str],
               request: http.Request) -> http.Response:
        if answer is not None:
            return to_flow_response(answer, request)
        if failure == "timeout":
            return timed_out(flags)
        if failure == "connect-failure":
            flags.append("UF")
            return local_reply(503, CONNECTION_FAILURE_BODY)
        flags.append("UC")  # Envoy's "upstream connection termination"
        return local_reply(503, RESET_BODY)

    def done(self) -> None:
        self.pool.close()
        self.h2_pool.close()
