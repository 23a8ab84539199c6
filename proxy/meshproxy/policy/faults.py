"""Faults: inject the mesh's faults into the calls this sidecar's app makes (client side).

HTTP, like Istio's fault filter: after routing chose the route, the fault in force (a
runtime fault from `meshcli fault` first, else the route's own) may delay the request -
never past the route's deadline: then the caller gets 504 - and may abort it with a
status, or reset the caller's connection.

TCP, like Toxiproxy's toxics, for connections of any protocol to a faulted service: the
decision is taken once per connection (`percent` samples connections) before anything is
read, and such a connection is relayed as raw TCP whatever it carries, so HTTP traffic
gets TCP faults too. A Toxic then delays, throttles, slices, truncates, swallows or resets
the data, in order.

Every injected fault is recorded in the exchange's flags: "DI" delay injected, "FI" fault
injected (abort, reset, or a TCP fault), "UT" when the delay ran into the deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Awaitable, Callable

from meshproxy.config import MeshState, TcpFault
from meshproxy.exchange import Exchange, LocalReply, fault_abort, timed_out
from meshproxy.resolver import ServiceAddresses
from meshproxy.sampling import Shares

RESET = "reset"  # apply()'s answer when the caller's connection (or HTTP/2 stream) is to be reset
# TCP kinds that only slow data down ("DI"); the others break the connection ("FI").
TCP_DELAYS = ("latency", "bandwidth", "slicer")


def now() -> float:
    """The clock of deadlines (see policy/routing.py)."""
    return time.monotonic()


class HttpFaults:
    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.shares = Shares()  # which requests a fault's percent picks
        state.subscribe(lambda config: self.shares.clear())

    async def apply(self, exchange: Exchange) -> LocalReply | str | None:
        """Inject the fault in force for this outbound request: None to go on, a LocalReply
        to answer with, or RESET to reset the caller. A delay is slept here."""
        if exchange.service is None or exchange.route is None:
            return None  # leaving the mesh
        fault = self.state.config.http_fault(exchange.service, exchange.route, self.state.identity.service)
        if fault is None:
            return None
        if fault.delay is not None and self.shares.pick(fault.delay, fault.delay.percent):
            exchange.flags.append("DI")
            exchange.note("fault.delay", delay_ms=round(fault.delay.seconds * 1000, 3))
            if not await _delay(fault.delay.seconds, exchange.deadline):
                return timed_out()
        if fault.abort is not None and self.shares.pick(fault.abort, fault.abort.percent):
            exchange.note("fault.abort", status=0 if fault.abort.reset else fault.abort.status)
            if fault.abort.reset:
                exchange.flags.append("FI")
                return RESET
            return fault_abort(fault.abort.status)
        return None


async def _delay(seconds: float, deadline: float | None) -> bool:
    """Sleep `seconds`, or until the deadline if that comes first; False when it did."""
    if deadline is not None and now() + seconds >= deadline:
        await asyncio.sleep(max(0.0, deadline - now()))
        return False
    await asyncio.sleep(seconds)
    return True


class TcpFaults:
    """Which connections get a TCP fault: decided once per connection, by the service
    its original destination address belongs to."""

    def __init__(self, state: MeshState, addresses: ServiceAddresses | None = None) -> None:
        self.state = state
        self.addresses = addresses or ServiceAddresses(state)
        self.shares = Shares()
        state.subscribe(lambda config: self.shares.clear())

    def start(self) -> None:
        self.addresses.start()

    def stop(self) -> None:
        self.addresses.stop()

    def for_connection(self, destination_ip: str) -> tuple[str, TcpFault] | None:
        """(service, fault) for a new outbound connection, or None."""
        name = self.addresses.service_at(destination_ip)
        service = self.state.config.services.get(name) if name else None
        if service is None:
            return None
        fault = self.state.config.tcp_fault(service, self.state.identity.service)
        return (service.name, fault) if fault is not None and self.shares.pick(fault, fault.percent) else None


Send = Callable[[bytes], Awaitable[None]]


class Toxic:
    """One connection's TCP fault, applied to every chunk in both directions."""

    def __init__(self, fault: TcpFault) -> None:
        self.fault = fault
        self.passed = 0  # limit-data: bytes relayed so far
        self.flag = "DI" if fault.kind in TCP_DELAYS else "FI"

    def at_start(self) -> str | None:
        """'reset' or 'close' the caller's connection before any data, or None."""
        if self.fault.kind == "reset":
            return "reset"
        if self.fault.kind == "limit-data" and self.fault.bytes <= 0:
            return "close"
        return None

    async def relay(self, data: bytes, send: Send) -> bool:
        """Pass `data` on through `send` as the fault allows; False: close the connection now."""
        fault = self.fault
        kind = fault.kind
        if kind == "blackhole":
            return True
        if kind == "latency":
            await asyncio.sleep(max(0.0, fault.latency + random.uniform(-fault.jitter, fault.jitter)))
        elif kind == "bandwidth" and fault.rate > 0:
            await asyncio.sleep(len(data) / fault.rate)
        elif kind == "limit-data":
            data = data[:max(0, fault.bytes - self.passed)]
            self.passed += len(data)
            if data:
                await send(data)
            return self.passed < fault.bytes
        elif kind == "slicer" and fault.bytes > 0:
            while len(data) > fault.bytes:
                await send(data[:fault.bytes])
                data = data[fault.bytes:]
                await asyncio.sleep(fault.latency)
        await send(data)
        return True
