"""config.parse() turns sidecar.json into typed values; MeshState hands them to listeners."""

import json

import pytest

from meshproxy import config
from meshproxy.config import Identity, MeshState, Service, SidecarConfig, Version

VALID = {
    "schema": 2,
    "project": "shop",
    "version": "abc123",
    "services": {
        "payment": {
            "versions": [{"name": "v1", "host": "payment-v1"}, {"name": "v2", "host": "payment-v2"}],
            "ports": [8080],
            "loadBalancer": "least-request",
        },
        "web": {"versions": [{"name": "v1", "host": "web"}]},
    },
}


def with_changes(**services) -> str:
    """VALID with some services replaced, as JSON text."""
    return json.dumps({**VALID, "services": {**VALID["services"], **services}})


def test_valid_config_is_typed():
    parsed = config.parse(json.dumps(VALID))

    assert parsed.version == "abc123"
    assert parsed.services["payment"] == Service(
        "payment", (Version("v1", "payment-v1"), Version("v2", "payment-v2")), (8080,), "least-request")


def test_defaults_for_optional_fields():
    web = config.parse(json.dumps(VALID)).services["web"]

    assert web.ports == ()
    assert web.load_balancer == "round-robin"


def test_by_host_maps_logical_names_only():
    # A call to a workload's own name (payment-v1) must go where the app sent it.
    parsed = config.parse(json.dumps(VALID))

    assert parsed.by_host == {"payment": parsed.services["payment"], "web": parsed.services["web"]}


def test_version_is_reported_as_text():
    assert config.parse(json.dumps({**VALID, "version": 42})).version == "42"


def test_empty_services_is_valid():
    parsed = config.parse(json.dumps({**VALID, "services": {}}))

    assert parsed == SidecarConfig("abc123", {}, {}, project="shop")


@pytest.mark.parametrize(("text", "message"), [
    ("", "not JSON"),
    ("{'schema': 1}", "not JSON"),
    ("[1, 2]", "expected a mapping with schema 2"),
    (json.dumps({**VALID, "schema": 1}), "expected a mapping with schema 2"),
    (json.dumps({k: v for k, v in VALID.items() if k != "schema"}), "expected a mapping with schema 2"),
    (json.dumps({k: v for k, v in VALID.items() if k != "services"}), "config: missing 'services'"),
    (json.dumps({k: v for k, v in VALID.items() if k != "version"}), "'version'"),
    (json.dumps({**VALID, "services": ["payment"]}), "config: 'services' has the wrong type"),
    (with_changes(payment={"ports": [8080]}), "'versions'"),
    (with_changes(payment={"versions": [{"name": "v1"}]}), "'host'"),
    (with_changes(payment={"versions": [{"host": "payment-v1"}]}), "'name'"),
    (with_changes(payment={"versions": "v1"}), "services.payment: 'versions' has the wrong type"),
    (with_changes(payment={"versions": []}), "service 'payment' has no versions"),
    (with_changes(payment={"versions": [{"name": "v1", "host": "payment-v1"}], "loadBalancer": "fastest"}),
     "unknown loadBalancer 'fastest'"),
])
def test_bad_input_is_rejected_with_a_reason(text, message):
    with pytest.raises(ValueError) as raised:
        config.parse(text)

    assert message in str(raised.value)


def test_identity_from_env():
    env = {"MESH_PROJECT": "shop", "MESH_WORKLOAD": "web-v1", "MESH_SERVICE": "web", "MESH_VERSION": "v1"}

    assert Identity.from_env(env) == Identity("shop", "web-v1", "web", "v1")


def test_identity_service_defaults_to_workload():
    assert Identity.from_env({"MESH_WORKLOAD": "cache"}) == Identity("", "cache", "cache", "")


def test_config_path_follows_env():
    assert str(config.config_path({"MESH_CONFIG_DIR": "/x/y"})) == "/x/y/sidecar.json"
    assert str(config.config_path({})) == "/etc/meshcli/sidecar.json"


def test_subscribe_calls_listener_now_and_on_apply():
    state = MeshState(Identity("shop", "web", "web", "v1"))
    seen = []
    state.subscribe(seen.append)
    assert seen == [config.EMPTY]
    assert not state.loaded

    parsed = config.parse(json.dumps(VALID))
    state.last_error = "an earlier file was bad"
    state.apply(parsed)

    assert seen == [config.EMPTY, parsed]
    assert state.config is parsed
    assert state.loaded
    assert state.last_error is None


def test_late_subscriber_sees_the_current_config():
    state = MeshState(Identity("shop", "web", "web", "v1"))
    parsed = config.parse(json.dumps(VALID))
    state.apply(parsed)
    seen = []

    state.subscribe(seen.append)

    assert seen == [parsed]
