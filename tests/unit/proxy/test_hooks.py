"""A misspelled hook never fires and nothing says so: every public method of our mitmproxy
adapters must be a mitmproxy hook. Also: the adapters hold the sidecar's own policy
instances, so both paths share one circuit breaker, one outlier count, one sample bag."""

import inspect

import pytest
from mitmproxy import eventsequence, hooks  # noqa: F401  (eventsequence imports every layer's hooks)
from mitmproxy.addons import core, proxyserver

from meshproxy.addons import addons
from meshproxy.config import MeshState
from meshproxy.sidecar import Sidecar
from sidecar_kit import WEB

LIFECYCLE = {"load", "configure", "running", "done"}


def pipeline(sidecar: Sidecar | None = None) -> list:
    return addons(sidecar or Sidecar(MeshState(WEB)))


def our_addons() -> list:
    return [a for a in pipeline() if not isinstance(a, (core.Core, proxyserver.Proxyserver))]


def public_methods(addon) -> list[str]:
    return [name for name, member in inspect.getmembers(type(addon), callable)
            if not name.startswith("_") and not inspect.isclass(member)]


def test_the_pipeline_is_mitmproxys_core_then_ours():
    assert [type(a).__name__ for a in pipeline()] == [
        "Core", "Proxyserver", "ProtocolDetection", "Routing", "Faults", "Mirroring", "Resilience", "Telemetry"]


def test_the_adapters_hold_the_sidecars_policies():
    sidecar = Sidecar(MeshState(WEB))
    by_name = {type(a).__name__: a for a in pipeline(sidecar)}

    assert by_name["Routing"].router is sidecar.router
    assert by_name["Faults"].faults is sidecar.http_faults
    assert by_name["Mirroring"].mirroring is sidecar.mirroring
    assert by_name["Mirroring"].pool is sidecar.pool
    assert by_name["Resilience"].resilience is sidecar.resilience
    assert by_name["Resilience"].pool is sidecar.pool
    assert by_name["Resilience"].h2_pool is by_name["Mirroring"].h2_pool
    assert by_name["Telemetry"].telemetry is sidecar.telemetry


def test_lifecycle_methods_are_hooks_too():
    assert LIFECYCLE <= set(hooks.all_hooks)


@pytest.mark.parametrize("addon", our_addons(), ids=lambda a: type(a).__name__)
def test_every_public_method_is_a_hook(addon):
    cls = type(addon).__name__
    unknown = [name for name in public_methods(addon) if name not in hooks.all_hooks and name not in LIFECYCLE]

    assert unknown == [], f"{cls}: not mitmproxy hooks (misspelled?): {unknown}"


@pytest.mark.parametrize("addon", our_addons(), ids=lambda a: type(a).__name__)
def test_every_addon_handles_something(addon):
    assert any(name in hooks.all_hooks for name in public_methods(addon))


def test_the_check_catches_a_misspelling():
    class Misspelled:
        def request(self, flow): ...
        def tcp_messages(self, flow): ...

    assert [n for n in public_methods(Misspelled()) if n not in hooks.all_hooks] == ["tcp_messages"]


def test_the_expected_hooks_are_there():
    expected = {
        "ProtocolDetection": {"next_layer", "server_connect"},
        "Routing": {"requestheaders", "response", "error"},
        "Faults": {"request"},
        "Mirroring": {"request"},
        "Resilience": {"request"},
        "Telemetry": {"response", "error", "tcp_start", "tcp_message", "tcp_end", "tcp_error"},
    }

    assert {type(a).__name__: set(public_methods(a)) & set(hooks.all_hooks) for a in our_addons()} == expected
