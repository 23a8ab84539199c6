"""Resilience: Envoy's timeouts, retries, circuit breaking and outlier bookkeeping, for
the requests this sidecar's app sends to mesh services (client side).

`Resilience.forward()` drives the tries of one request; each try is an `Attempt` the path
provides (its HTTP/1 or HTTP/2 client), which returns the upstream's answer at its
response headers - the body is the path's business, streamed or not. As in Envoy, a
request is retried only before any of its answer went to the caller: a retried answer is
discarded, never forwarded.

- Timeout: the route's timeout covers the tries, retries and waits included, up to the
  response headers, from when routing saw the request (so an injected delay counts);
  then 504, flag UT.
- Retries: route.retries.attempts more tries, each with its own per-try timeout (from when
  the circuit breaker lets it through), after an exponential backoff with full jitter;
  each prefers a version not tried yet. Non-idempotent requests are retried only when
  allowed, or after a connect failure (nothing was sent); a request whose body could not
  be kept (`replayable=False`) is never retried. URX when the last allowed try failed too.
- Circuit breaking, per service in this sidecar: max_connections requests in flight (a
  slot is held until the answer's body is done), max_pending_requests waiting for one,
  the rest get 503 at once (UO).
- Outlier detection: the outcome of every try that reached a host goes to outlier.Outliers.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from meshproxy import config
from meshproxy.config import MeshState, SidecarConfig, Version
from meshproxy.exchange import Exchange, LocalReply, connect_failure, overflow, reset_before_headers, timed_out
from meshproxy.outlier import CONNECT_FAILURE, GATEWAY_ERRORS, RESET, TIMEOUT, Outliers
from meshproxy.upstream import UpstreamError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MAX_BACKOFF_FACTOR = 10  # the backoff is at most 10x its base, as in Envoy

# Which retryOn values make each kind of failure retriable (Envoy's semantics: a
# connect failure or reset is also a "5xx" and a "gateway-error"; a per-try timeout is a 504).
RETRY_CONNECT_FAILURE = frozenset({"connect-failure", "reset", "5xx", "gateway-error"})
RETRY_RESET = frozenset({"reset", "5xx", "gateway-error"})
RETRY_TIMEOUT = frozenset({"5xx", "gateway-error"})

# What a failed try counts as for outlier detection.
OUTLIER_STATUS = {"connect-failure": CONNECT_FAILURE, "reset": RESET, "timeout": TIMEOUT}


class Answer(Protocol):
    """An upstream answer at its headers."""

    status: int

    def discard(self) -> None:
        """It will not be forwarded (a retry follows): drop it and its connection."""


Attempt = Callable[[Version, "int | None"], Awaitable[Answer]]  # (version, max requests per connection)


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

    def take(self) -> bool:
        """Take a free slot now, if there is one (nobody waits for it)."""
        if self._has_room() and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> bool:
        """Take a slot, waiting if allowed; False: overflow."""
        if self.take():
            return True
        if self.max_pending is not None and len(self._waiters) >= self.max_pending:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:  # cancelled by a timeout, or the caller went away
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


def now() -> float:
    """The clock of deadlines (see policy/routing.py)."""
    return time.monotonic()


def _timeout_at(deadline: float):
    # Relative, so deadlines on time.monotonic() hold whatever clock the event loop keeps.
    return asyncio.timeout(None if deadline == math.inf else max(0.0, deadline - now()))


@dataclass(slots=True)
class Forwarded:
    """forward()'s outcome: the answer to pass on, or the sidecar's own reply. done() must
    be called once the answer's body has been passed on (or given up): it frees the slot."""

    answer: Answer | None
    reply: LocalReply | None
    _release: Callable[[], None] | None = None

    def done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Resilience:
    def __init__(self, state: MeshState, outliers: Outliers | None = None) -> None:
        self.outliers = outliers or Outliers(state)
        self.breakers: dict[str, CircuitBreaker] = {}
        state.subscribe(self._configure)

    def _configure(self, config: SidecarConfig) -> None:
        breakers = {}
        for name, service in config.services.items():
            breaker = breakers[name] = self.breakers.get(name) or CircuitBreaker()
            breaker.configure(service.circuit_breaker)
        self.breakers = breakers

    async def forward(self, exchange: Exchange, attempt: Attempt,
                      replayable: bool | Callable[[], bool] = True) -> Forwarded:
        """Send the request to exchange.upstream, retrying as its route says. `replayable`
        says (or tells, when asked after a failed try) whether the body can be sent again."""
        service = exchange.service
        route = exchange.route
        deadline = exchange.deadline or math.inf
        retries = route.retries
        allowed_retries = retries.attempts if retries else 0
        idempotent = exchange.method.upper() in IDEMPOTENT
        breaker = self.breakers.get(service.name) or CircuitBreaker()  # a reload removed the service meanwhile
        health = self.outliers.of(service)
        limits = service.circuit_breaker
        per_connection = limits.max_requests_per_connection if limits else None
        per_try = retries.per_try_timeout if retries else None
        version = exchange.upstream
        tried = []
        retry = 0
        while True:
            if now() >= deadline:
                return Forwarded(None, timed_out())
            tried.append(version)
            exchange.attempts = retry + 1
            if not breaker.take():  # the timer is set only for a request that has to wait
                try:
                    async with _timeout_at(deadline):
                        if not await breaker.acquire():
                            return Forwarded(None, overflow())
                except TimeoutError:  # the deadline passed while waiting for a slot: no host was tried
                    return Forwarded(None, timed_out())
            try:
                answer, failure = await self._try(attempt, version, per_connection, per_try, deadline)
            except BaseException:  # cancelled (the caller went away), or a request no client can send
                breaker.release()
                raise
            if answer is None:
                breaker.release()
            status = answer.status if answer is not None else 0
            health.record(version.host, status or OUTLIER_STATUS[failure])
            if failure == "timeout" and now() >= deadline:
                return Forwarded(None, timed_out())
            retriable = is_retriable(retries, failure, status, idempotent)
            if not retriable or retry >= allowed_retries or not (replayable() if callable(replayable) else replayable):
                if retriable and allowed_retries and retry >= allowed_retries:
                    exchange.flags.append("URX")
                if answer is not None:
                    return Forwarded(answer, None, breaker.release)
                return Forwarded(None, _failure_reply(failure))
            if answer is not None:
                answer.discard()
                breaker.release()
            exchange.note("retry", attempt=retry + 2, previous_version=version.name, previous_status=status,
                          previous_failure=failure or "")
            pause = backoff(retries.backoff, retry)
            if now() + pause >= deadline:
                await asyncio.sleep(max(0.0, deadline - now()))
                return Forwarded(None, timed_out())
            await asyncio.sleep(pause)
            retry += 1
            version = exchange.pick_again(tried)

    @staticmethod
    async def _try(attempt: Attempt, version: Version, per_connection: int | None, per_try: float | None,
                   deadline: float) -> tuple[Answer | None, str | None]:
        """One try: (the answer, None) or (None, what failed). As in Envoy, the per-try
        timeout starts once the circuit breaker let the try through: time spent waiting
        for a slot is the sidecar's queue, not the host's slowness (outlier detection)."""
        try_deadline = deadline if per_try is None else min(deadline, now() + per_try)
        try:
            if try_deadline == math.inf:  # no timeout: no timer
                return await attempt(version, per_connection), None
            async with _timeout_at(try_deadline):
                return await attempt(version, per_connection), None
        except UpstreamError as exc:
            return None, exc.kind
        except TimeoutError:
            return None, "timeout"


def _failure_reply(failure: str | None) -> LocalReply:
    if failure == "timeout":
        return timed_out()
    if failure == "connect-failure":
        return connect_failure()
    return reset_before_headers()
