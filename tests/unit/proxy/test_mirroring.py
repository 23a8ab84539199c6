"""Mirroring: copies to the mirror version, fire and forget, never touching the caller's answer."""

import asyncio
import json
import time

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from h2_backends import H2Backend
from http_backends import Backend, Reply, ok
from meshproxy import config
from meshproxy.addons import routing
from meshproxy.addons.mirroring import META_MIRRORED, Mirroring, shadow_authority
from meshproxy.addons.resilience import Resilience
from meshproxy.addons.routing import Routing
from meshproxy.addons.telemetry import Telemetry
from meshproxy.config import Identity, MeshState

V1_HOST, V2_HOST = "127.0.0.1", "127.0.0.2"


class Sidecar:
    def __init__(self, percent: float) -> None:
        self.state = MeshState(Identity("shop", "web-v1", "web", "v1"))
        self.state.apply(config.parse(json.dumps({"schema": 2, "version": "m", "services": {"payment": {
            "versions": [{"name": "v1", "host": V1_HOST}, {"name": "v2", "host": V2_HOST}],
            "routes": [{"name": "default", "split": [{"version": "v1", "weight": 100}],
                        "mirror": {"version": "v2", "percent": percent}}]}}})))
        self.routing = Routing(self.state)
        self.mirroring = Mirroring()
        self.resilience = Resilience(self.state)
        self.telemetry = Telemetry(self.state, access_log=None)

    async def call(self, port: int) -> http.HTTPFlow:
        flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=port, method=b"POST", content=b"order",
                                           headers=http.Headers(((b"Host", b"payment:%d" % port),))))
        flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
        self.routing.requestheaders(flow)
        self.mirroring.request(flow)
        await self.resilience.request(flow)
        self.telemetry.response(flow)
        return flow


def run(scenario) -> None:
    async def main():
        with taddons.context():
            await scenario()
    asyncio.run(main())


def test_a_copy_goes_to_the_mirror_and_the_answer_is_the_primarys():
    async def scenario():
        async with Backend(lambda n, r: Reply(body=b"primary")) as v1, \
                Backend(lambda n, r: Reply(500, b"mirror", delay=0.5), V2_HOST, v1.port) as v2:
            sidecar = Sidecar(100)
            started = time.monotonic()
            flow = await sidecar.call(v1.port)
            elapsed = time.monotonic() - started
            for _ in range(50):
                if v2.requests:
                    break
                await asyncio.sleep(0.01)

        assert (flow.response.status_code, flow.response.raw_content) == (200, b"primary")
        assert elapsed < 0.3  # the slow mirror did not delay the caller
        [copy] = v2.requests
        assert (copy.method, copy.target, copy.body) == ("POST", "/path", b"order")
        assert copy.headers["host"] == f"payment-shadow:{v1.port}"
        assert flow.metadata[META_MIRRORED] == "v2"
        assert sidecar.telemetry.stats()["mirrored"] == [
            {"destination_service": "payment", "destination_version": "v2", "count": 1}]

    run(scenario)


def test_percent_zero_sends_no_copy_and_a_dead_mirror_harms_nothing():
    async def scenario():
        async with Backend(ok) as v1, Backend(ok, V2_HOST, v1.port) as v2:
            flow = await Sidecar(0).call(v1.port)
            await asyncio.sleep(0.05)
            assert v2.requests == []
        assert META_MIRRORED not in flow.metadata
        async with Backend(ok) as v1:  # nothing listens on V2_HOST now
            sidecar = Sidecar(100)
            flow = await sidecar.call(v1.port)
            await asyncio.sleep(0.05)
        assert flow.response.status_code == 200
        assert not sidecar.mirroring._copies  # the failed copy is gone

    run(scenario)


def test_an_http2_request_is_mirrored_over_http2():
    async def scenario():
        async with H2Backend() as v1, H2Backend(host=V2_HOST, port=v1.port) as v2:
            sidecar = Sidecar(100)
            flow = tflow.tflow(req=tutils.treq(host="10.0.0.9", port=v1.port, method=b"POST", path=b"/grpc.Pay/Charge",
                                               authority=b"payment:%d" % v1.port, http_version=b"HTTP/2.0",
                                               content=b"order", headers=http.Headers()))
            flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
            sidecar.routing.requestheaders(flow)
            sidecar.mirroring.request(flow)
            await sidecar.resilience.request(flow)
            for _ in range(50):
                if v2.requests:
                    break
                await asyncio.sleep(0.01)

        assert (flow.response.status_code, flow.response.http_version) == (200, "HTTP/2.0")
        [copy] = v2.requests
        assert copy.header(":authority") == f"payment-shadow:{v1.port}"
        assert (copy.header(":path"), copy.body) == ("/grpc.Pay/Charge", b"order")
        assert flow.metadata[META_MIRRORED] == "v2"

    run(scenario)


def test_websocket_requests_are_not_mirrored():
    # The copy would go out as a plain GET and fail at the mirror.
    sidecar = Sidecar(100)
    request = tutils.treq(host="10.0.0.9", port=80, headers=http.Headers(
        ((b"Host", b"payment:80"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse(f"transparent@{routing.OUTBOUND_PORT}")
    sidecar.routing.requestheaders(flow)
    sidecar.mirroring.request(flow)
    assert META_MIRRORED not in flow.metadata
    assert not sidecar.mirroring._copies


def test_shadow_authority():
    assert shadow_authority("payment:8080") == "payment-shadow:8080"
    assert shadow_authority("payment") == "payment-shadow"
