"""A misspelled hook never fires and nothing says so: every public method of our addons
must be a mitmproxy hook (or one of the few methods other code calls on purpose)."""

import inspect

import pytest
from mitmproxy import eventsequence, hooks  # noqa: F401  (eventsequence imports every layer's hooks)
from mitmproxy.addons import core, proxyserver

from meshproxy.addons import addons
from meshproxy.config import Identity, MeshState

LIFECYCLE = {"load", "configure", "running", "done"}
# Public on purpose, called by our own code rather than by mitmproxy.
NOT_HOOKS = {
    ("ConfigWatcher", "reload"),  # the watchdog thread and load()/running() call it
    ("Telemetry", "stats"),  # the /stats admin endpoint reads it
    ("Faults", "tcp_fault_for"),  # ProtocolDetection asks it per connection
}


def our_addons() -> list:
    pipeline = addons(MeshState(Identity("shop", "web-v1", "web", "v1")))
    return [a for a in pipeline if not isinstance(a, (core.Core, proxyserver.Proxyserver))]


def public_methods(addon) -> list[str]:
    return [name for name, member in inspect.getmembers(type(addon), callable)
            if not name.startswith("_") and not inspect.isclass(member)]


def test_the_pipeline_is_mitmproxys_core_then_ours():
    pipeline = addons(MeshState(Identity("shop", "web-v1", "web", "v1")))

    assert [type(a).__name__ for a in pipeline] == [
        "Core", "Proxyserver", "ConfigWatcher", "ProtocolDetection", "Routing", "Faults", "Mirroring", "Resilience",
        "Telemetry"]


def test_lifecycle_methods_are_hooks_too():
    assert LIFECYCLE <= set(hooks.all_hooks)


@pytest.mark.parametrize("addon", our_addons(), ids=lambda a: type(a).__name__)
def test_every_public_method_is_a_hook(addon):
    cls = type(addon).__name__
    unknown = [name for name in public_methods(addon)
               if name not in hooks.all_hooks and name not in LIFECYCLE and (cls, name) not in NOT_HOOKS]

    assert unknown == [], f"{cls}: not mitmproxy hooks (misspelled?): {unknown}"


@pytest.mark.parametrize("addon", our_addons(), ids=lambda a: type(a).__name__)
def test_every_addon_handles_something(addon):
    assert any(name in hooks.all_hooks for name in public_methods(addon))


def test_exceptions_still_exist():
    """The allow-list must not outlive the methods it excuses."""
    by_name = {type(a).__name__: a for a in our_addons()}

    for cls, name in NOT_HOOKS:
        assert name in public_methods(by_name[cls]), (cls, name)
        assert name not in hooks.all_hooks, f"{cls}.{name} is a hook now: drop it from NOT_HOOKS"


def test_the_check_catches_a_misspelling():
    class Misspelled:
        def request(self, flow): ...
        def tcp_messages(self, flow): ...

    assert [n for n in public_methods(Misspelled()) if n not in hooks.all_hooks] == ["tcp_messages"]


def test_the_expected_hooks_are_there():
    expected = {
        "ConfigWatcher": {"load", "running", "done"},
        "ProtocolDetection": {"next_layer", "server_connect"},
        "Routing": {"requestheaders", "response", "error"},
        "Faults": {"running", "done", "client_disconnected", "request", "tcp_start", "tcp_message"},
        "Mirroring": {"request", "done"},
        "Resilience": {"request", "done"},
        "Telemetry": {"response", "error", "tcp_start", "tcp_message", "tcp_end", "tcp_error"},
    }

    assert {type(a).__name__: set(public_methods(a)) & set(hooks.all_hooks) for a in our_addons()} == expected
