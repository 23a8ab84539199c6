"""Resilience: timeouts, retries, circuit breaking and outlier bookkeeping.

policy/resilience.py directly (Resilience.forward() with scripted tries, CircuitBreaker,
is_retriable, backoff), then on the wire through the fast path (a real Listener and
HttpProxy against loopback backends), then through the mitmproxy adapter (HTTP/2, and
the flows it leaves to mitmproxy).
"""

import asyncio
import time

import pytest
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.test import taddons, tutils

from h2_backends import H2Backend
from h2_backends import Reply as H2Reply
from http_backends import Backend, Reply, fail_first, ok
from meshproxy import config, upstream
from meshproxy.config import Version
from meshproxy.exchange import INBOUND
from meshproxy.fastpath.http1 import BUFFER_LIMIT
from meshproxy.outlier import Outliers
from meshproxy.policy.resilience import CircuitBreaker, Resilience, backoff, is_retriable
from meshproxy.policy.routing import Router
from sidecar_kit import (NOBODY_HOST, V1_HOST, V2_HOST, Adapters, RunningSidecar, exchange_of, flow_to, h2_flow_to,
                         http_call, mesh_state, on_loop, outbound, payment_state, until)

TWO = (("v1", V1_HOST), ("v2", V2_HOST))
RETRY_5XX = {"retries": {"attempts": 3, "retryOn": ["5xx"], "backoffMs": 1}}
OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"


# -- the policy, with scripted tries ---------------------------------------------------------

class Answered:
    def __init__(self, status: int) -> None:
        self.status = status
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


class Script:
    """An Attempt answering try n with outcomes[n]: a status, an UpstreamError to raise, or
    (seconds, outcome) to wait first. Records (version, max requests per connection) tried."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.tries: list[tuple[Version, int | None]] = []
        self.answers: list[Answered] = []

    async def __call__(self, version: Version, max_requests: int | None):
        outcome = self.outcomes[min(len(self.tries), len(self.outcomes) - 1)]
        self.tries.append((version, max_requests))
        if isinstance(outcome, tuple):
            await asyncio.sleep(outcome[0])
            outcome = outcome[1]
        if isinstance(outcome, Exception):
            raise outcome
        self.answers.append(Answered(outcome))
        return self.answers[-1]


class Policies:
    """Router + Resilience sharing one Outliers, as sidecar.Sidecar wires them."""

    def __init__(self, routes=None, versions=(("v1", V1_HOST),), **service) -> None:
        self.state = payment_state(routes, versions, **service)
        self.outliers = Outliers(self.state)
        self.router = Router(self.state, self.outliers)
        self.resilience = Resilience(self.state, self.outliers)

    async def forward(self, script: Script, method: str = "GET", replayable: bool = True, headers=None):
        exchange, _ = outbound(self.router, method=method, headers=headers)
        forwarded = await self.resilience.forward(exchange, script, replayable)
        return exchange, forwarded


@on_loop
async def test_policy_retries_turn_failures_into_a_success():
    exchange, forwarded = await Policies(RETRY_5XX).forward(script := Script(503, 503, 200))

    assert forwarded.answer.status == 200 and forwarded.reply is None
    assert (exchange.attempts, exchange.flags) == (3, [])
    assert [a.discarded for a in script.answers] == [True, True, False]  # a retried answer is never forwarded


@on_loop
async def test_policy_exhausted_retries_return_the_last_answer_with_urx():
    exchange, forwarded = await Policies({"retries": {"attempts": 2, "retryOn": ["5xx"], "backoffMs": 1}}).forward(
        Script(500))

    assert (forwarded.answer.status, exchange.attempts, exchange.flags) == (500, 3, ["URX"])


@on_loop
async def test_policy_a_retry_prefers_a_version_not_tried_yet():
    policies = Policies({"retries": {"attempts": 2, "retryOn": ["5xx"], "backoffMs": 1}}, TWO,
                        loadBalancer="least-request")
    script = Script(503, 503, 200)

    exchange, forwarded = await policies.forward(script)

    tried = [v.name for v, _ in script.tries]
    assert tried[0] != tried[1]  # the second try goes to the other version
    assert exchange.version == tried[-1] and forwarded.answer.status == 200


@pytest.mark.parametrize(("retries", "outcomes", "method", "status", "attempts"), [
    ({"attempts": 3, "retryOn": ["gateway-error"]}, (500, 200), "GET", 500, 1),
    ({"attempts": 3, "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [409], "backoffMs": 1},
     (409, 200), "GET", 200, 2),
    ({"attempts": 3, "retryOn": ["5xx"], "backoffMs": 1}, (503, 200), "POST", 503, 1),
    ({"attempts": 3, "retryOn": ["5xx"], "backoffMs": 1, "retryNonIdempotent": True}, (503, 200), "POST", 200, 2),
    ({"attempts": 1, "retryOn": ["connect-failure"], "backoffMs": 1},
     (upstream.ConnectFailure("refused"), 200), "POST", 200, 2),  # nothing was sent: even a POST
    ({"attempts": 1, "retryOn": ["reset"], "backoffMs": 1}, (upstream.Reset("gone"), 200), "GET", 200, 2),
    ({"attempts": 1, "retryOn": ["reset"], "backoffMs": 1}, (upstream.Reset("gone"), 200), "POST", 503, 1),
])
@on_loop
async def test_policy_retry_on(retries, outcomes, method, status, attempts):
    exchange, forwarded = await Policies({"retries": retries}).forward(Script(*outcomes), method)

    got = forwarded.answer.status if forwarded.answer is not None else forwarded.reply.status
    assert (got, exchange.attempts) == (status, attempts)
    assert "URX" not in exchange.flags


@pytest.mark.parametrize(("failure", "body", "flag"), [
    (upstream.ConnectFailure("refused"), CONNECT_FAILURE, "UF"),
    (upstream.Reset("gone"), b"upstream connect error or disconnect/reset before headers. "
                             b"reset reason: connection termination", "UC"),
])
@on_loop
async def test_policy_a_failure_without_retries_is_a_local_503(failure, body, flag):
    exchange, forwarded = await Policies({}).forward(Script(failure))

    assert forwarded.answer is None
    assert (forwarded.reply.status, forwarded.reply.body, forwarded.reply.flag) == (503, body, flag)
    assert exchange.attempts == 1


@on_loop
async def test_policy_a_body_that_was_not_kept_is_never_retried():
    exchange, forwarded = await Policies(RETRY_5XX).forward(Script(503, 200), replayable=False)

    assert (forwarded.answer.status, exchange.attempts, exchange.flags) == (503, 1, [])


@on_loop
async def test_policy_per_try_timeout_gives_up_on_a_slow_try_and_retries():
    policies = Policies({"retries": {"attempts": 2, "perTryTimeoutMs": 50, "retryOn": ["5xx"], "backoffMs": 1}})
    started = time.monotonic()

    exchange, forwarded = await policies.forward(Script((2.0, 200), 200))

    assert (forwarded.answer.status, exchange.attempts) == (200, 2)
    assert time.monotonic() - started < 0.5


@on_loop
async def test_policy_a_per_try_timeout_is_a_gateway_error_for_retry_on_but_not_reset():
    policies = Policies({"retries": {"attempts": 2, "perTryTimeoutMs": 30, "retryOn": ["reset"], "backoffMs": 1}})

    exchange, forwarded = await policies.forward(Script((1.0, 200), 200))

    assert (forwarded.reply.status, forwarded.reply.flag, exchange.attempts) == (504, "UT", 1)


@on_loop
async def test_policy_the_route_timeout_covers_tries_and_backoffs():
    policies = Policies({"timeoutMs": 250, "retries": {"attempts": 5, "perTryTimeoutMs": 80, "retryOn": ["5xx"],
                                                       "backoffMs": 1}})
    started = time.monotonic()

    exchange, forwarded = await policies.forward(Script((2.0, 200)))

    elapsed = time.monotonic() - started
    assert (forwarded.reply.status, forwarded.reply.body, forwarded.reply.flag) == (
        504, b"upstream request timeout", "UT")
    assert 0.23 < elapsed < 0.8
    assert 2 <= exchange.attempts <= 4  # 80 + 80 + 80 ms, then the 10 ms left: never all 6 the retries allow


@on_loop
async def test_policy_a_backoff_never_sleeps_past_the_deadline():
    policies = Policies({"timeoutMs": 60, "retries": {"attempts": 3, "retryOn": ["5xx"], "backoffMs": 10000}})
    started = time.monotonic()

    exchange, forwarded = await policies.forward(Script(503))

    assert forwarded.reply.status == 504
    assert 0.04 < time.monotonic() - started < 0.3


@on_loop
async def test_policy_time_spent_before_forwarding_counts_against_the_deadline():
    # e.g. a delay the faults injected: the deadline started when routing saw the request
    policies = Policies({"timeoutMs": 30})
    exchange, _ = outbound(policies.router)
    await asyncio.sleep(0.04)
    script = Script(200)

    forwarded = await policies.resilience.forward(exchange, script)

    assert forwarded.reply.status == 504 and script.tries == []


@on_loop
async def test_policy_outcomes_go_to_outlier_detection():
    policies = Policies({"retries": {"attempts": 2, "retryOn": ["5xx", "connect-failure"], "backoffMs": 1}}, TWO,
                        outlierDetection={"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 2,
                                          "maxEjectionPercent": 100})

    await policies.forward(Script(upstream.ConnectFailure("refused"), 502, 200))

    # round robin: v1 (connect failure), v2 (502), v1 (200)
    health = policies.outliers.services["payment"]
    assert (health.hosts[V1_HOST].consecutive_gateway, health.hosts[V2_HOST].consecutive_gateway) == (0, 1)


@on_loop
async def test_policy_max_requests_per_connection_is_passed_to_the_try():
    script = Script(200)

    await Policies({}, circuitBreaker={"maxRequestsPerConnection": 7}).forward(script)

    assert script.tries[0][1] == 7


@on_loop
async def test_policy_the_circuit_breaker_slot_is_held_until_done():
    policies = Policies({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 0})
    _, held = await policies.forward(Script(200))

    _, refused = await policies.forward(Script(200))
    assert (refused.reply.status, refused.reply.body, refused.reply.flag) == (503, OVERFLOW, "UO")
    assert dict(refused.reply.headers) == {"x-meshcli-circuit": "open"}
    held.done()
    held.done()  # once only

    assert policies.resilience.breakers["payment"].in_flight == 0
    _, admitted = await policies.forward(Script(200))
    assert admitted.answer.status == 200


async def held_breaker(max_pending: int | None = None) -> CircuitBreaker:
    """A breaker of one slot, taken."""
    breaker = CircuitBreaker()
    breaker.configure(config.CircuitBreaker(max_connections=1, max_pending_requests=max_pending))
    assert await breaker.acquire()
    return breaker


@on_loop
async def test_circuit_breaker_slot_handover_and_cancelled_waiters():
    breaker = await held_breaker(max_pending=2)
    waiting = asyncio.create_task(breaker.acquire())
    gave_up = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)
    gave_up.cancel()
    breaker.release()  # the slot goes to the first waiter

    assert await waiting
    assert breaker.in_flight == 1
    breaker.release()
    assert breaker.in_flight == 0
    assert not breaker._waiters


@on_loop
async def test_circuit_breaker_pending_limit():
    breaker = await held_breaker(max_pending=1)
    waiting = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)

    assert await breaker.acquire() is False  # one waits already: overflow at once
    breaker.release()
    assert await waiting


@on_loop
async def test_circuit_breaker_a_higher_limit_lets_waiters_in_and_none_means_unlimited():
    breaker = await held_breaker()
    waiters = [asyncio.create_task(breaker.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)

    breaker.configure(config.CircuitBreaker(max_connections=3))
    assert all(await asyncio.gather(*waiters))
    assert breaker.in_flight == 3
    breaker.configure(None)
    assert all([await breaker.acquire() for _ in range(10)])


def test_circuit_breakers_survive_reloads_and_follow_the_services():
    policies = Policies({}, circuitBreaker={"maxConnections": 1})
    breaker = policies.resilience.breakers["payment"]
    breaker.in_flight = 1

    policies.state.apply(payment_state({}, circuitBreaker={"maxConnections": 5}).config)
    assert policies.resilience.breakers["payment"] is breaker  # the slots in use are still counted
    assert (breaker.max_connections, breaker.in_flight) == (5, 1)

    policies.state.apply(payment_state({}).config)
    assert breaker.max_connections is None
    policies.state.apply(mesh_state({}).config)
    assert policies.resilience.breakers == {}


@pytest.mark.parametrize(("retry_on", "failure", "status", "idempotent", "expected"), [
    (["connect-failure"], "connect-failure", 0, False, True),
    (["gateway-error"], "connect-failure", 0, True, True),
    (["retriable-status-codes"], "connect-failure", 0, True, False),
    (["reset"], "reset", 0, True, True),
    (["reset"], "reset", 0, False, False),
    (["connect-failure"], "reset", 0, True, False),
    (["5xx"], "timeout", 0, True, True),
    (["reset"], "timeout", 0, True, False),
    (["5xx"], None, 500, True, True),
    (["gateway-error"], None, 500, True, False),
    (["gateway-error"], None, 504, True, True),
    (["5xx"], None, 404, True, False),
])
def test_what_is_retriable(retry_on, failure, status, idempotent, expected):
    retries = config.Retries(attempts=1, retry_on=frozenset(retry_on))

    assert is_retriable(retries, failure, status, idempotent) is expected


def test_no_retry_policy_means_no_retry():
    assert not is_retriable(None, "connect-failure", 0, True)


def test_backoff_is_jittered_and_capped_at_ten_times_the_base():
    draws = [backoff(0.025, retry) for retry in range(10) for _ in range(50)]

    assert all(0 <= d <= 0.25 for d in draws)
    assert max(backoff(0.025, 0) for _ in range(200)) <= 0.025
    assert max(draws) > 0.2  # late retries reach near the cap
    assert len(set(draws)) > 400  # jittered, not a fixed schedule


# -- on the wire, through the fast path ------------------------------------------------------

def fast(routes=None, versions=(("v1", V1_HOST),), **service) -> RunningSidecar:
    return RunningSidecar(payment_state(routes, versions, **service))


def last_entry(sidecar: RunningSidecar) -> dict:
    return sidecar.log_lines()[-1]


@on_loop
async def test_a_plain_request_is_forwarded_with_the_apps_host_and_without_hop_by_hop_headers():
    async with Backend(lambda n, r: Reply(201, b"made", chunked=True, headers=[("x-answer", "42")])) as v1, \
            fast({}) as web:
        reply = await web.call(v1.port, "POST", body=b"order=1", headers=(
            ("Connection", "keep-alive, x-private"), ("x-private", "1"), ("x-kept", "yes")))

    [request] = v1.requests
    assert (request.method, request.target, request.body) == ("POST", "/pay", b"order=1")
    assert request.headers["host"] == f"payment:{v1.port}"
    assert request.headers["x-meshcli-source"] == "web-v1"
    assert request.headers["x-kept"] == "yes"
    assert "x-private" not in request.headers and "connection" not in request.headers
    assert (reply.status, reply.body, reply.header("x-answer")) == (201, b"made", "42")
    assert reply.header("transfer-encoding") == "chunked"  # streamed: the caller gets its own framing
    assert (last_entry(web)["attempts"], last_entry(web)["response_flags"]) == (1, "-")


@on_loop
async def test_retries_turn_failures_into_a_success():
    async with Backend(fail_first(2)) as v1, fast(RETRY_5XX) as web:
        reply = await web.call(v1.port)

    assert reply.status == 200
    assert len(v1.requests) == 3
    assert (last_entry(web)["attempts"], last_entry(web)["response_flags"]) == (3, "-")
    assert web.stats()["routes"] == [{"destination_service": "payment", "route": "main", "requests": 1,
                                      "attempts": 3, "retries": 2}]


@on_loop
async def test_a_retry_prefers_a_version_not_tried_yet():
    async with Backend(lambda n, r: Reply(503)) as v1, Backend(ok, V2_HOST, v1.port) as v2, \
            fast({"retries": {"attempts": 1, "retryOn": ["gateway-error"], "backoffMs": 1}}, TWO) as web:
        reply = await web.call(v1.port)  # round robin starts with v1

    assert reply.status == 200
    assert (len(v1.requests), len(v2.requests)) == (1, 1)
    assert last_entry(web)["destination_version"] == "v2"  # the version that answered


@on_loop
async def test_exhausted_retries_return_the_last_answer_with_urx():
    async with Backend(lambda n, r: Reply(500, b"broken")) as v1, \
            fast({"retries": {"attempts": 2, "retryOn": ["5xx"], "backoffMs": 1}}) as web:
        reply = await web.call(v1.port)

    assert (reply.status, reply.body) == (500, b"broken")
    assert (last_entry(web)["attempts"], last_entry(web)["response_flags"]) == (3, "URX")


@on_loop
async def test_post_is_not_retried_unless_allowed():
    async with Backend(fail_first(1)) as v1, fast(RETRY_5XX) as web:
        refused = await web.call(v1.port, "POST", body=b"x")
    async with Backend(fail_first(1)) as v1, \
            fast({"retries": {**RETRY_5XX["retries"], "retryNonIdempotent": True}}) as web2:
        allowed = await web2.call(v1.port, "POST", body=b"x")

    assert (refused.status, last_entry(web)["attempts"]) == (503, 1)
    assert (allowed.status, last_entry(web2)["attempts"]) == (200, 2)
    assert [r.body for r in v1.requests] == [b"x", b"x"]  # the kept body went out again


@on_loop
async def test_a_body_too_large_to_keep_streams_and_is_not_retried():
    big = b"z" * (BUFFER_LIMIT + 1)
    async with Backend(fail_first(1)) as v1, \
            fast({"retries": {**RETRY_5XX["retries"], "retryNonIdempotent": True}}) as web:
        reply = await web.call(v1.port, "POST", body=big)

    assert reply.status == 503
    assert [len(r.body) for r in v1.requests] == [len(big)]


@on_loop
async def test_a_connect_failure_is_retried_even_for_post():
    async with Backend(ok, V2_HOST) as v2, \
            fast({"retries": {"attempts": 1, "retryOn": ["connect-failure"], "backoffMs": 1}},
                 (("v1", NOBODY_HOST), ("v2", V2_HOST))) as web:
        reply = await web.call(v2.port, "POST", body=b"x")

    assert reply.status == 200
    assert last_entry(web)["attempts"] == 2
    assert v2.requests[0].body == b"x"


@on_loop
async def test_a_connect_failure_with_nothing_else_to_try_is_503_uf():
    async with Backend(ok, V2_HOST) as free, fast({}, (("v1", NOBODY_HOST),)) as web:  # a port nobody uses there
        reply = await web.call(free.port)

    assert (reply.status, reply.body) == (503, CONNECT_FAILURE)
    assert last_entry(web)["response_flags"] == "UF"


@on_loop
async def test_a_reset_is_retried_and_without_retries_is_503_uc():
    reset_once = lambda n, r: Reply(reset=True) if n == 1 else Reply()  # noqa: E731
    async with Backend(reset_once) as v1, \
            fast({"retries": {"attempts": 1, "retryOn": ["reset"], "backoffMs": 1}}) as web:
        retried = await web.call(v1.port)
    async with Backend(reset_once) as v1, fast({}) as plain_web:
        plain = await plain_web.call(v1.port)

    assert (retried.status, last_entry(web)["attempts"]) == (200, 2)
    assert plain.status == 503
    assert b"reset reason: connection termination" in plain.body
    assert last_entry(plain_web)["response_flags"] == "UC"


@on_loop
async def test_per_try_timeout_gives_up_on_a_slow_try_and_retries():
    async with Backend(lambda n, r: Reply(delay=1.0) if n == 1 else Reply()) as v1, \
            fast({"retries": {"attempts": 2, "perTryTimeoutMs": 80, "retryOn": ["5xx"], "backoffMs": 1}}) as web:
        started = time.monotonic()
        reply = await web.call(v1.port)
        elapsed = time.monotonic() - started

    assert reply.status == 200
    assert last_entry(web)["attempts"] == 2
    assert elapsed < 0.6


@on_loop
async def test_the_route_timeout_covers_the_whole_exchange():
    async with Backend(lambda n, r: Reply(delay=2.0)) as v1, \
            fast({"timeoutMs": 300, "retries": {"attempts": 5, "perTryTimeoutMs": 120, "retryOn": ["5xx"],
                                                "backoffMs": 1}}) as web:
        started = time.monotonic()
        reply = await web.call(v1.port)
        elapsed = time.monotonic() - started

    assert (reply.status, reply.body) == (504, b"upstream request timeout")
    assert "UT" in last_entry(web)["response_flags"]
    assert 0.27 < elapsed < 1.2
    assert 2 <= last_entry(web)["attempts"] <= 3  # 120 + 120 ms, then the 60 ms left


@on_loop
async def test_circuit_breaker_overflow_is_refused_at_once():
    async with Backend(lambda n, r: Reply(delay=0.2)) as v1, \
            fast({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1}) as web:
        breaker = web.resilience.breakers["payment"]
        calls = [asyncio.create_task(web.call(v1.port)) for _ in range(2)]
        assert await until(lambda: breaker.in_flight == 1 and len(breaker._waiters) == 1)
        refused = await web.call(v1.port)
        in_flight = [task.done() for task in calls]
        answered = await asyncio.gather(*calls)

    assert in_flight == [False, False]  # the third was refused while the others still ran
    assert (refused.status, refused.body) == (503, OVERFLOW)
    assert refused.header("x-meshcli-circuit") == "open"
    assert [r.status for r in answered] == [200, 200]
    assert len(v1.requests) == 2
    assert sorted(e["response_flags"] for e in web.log_lines()) == ["-", "-", "UO"]


@on_loop
async def test_waiting_for_a_circuit_breaker_slot_is_not_the_hosts_per_try_time():
    # As in Envoy, the per-try timeout starts when the try gets a slot, and a wait in
    # this sidecar's own queue is never held against the host by outlier detection.
    # The fourth request waits 3 x 50 ms for its slot: more than its 150 ms per try.
    async with Backend(lambda n, r: Reply(delay=0.05)) as v1, \
            fast({"retries": {"attempts": 0, "perTryTimeoutMs": 150}},
                 circuitBreaker={"maxConnections": 1, "maxPendingRequests": 5},
                 outlierDetection={"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 1}) as web:
        replies = await asyncio.gather(*(web.call(v1.port) for _ in range(4)))

    assert [r.status for r in replies] == [200] * 4
    assert web.outliers.services["payment"].ejected_hosts() == frozenset()


@on_loop
async def test_the_deadline_passing_while_waiting_for_a_slot_is_504_ut_without_blaming_the_host():
    # requests with x-short get a 100 ms timeout; the others (the default route) none
    async with Backend(lambda n, r: Reply(delay=0.25)) as v1, \
            fast({"match": [{"headers": [{"name": "x-short", "kind": "present"}]}], "timeoutMs": 100},
                 circuitBreaker={"maxConnections": 1},
                 outlierDetection={"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 1}) as web:
        holder = asyncio.create_task(web.call(v1.port))
        assert await until(lambda: len(v1.requests) == 1)  # the holder has the slot
        waiting = await web.call(v1.port, headers=(("x-short", "1"),))
        await holder

    assert waiting.status == 504
    assert [e["response_flags"] for e in web.log_lines() if e["route"] == "main"] == ["UT"]
    assert len(v1.requests) == 1
    assert web.outliers.services["payment"].ejected_hosts() == frozenset()


@on_loop
async def test_a_caller_that_goes_away_frees_its_slot_at_once():
    async with Backend(lambda n, r: Reply(delay=2.0) if n == 1 else Reply()) as v1, \
            fast({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 0}) as web:
        web.to(v1.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", web.outbound_port)
        writer.write(f"GET /slow HTTP/1.1\r\nHost: payment:{v1.port}\r\n\r\n".encode())
        breaker = web.resilience.breakers["payment"]
        assert await until(lambda: len(v1.requests) == 1)
        writer.close()  # the app gives up
        assert await until(lambda: breaker.in_flight == 0, timeout=1.0)  # long before the 2 s answer
        reply = await web.call(v1.port)

    assert reply.status == 200  # not 503 UO: the abandoned exchange gave its slot back
    assert web.resilience.breakers["payment"].in_flight == 0
    assert web.log_lines()[0]["response_flags"] == "DC"


@on_loop
async def test_a_caller_that_leaves_while_waiting_for_a_slot_gives_up_its_place():
    async with Backend(lambda n, r: Reply(delay=0.15) if n == 1 else Reply()) as v1, \
            fast({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1}) as web:
        breaker = web.resilience.breakers["payment"]
        holder = asyncio.create_task(web.call(v1.port))
        assert await until(lambda: len(v1.requests) == 1)
        web.to(v1.port)
        _, writer = await asyncio.open_connection("127.0.0.1", web.outbound_port)
        writer.write(f"GET /waiting HTTP/1.1\r\nHost: payment:{v1.port}\r\n\r\n".encode())
        assert await until(lambda: len(breaker._waiters) == 1)
        writer.close()  # gives up while pending
        left = await until(lambda: not breaker._waiters, timeout=0.1)  # well before the holder is done
        queued = asyncio.create_task(web.call(v1.port))  # takes the pending place it left
        answers = [await holder, await queued]

    assert left
    assert [a.status for a in answers] == [200, 200]
    assert [r.target for r in v1.requests] == ["/pay", "/pay"]  # the abandoned request never went out
    assert (breaker.in_flight, len(breaker._waiters)) == (0, 0)


@pytest.mark.parametrize(("per_connection", "connections"), [(2, 3), (0, 1), (None, 1)])
@on_loop
async def test_max_requests_per_connection(per_connection, connections):
    async with Backend() as v1, fast({}, circuitBreaker={"maxRequestsPerConnection": per_connection}) as web:
        breaker = web.resilience.breakers["payment"]
        for _ in range(5):
            assert (await web.call(v1.port)).status == 200
            assert await until(lambda: breaker.in_flight == 0)  # its connection is back in the pool (or closed)

    assert v1.connections == connections


@on_loop
async def test_outlier_detection_moves_traffic_away_and_lets_it_back():
    healthy = {"v1": False}
    v1_reply = lambda n, r: Reply() if healthy["v1"] else Reply(503)  # noqa: E731
    async with Backend(v1_reply) as v1, Backend(ok, V2_HOST, v1.port), \
            fast({}, TWO, outlierDetection={"consecutive5xxErrors": 2, "baseEjectionTimeMs": 200,
                                            "maxEjectionPercent": 50}) as web:
        async def versions(n):
            for _ in range(n):
                await web.call(v1.port)
            return [e["destination_version"] for e in web.log_lines()[-n:]]

        before = await versions(4)
        during = await versions(6)
        stats = web.stats()["outliers"]
        healthy["v1"] = True
        await asyncio.sleep(0.22)
        after = await versions(4)

    assert before == ["v1", "v2", "v1", "v2"]  # the second 503 in a row ejects v1
    assert during == ["v2"] * 6
    assert stats["payment"]["ejected"][0]["version"] == "v1"
    assert sorted(after) == ["v1", "v1", "v2", "v2"]


@on_loop
async def test_requests_leaving_the_mesh_are_sent_once_without_the_policies():
    async with Backend(fail_first(1)) as elsewhere, fast(RETRY_5XX) as web:
        web.to(elsewhere.port, "127.0.0.1")
        reply = await http_call("127.0.0.1", web.outbound_port, host="example.com")
        web.to(9, NOBODY_HOST)
        refused = await http_call("127.0.0.1", web.outbound_port, host="example.com")

    assert reply.status == 503 and len(elsewhere.requests) == 1
    assert (refused.status, refused.body) == (503, CONNECT_FAILURE)
    assert [(e["route"], e["attempts"], e["response_flags"]) for e in web.log_lines()] == [
        (None, None, "-"), (None, None, "UF")]


@on_loop
async def test_inbound_requests_go_to_the_app_once():
    async with Backend(fail_first(1)) as app:
        async with RunningSidecar(payment_state(RETRY_5XX)) as sidecar:
            reply = await sidecar.call(app.port, direction=INBOUND, ip="127.0.0.1")

    assert reply.status == 503 and len(app.requests) == 1


# -- through the mitmproxy adapter -------------------------------------------------------------

GRPC_OK = H2Reply(body=b"\x00\x00\x00\x00\x02ok", headers=[("content-type", "application/grpc")],
                  trailers=[("grpc-status", "0")])


def adapters(routes=None, versions=(("v1", V1_HOST),), **service) -> Adapters:
    return Adapters(payment_state(routes, versions, **service))


async def through(adapters: Adapters, flow):
    with taddons.context():
        return await adapters.call(flow, record=False)


@on_loop
async def test_adapter_forwards_through_the_same_policy():
    async with Backend(fail_first(1)) as v1:
        sidecar = adapters(RETRY_5XX)
        flow = await through(sidecar, flow_to(v1.port, method=b"POST", content=b"order=1",
                                              headers=((b"x-private", b"1"), (b"Connection", b"x-private"))))

    assert sidecar.resilience.resilience is sidecar.sidecar.resilience  # the fast path's instance
    assert (flow.response.status_code, flow.response.raw_content) == (503, b"failed")  # POST: not retried
    assert flow.response.headers["content-length"] == "6"
    assert exchange_of(flow).attempts == 1
    [request] = v1.requests
    assert request.headers["host"] == f"payment:{v1.port}" and "x-private" not in request.headers


@on_loop
async def test_adapter_circuit_breaker_counts_with_the_fast_path():
    sidecar = adapters({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 0})
    assert await sidecar.sidecar.resilience.breakers["payment"].acquire()  # a fast-path request holds the slot

    flow = await through(sidecar, flow_to(9))

    assert (flow.response.status_code, flow.response.headers["x-meshcli-circuit"]) == (503, "open")
    assert exchange_of(flow).flags == ["UO"]


@on_loop
async def test_an_http2_request_goes_out_over_http2_with_its_trailers_back():
    async with H2Backend(lambda n, r: GRPC_OK) as v1:
        sidecar = adapters({})
        flows = await asyncio.gather(*(through(sidecar, h2_flow_to(v1.port, content=b"\x00\x00\x00\x00\x01x"))
                                       for _ in range(5)))

    request = v1.requests[0]
    assert request.headers[:4] == [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.Pay/Charge"),
                                   (":authority", f"payment:{v1.port}")]
    assert ("te", "trailers") in request.headers
    assert request.header("x-meshcli-source") == "web-v1"
    assert request.body == b"\x00\x00\x00\x00\x01x"
    assert v1.connections == 1  # the five calls shared one connection
    response = flows[0].response
    assert (response.status_code, response.http_version) == (200, "HTTP/2.0")
    assert response.raw_content == b"\x00\x00\x00\x00\x02ok"
    assert response.trailers.fields == ((b"grpc-status", b"0"),)
    assert exchange_of(flows[0]).flags == []


@on_loop
async def test_http2_retries_a_reset_stream_and_a_5xx():
    replies = {1: H2Reply(reset=True), 2: H2Reply(503)}
    async with H2Backend(lambda n, r: replies.get(n, GRPC_OK)) as v1:
        retry_on = {"attempts": 2, "retryOn": ["reset", "5xx"], "retryNonIdempotent": True, "backoffMs": 1}
        flow = await through(adapters({"retries": retry_on}), h2_flow_to(v1.port))

    assert (flow.response.status_code, exchange_of(flow).attempts) == (200, 3)
    assert flow.response.trailers["grpc-status"] == "0"
    assert v1.connections == 1  # a reset stream does not cost the connection


@on_loop
async def test_http2_timeout_is_504_and_cancels_only_that_stream():
    slow = lambda n, r: H2Reply(delay=1.0) if n == 1 else GRPC_OK  # noqa: E731
    async with H2Backend(slow) as v1:
        sidecar = adapters({"timeoutMs": 100})
        started = time.monotonic()
        timed_out = await through(sidecar, h2_flow_to(v1.port))
        elapsed = time.monotonic() - started
        after = await through(sidecar, h2_flow_to(v1.port))
        await until(lambda: v1.client_resets)

    assert (timed_out.response.status_code, timed_out.response.raw_content) == (504, b"upstream request timeout")
    assert exchange_of(timed_out).flags == ["UT"]
    assert elapsed < 0.5
    assert after.response.status_code == 200
    assert [code for _, code in v1.client_resets] == [8]  # CANCEL
    assert v1.connections == 1


@on_loop
async def test_http2_circuit_breaker_overflow_is_refused_at_once():
    async with H2Backend(lambda n, r: H2Reply(delay=0.2)) as v1:
        sidecar = adapters({}, circuitBreaker={"maxConnections": 1, "maxPendingRequests": 1})
        calls = [asyncio.create_task(through(sidecar, h2_flow_to(v1.port))) for _ in range(3)]
        refused = await calls[2]
        answered = await asyncio.gather(*calls[:2])

    assert (refused.response.status_code, exchange_of(refused).flags) == (503, ["UO"])
    assert refused.response.headers["x-meshcli-circuit"] == "open"
    assert [f.response.status_code for f in answered] == [200, 200]
    assert len(v1.requests) == 2


@on_loop
async def test_flows_it_does_not_handle_are_left_to_mitmproxy():
    sidecar = adapters({})
    port = 9  # nothing is sent anywhere

    def routed(**changes):
        flow = flow_to(port)
        sidecar.routing.requestheaders(flow)
        for name, value in changes.items():
            setattr(flow.request, name, value)
        return flow

    outside = flow_to(port, host_header="example.com")
    sidecar.routing.requestheaders(outside)
    streamed = routed(stream=True)
    with_trailers = routed(trailers=http.Headers(((b"x-checksum", b"1"),)))
    websocket = routed()
    websocket.request.headers["Upgrade"] = "websocket"
    answered = routed()
    answered.response = tutils.tresp()
    killed = routed()
    killed.kill()
    inbound = flow_to(port, direction=INBOUND)
    sidecar.routing.requestheaders(inbound)

    with taddons.context():
        for flow in (outside, streamed, with_trailers, websocket, killed, inbound):
            await sidecar.resilience.request(flow)
            assert flow.response is None
            assert exchange_of(flow).attempts == 0
        await sidecar.resilience.request(answered)
    assert answered.response.status_code == 200


@on_loop
async def test_a_request_http1_cannot_write_is_left_to_mitmproxy():
    async with Backend() as v1:
        sidecar = adapters({})
        flow = await through(sidecar, flow_to(v1.port, path="/caf\u00e9?q=1".encode()))  # a raw UTF-8 path, as curl sends it

    assert flow.response is None  # no addon error: mitmproxy forwards it to the chosen version
    assert flow.request.host == V1_HOST
    assert v1.requests == [] and sidecar.sidecar.pool.opened == 0


@on_loop
async def test_an_http10_servers_answer_is_given_in_the_apps_version_with_every_header():
    # An HTTP/1.0 answer without a length is read until the server closes. Relayed as
    # HTTP/1.0 without its (hop-by-hop) Connection header, mitmproxy would close the
    # app's kept-alive connection after it.
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                     b"Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, V1_HOST, 0)
    port = server.sockets[0].getsockname()[1]
    flow = await through(adapters({}), flow_to(port, path=b"/pay?a=1&a=2"))
    server.close()

    response = flow.response
    assert (response.status_code, response.http_version, response.raw_content) == (200, "HTTP/1.1", b"all of it")
    assert response.headers.fields == ((b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"9"))
    assert not http1.connection_close(flow.request.http_version, flow.request.headers)
    assert not http1.connection_close(response.http_version, response.headers)
