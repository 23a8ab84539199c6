"""`meshcli export istio` (meshcli/istio_export.py): every resource validates against Istio's CRD
schemas, has what Istio needs (hosts, the subsets its routes name, weights summing to 100), and
every setting without an Istio equivalent is reported at its line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from istio_files import needs_corpus, EVERY_FEATURE_MESH, SHOP_COMPOSE, schema_errors
from meshcli import fault_layer, istio_export, workspace

REPO = Path(__file__).resolve().parents[2]


def load(files, mesh_text: str | None):
    compose = files.write("compose.yaml", SHOP_COMPOSE)
    if mesh_text is not None:
        files.write("mesh.yaml", mesh_text)
    return workspace.load(workspace.locate(compose))


@pytest.fixture
def every_feature(files):
    return load(files, EVERY_FEATURE_MESH)


def demo():
    return workspace.load(workspace.locate(REPO / "compose" / "compose.yaml"))


@needs_corpus
def test_every_resource_of_the_every_feature_mesh_and_the_demo_validates_against_its_crd(every_feature):
    for loaded, kinds in ((every_feature, {"VirtualService", "DestinationRule", "PeerAuthentication",
                                           "AuthorizationPolicy"}),
                          (demo(), {"VirtualService", "DestinationRule"})):
        result = istio_export.export(loaded.mesh, loaded.config)
        assert {r.kind for r in result.resources} == kinds
        for resource in result.resources:
            assert schema_errors(resource.manifest) == [], resource.manifest


@needs_corpus
@pytest.mark.parametrize("break_it, expected", [
    (lambda vs: vs["spec"]["http"][0].update(bogus=1), "Additional properties"),
    (lambda vs: vs["spec"]["http"][0]["route"][0].update(weight="ten"), "is not of type 'integer'"),
    (lambda vs: vs["spec"]["http"][0]["fault"]["delay"].update(fixedDelay="0s"), "greater than 1ms"),
    (lambda vs: vs["spec"]["http"][0]["retries"].update(attempts=2**31), "is greater than the maximum"),
])
def test_the_schema_check_catches_a_broken_resource(every_feature, break_it, expected):
    result = istio_export.export(every_feature.mesh, every_feature.config)
    [payment] = [r.manifest for r in result.resources if r.kind == "VirtualService" and r.name == "payment"]
    broken = copy.deepcopy(payment)
    break_it(broken)
    assert any(expected in error for error in schema_errors(broken)), schema_errors(broken)


@needs_corpus
@pytest.mark.parametrize("break_it, expected", [
    (lambda spec: spec.update(targetRef={"kind": "Service", "name": "payment"}), "only one of"),
    (lambda spec: spec["rules"][0]["from"][0]["source"].update(serviceAccounts=["x"]), "serviceAccounts"),
    (lambda spec: spec.update(action="MAYBE"), "is not one of"),
])
def test_the_schema_check_catches_a_broken_authorization_policy(every_feature, break_it, expected):
    result = istio_export.export(every_feature.mesh, every_feature.config)
    [policy] = [r.manifest for r in result.resources if r.name == "payment-callers"]
    broken = copy.deepcopy(policy)
    break_it(broken["spec"])
    assert any(expected in error for error in schema_errors(broken)), schema_errors(broken)


def test_routes_name_existing_subsets_weights_sum_to_100_and_hosts_are_the_services(every_feature):
    result = istio_export.export(every_feature.mesh, every_feature.config)
    rules = {r.manifest["spec"]["host"]: r.manifest["spec"] for r in result.resources if r.kind == "DestinationRule"}
    services = {r.name: r.manifest["spec"] for r in result.resources if r.kind == "VirtualService"}
    assert set(rules) == set(services) == set(every_feature.mesh.services)
    for name, spec in services.items():
        assert spec["hosts"] == [name]
        subsets = {s["name"] for s in rules[name]["subsets"]}
        for route in spec["http"]:
            destinations = route["route"]
            assert all(d["destination"]["host"] == name for d in destinations)
            assert {d["destination"]["subset"] for d in destinations if "subset" in d["destination"]} <= subsets
            if len(destinations) > 1:
                assert sum(d["weight"] for d in destinations) == 100
            if "mirror" in route:
                assert route["mirror"]["subset"] in subsets
        assert "match" not in spec["http"][-1]  # the last route takes every other request, as locally


def test_the_payment_rules_in_istio_terms(every_feature):
    result = istio_export.export(every_feature.mesh, every_feature.config, namespace="shop")
    manifests = {(r.kind, r.name): r.manifest for r in result.resources}
    rule = manifests["DestinationRule", "payment"]
    assert rule["metadata"]["namespace"] == "shop"
    assert rule["spec"]["subsets"] == [{"name": "v1", "labels": {"version": "v1"}},
                                       {"name": "v2", "labels": {"version": "v2"}}]
    assert rule["spec"]["trafficPolicy"] == {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "connectionPool": {"tcp": {"maxConnections": 100},
                           "http": {"http2MaxRequests": 100, "http1MaxPendingRequests": 10,
                                    "maxRequestsPerConnection": 0}},
        "outlierDetection": {"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3, "baseEjectionTime": "45s",
                             "maxEjectionPercent": 50}}
    canary, slow, default = manifests["VirtualService", "payment"]["spec"]["http"]
    assert canary["name"] == "canary-testers" and canary["match"][0] == {
        "uri": {"prefix": "/api"}, "method": {"regex": "GET|POST"},
        "headers": {"x-canary": {"exact": "true"}, "x-debug": {}, "x-trace": {"prefix": "abc"}},
        "queryParams": {"debug": {"exact": "1"}, "id": {"regex": "[0-9]+"}, "trace": {"regex": ".*"}},
        "sourceLabels": {"app": "frontend"}}
    assert canary["match"][1] == {"uri": {"regex": "/v[0-9]+/.*"}, "method": {"exact": "PUT"}}
    assert canary["route"] == [{"destination": {"host": "payment", "subset": "v2"}}]
    assert canary["timeout"] == "1s"
    # What the route leaves out comes from the service level, written out for Istio.
    assert canary["retries"] == default["retries"] == {
        "attempts": 3, "perTryTimeout": "0.5s",
        "retryOn": "5xx,gateway-error,connect-failure,reset,retriable-status-codes,409", "backoff": "0.05s"}
    assert canary["fault"] == default["fault"] == {"delay": {"fixedDelay": "1.5s", "percentage": {"value": 10.0}},
                                                   "abort": {"httpStatus": 503, "percentage": {"value": 5.5}}}
    assert canary["mirror"] == {"host": "payment", "subset": "v2"} and canary["mirrorPercentage"] == {"value": 25.0}
    assert slow["retries"] == {"attempts": 0} and slow["fault"] == {
        "delay": {"fixedDelay": "3s", "percentage": {"value": 100.0}}}
    assert default["name"] == "default" and default["timeout"] == "2s"
    assert default["route"] == [{"destination": {"host": "payment", "subset": "v1"}, "weight": 90},
                                {"destination": {"host": "payment", "subset": "v2"}, "weight": 10}]
    # A service without rules routes to all its versions and, like the local sidecars, does not retry.
    [frontend] = manifests["VirtualService", "frontend"]["spec"]["http"]
    assert frontend == {"name": "default", "route": [{"destination": {"host": "frontend"}}], "retries": {"attempts": 0}}


def test_the_security_rules_in_istio_terms(every_feature):
    result = istio_export.export(every_feature.mesh, every_feature.config, namespace="shop")
    manifests = {(r.kind, r.name): r.manifest for r in result.resources}
    security = {key: m for key, m in manifests.items() if m["apiVersion"] == "security.istio.io/v1"}
    assert list(security) == [("PeerAuthentication", "default"), ("PeerAuthentication", "orders"),
                              ("AuthorizationPolicy", "orders-anyone"), ("PeerAuthentication", "payment"),
                              ("AuthorizationPolicy", "payment-no-debug"), ("AuthorizationPolicy", "payment-callers")]
    # The mesh-wide mode: every workload of the namespace (no selector); a service's mode: its pods.
    assert manifests["PeerAuthentication", "default"]["spec"] == {"mtls": {"mode": "PERMISSIVE"}}
    assert manifests["PeerAuthentication", "payment"]["spec"] == {"selector": {"matchLabels": {"app": "payment"}},
                                                                  "mtls": {"mode": "STRICT"}}
    assert manifests["AuthorizationPolicy", "orders-anyone"]["spec"] == {
        "selector": {"matchLabels": {"app": "orders"}}, "action": "ALLOW", "rules": [{}]}  # {}: every call
    assert manifests["AuthorizationPolicy", "payment-no-debug"]["spec"]["rules"] == [
        {"to": [{"operation": {"paths": ["/debug*", "*.bak"]}}]},
        {"from": [{"source": {"notPrincipals": ["*"]}}], "to": [{"operation": {"methods": ["POST", "PUT"]}}]}]
    callers, healthz = manifests["AuthorizationPolicy", "payment-callers"]["spec"]["rules"]
    # Sources are an OR: principals in the mesh's trust domain and the namespace, no identity its own entry.
    assert callers["from"] == [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}},
                               {"source": {"notPrincipals": ["*"]}},
                               {"source": {"principals": ["cluster.local/ns/legacy/sa/batch",
                                                          "cluster.local/ns/shop/sa/orders"]}}]
    assert callers["to"] == [{"operation": {"methods": ["GET", "POST"], "paths": ["/pay"], "ports": ["8080", "9090"]}}]
    assert callers["when"] == [{"key": "request.headers[x-env]", "values": ["prod"]},
                               {"key": "request.headers[x-file]", "values": ["*.json"]},
                               {"key": "request.headers[x-tenant]", "values": ["acme-*"]},
                               {"key": "request.headers[x-user]", "values": ["*"]}]
    assert healthz == {"to": [{"operation": {"paths": ["/healthz"]}}]}
    # Auto mTLS needs no client-side tls for STRICT or PERMISSIVE; callers of a DISABLE service send plain text.
    assert "tls" not in manifests["DestinationRule", "payment"]["spec"]["trafficPolicy"]
    assert "tls" not in manifests["DestinationRule", "frontend"]["spec"]["trafficPolicy"]
    assert manifests["DestinationRule", "orders"]["spec"]["trafficPolicy"]["tls"] == {"mode": "DISABLE"}
    assert [(d.code, d.line, d.message.split(":")[0]) for d in result.diagnostics] == [
        ("MESH0402", 50, "payment"),  # STRICT: Istio takes outside traffic through a gateway
        ("MESH0402", 73, "orders"),  # DISABLE: exported twice
    ]


SECURITY_DIFFERENCES = """
apiVersion: meshcli/v1
mtls:
  mode: DISABLE
  trustDomain: corp.example
  certificateLifetime: 1h
services:
  payment:
    authorization:
      - name: Only Orders
        action: ALLOW
        rules:
          - source: orders
            path: {exact: "/a*b"}
"""


def test_security_settings_istio_has_no_resource_for_are_reported_at_their_line(files):
    loaded = load(files, SECURITY_DIFFERENCES)
    result = istio_export.export(loaded.mesh, loaded.config)
    assert [(d.code, d.line, d.message.split(" ")[0]) for d in result.diagnostics] == [
        ("MESH0402", 3, "mtls.mode:"),  # DISABLE: PeerAuthentication and DestinationRule tls
        ("MESH0401", 4, "mtls.trustDomain"),
        ("MESH0401", 5, "mtls.certificateLifetime"),
        ("MESH0402", 9, "payment"),  # the policy's name as a Kubernetes name
        ("MESH0402", 9, "payment"),  # principals in namespace default
        ("MESH0402", 13, "payment"),  # an exact path with a *
    ]
    manifests = {(r.kind, r.name): r.manifest for r in result.resources}
    policy = manifests["AuthorizationPolicy", "payment-only-orders"]["spec"]
    assert policy["rules"][0]["from"] == [{"source": {"principals": ["corp.example/ns/default/sa/orders"]}}]
    assert all(m["spec"]["trafficPolicy"]["tls"] == {"mode": "DISABLE"}
               for (kind, _), m in manifests.items() if kind == "DestinationRule")


def test_every_mapped_mesh_file_gives_no_warning(every_feature):
    assert [d for d in istio_export.export(every_feature.mesh, every_feature.config).diagnostics
            if d.level.value == "warning"] == []


UNEXPORTABLE = """
apiVersion: meshcli/v1
services:
  payment:
    ports: [8080]
    retries: {attempts: 2, retriableStatusCodes: [409]}
    routes:
      - name: resets
        match:
          - query: {page: {prefix: "1"}}
        fault:
          abort: {reset: true, percent: 10}
    tcpFault: {kind: latency, latency: 100ms}
"""


def test_what_istio_cannot_say_is_reported_at_its_line(files):
    loaded = load(files, UNEXPORTABLE)
    result = istio_export.export(loaded.mesh, loaded.config)
    found = [(d.code, d.line, d.message.split(":")[1].strip().split(" ")[0]) for d in result.diagnostics]
    assert found == [
        ("MESH0402", 4, "ports"),
        ("MESH0402", 5, "retries"),  # retryNonIdempotent: false has no Istio equivalent
        ("MESH0401", 5, "retries.retriableStatusCodes"),
        ("MESH0402", 9, 'query'),
        ("MESH0401", 11, "fault.abort.reset"),
        ("MESH0401", 12, "tcpFault"),
    ]
    assert all(d.file == files.root / "mesh.yaml" for d in result.diagnostics)
    [resets, _] = [r for r in result.resources if r.name == "payment" and r.kind == "VirtualService"][0] \
        .manifest["spec"]["http"]
    assert "fault" not in resets and resets["match"] == [{"queryParams": {"page": {"regex": "1.*"}}}]


def test_runtime_faults_are_reported_as_not_exported(files, monkeypatch):
    loaded = load(files, None)
    monkeypatch.setattr(fault_layer, "active", lambda ws: ["one fault"])
    [note] = istio_export.export_loaded(loaded).diagnostics
    assert note.code == "MESH0401" and "1 runtime faults set with `meshcli fault` is not exported" in note.message
    assert note.file == fault_layer.path(loaded.workspace)


def test_one_file_per_resource_or_one_stream(files, every_feature, tmp_path):
    result = istio_export.export(every_feature.mesh, every_feature.config)
    paths = istio_export.write(result, tmp_path / "istio")
    assert sorted(p.name for p in paths) == sorted(
        [f"{kind}-{name}.yaml" for kind in ("destinationrule", "virtualservice") for name in ("frontend", "orders",
                                                                                              "payment")]
        + ["peerauthentication-default.yaml", "peerauthentication-orders.yaml", "peerauthentication-payment.yaml",
           "authorizationpolicy-orders-anyone.yaml", "authorizationpolicy-payment-no-debug.yaml",
           "authorizationpolicy-payment-callers.yaml"])
    assert [yaml.safe_load(p.read_text()) for p in paths] == [r.manifest for r in result.resources]
    assert list(yaml.safe_load_all(istio_export.to_yaml(result.resources))) == [r.manifest for r in result.resources]
