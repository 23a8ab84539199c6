"""`meshcli import istio` (meshcli/istio_import.py): round trips through Istio's resources, every
Bookinfo networking file, merging into a commented mesh.yaml, and what is reported instead of
guessed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from istio_files import needs_corpus, BOOKINFO, BOOKINFO_COMPOSE, EVERY_FEATURE_MESH, SHOP_COMPOSE
from mesh_files import Files, diagnostics_of
from meshcli import istio_export, istio_import, istio_model, mesh_config, workspace, yaml_source
from meshcli.cli.main import main


def project(root: Path, compose: str, mesh_text: str | None = None):
    files = Files(root)
    path = files.write("compose.yaml", compose)
    if mesh_text is not None:
        files.write("mesh.yaml", mesh_text)
    return workspace.load(workspace.locate(path))


def imported_mesh(loaded, imported: istio_import.Imported, text: str = ""):
    """The resolved mesh of the mesh file the import writes (validated as `meshcli import` does)."""
    path = loaded.workspace.mesh_path
    doc = yaml_source.load(path, imported.transform(text, path))
    return mesh_config.resolve(mesh_config.parse(doc), loaded.project)


def policies(mesh):
    return {name: (s.load_balancer, s.policy) for name, s in mesh.services.items()}


def test_import_of_export_is_the_mesh_file_for_every_exportable_feature(tmp_path):
    original = project(tmp_path / "shop", SHOP_COMPOSE, EVERY_FEATURE_MESH)
    exported = tmp_path / "istio.yaml"
    exported.write_text(istio_export.to_yaml(istio_export.export(original.mesh, original.config).resources))
    fresh = project(tmp_path / "again", SHOP_COMPOSE)
    imported = istio_import.read([exported], fresh.mesh)
    assert [d for d in imported.diagnostics if d.level.value == "warning"] == []
    mesh = imported_mesh(fresh, imported)
    assert policies(mesh) == policies(original.mesh)
    assert mesh.security == original.mesh.security
    assert any(s.policy.authorization for s in mesh.services.values()) and mesh.services["orders"].policy.mtls


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory):
    return project(tmp_path_factory.mktemp("bookinfo") / "bookinfo", BOOKINFO_COMPOSE)


def semantic(manifests: list[dict], hosts: set[str]) -> dict:
    """What a Bookinfo rule means: per host, the routes in order (matches, destinations and weights,
    faults), the subsets and the load balancer."""
    meaning = {}
    for m in manifests:
        spec = m["spec"]
        if m["kind"] == "VirtualService" and spec["hosts"][0] in hosts:
            meaning["vs", spec["hosts"][0]] = [(
                r.get("match"),
                sorted((d["destination"].get("subset"), d.get("weight", 100)) for d in r["route"]),
                _fault(r.get("fault")),
            ) for r in spec["http"]]
        elif m["kind"] == "DestinationRule" and spec["host"] in hosts:
            meaning["dr", spec["host"]] = (sorted((s["name"], s["labels"]["version"]) for s in spec["subsets"]),
                                          spec.get("trafficPolicy", {}).get("loadBalancer"))
    return meaning


def _fault(fault: dict | None):
    if not fault:
        return None
    delay, abort = fault.get("delay"), fault.get("abort")
    return ((mesh_config.durations.parse_ms(delay["fixedDelay"]), delay["percentage"]["value"]) if delay else None,
            (abort["httpStatus"], abort["percentage"]["value"]) if abort else None)


ROUND_TRIPS = ["destination-rule-reviews.yaml", "virtual-service-all-v1.yaml", "virtual-service-details-v2.yaml",
               "virtual-service-ratings-db.yaml", "virtual-service-ratings-test-abort.yaml",
               "virtual-service-ratings-test-delay.yaml", "virtual-service-reviews-50-v3.yaml",
               "virtual-service-reviews-80-20.yaml", "virtual-service-reviews-90-10.yaml",
               "virtual-service-reviews-jason-v2-v3.yaml", "virtual-service-reviews-test-v2.yaml",
               "virtual-service-reviews-v2-v3.yaml", "virtual-service-reviews-v3.yaml"]
# file -> the warnings it must give (code, line): what the mesh has no equivalent for.
WARNINGS = {
    "bookinfo-gateway.yaml": [("MESH0412", 1), ("MESH0412", 25)],
    "certmanager-gateway.yaml": [("MESH0412", 1), ("MESH0412", 25)],
    "destination-rule-all.yaml": [("MESH0415", 42), ("MESH0415", 45)],
    # tls ISTIO_MUTUAL is auto mTLS (a note); subsets v2-mysql and v2-mysql-vm select no version.
    "destination-rule-all-mtls.yaml": [("MESH0415", 51), ("MESH0415", 54)],
    "egress-rule-google-apis.yaml": [("MESH0412", 1), ("MESH0414", 23), ("MESH0414", 38)],
    "fault-injection-details-v1.yaml": [("MESH0413", 18)],  # a route after a catch-all is never used
    "virtual-service-ratings-mysql.yaml": [("MESH0413", 25)],  # subset v2-mysql: no such version
    "virtual-service-ratings-mysql-vm.yaml": [("MESH0413", 25)],
    "bookinfo-kube.yaml": [("MESH0412", line) for line in (32, 46, 53, 83, 97, 104, 134, 148, 155, 195, 235, 278,
                                                           292, 299)],
}


@needs_corpus
def test_every_bookinfo_file_is_either_a_round_trip_or_warned_about():
    assert sorted(ROUND_TRIPS + list(WARNINGS)) == sorted(p.name for p in BOOKINFO.glob("*.yaml"))


@needs_corpus
@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_bookinfo_rules_round_trip(name, bookinfo):
    path = BOOKINFO / name
    imported = istio_import.read([path], bookinfo.mesh)
    assert [d for d in imported.diagnostics if d.level.value == "warning"] == []
    assert all(r.imported for r in imported.resources)
    mesh = imported_mesh(bookinfo, imported)
    original = list(yaml.safe_load_all(path.read_text()))
    hosts = {m["spec"].get("host") or m["spec"]["hosts"][0] for m in original if m}
    exported = [r.manifest for r in istio_export.export(mesh, None).resources]
    expected = semantic([m for m in original if m], hosts)
    assert {key: semantic(exported, hosts).get(key) for key in expected} == expected


@needs_corpus
@pytest.mark.parametrize("name", WARNINGS)
def test_bookinfo_files_with_what_the_mesh_lacks_give_their_warnings(name, bookinfo):
    imported = istio_import.read([BOOKINFO / name], bookinfo.mesh)
    warnings = [(d.code, d.line) for d in imported.diagnostics if d.level.value == "warning"]
    assert warnings == WARNINGS[name]
    assert all(d.file == BOOKINFO / name and d.column for d in imported.diagnostics)


@needs_corpus
def test_the_delay_file_imports_as_a_route_that_inherits_its_version(bookinfo):
    imported = istio_import.read([BOOKINFO / "virtual-service-ratings-test-delay.yaml"], bookinfo.mesh)
    assert imported.transform("", Path("mesh.yaml")) == textwrap.dedent("""\
        apiVersion: meshcli/v1
        services:
          ratings:
            to: v1
            routes:
              - match:
                  - headers:
                      end-user: {exact: jason}
                fault:
                  delay: {fixed: 7s, percent: 100}
        """)


COMMENTED = """\
# our rules
apiVersion: meshcli/v1
services:
  reviews:
    ports: [9080]  # informational
    # the old split, replaced by the import
    split: {v1: 50, v2: 50}
    timeout: 1s
    # keep the breaker
    circuitBreaker: {maxConnections: 10}
  ratings:
    timeout: 3s  # untouched
"""


@needs_corpus
def test_merge_replaces_the_routing_of_imported_services_and_keeps_everything_else(bookinfo):
    imported = istio_import.read([BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml"], bookinfo.mesh)
    assert imported.transform(COMMENTED, Path("mesh.yaml")) == """\
# our rules
apiVersion: meshcli/v1
services:
  reviews:
    ports: [9080]  # informational
    to: v3
    routes:
      - match:
          - headers:
              end-user: {exact: jason}
        to: v2
    # keep the breaker
    circuitBreaker: {maxConnections: 10}
  ratings:
    timeout: 3s  # untouched
"""


def istio_file(root: Path, text: str) -> Path:
    path = root / "rules.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


REVIEWS_ROUTES = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n" \
                 "  hosts: [reviews]\n  http:\n"


def reviews_routes(root: Path, http: str) -> Path:
    """A file with one VirtualService for reviews: `http` is the YAML of its routes (at lines 7 on)."""
    return istio_file(root, REVIEWS_ROUTES + textwrap.indent(textwrap.dedent(http).strip("\n"), "  ") + "\n")


def test_what_the_sidecars_cannot_do_is_reported_and_its_route_left_out(tmp_path, bookinfo):
    path = istio_file(tmp_path, """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews, namespace: shop}
        spec:
          hosts: [reviews.shop.svc.cluster.local]
          http:
          - match:
            - port: 9080
            route: [{destination: {host: reviews, subset: v2}}]
          - match: [{uri: {prefix: /old}}]
            rewrite: {uri: /v2}
            route: [{destination: {host: reviews, subset: v2}}]
          - match:
            - headers: {end-user: {exact: ann}}
            fault: {abort: {grpcStatus: UNAVAILABLE}}
            route: [{destination: {host: reviews, subset: v1}}]
          - route: [{destination: {host: ratings}}]
          - route: [{destination: {host: reviews-v3}}]
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default}
        spec: {mtls: {mode: STRICT}}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-all}
        spec: {}
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    assert [(d.code, d.line, d.message.split(": ", 1)[1]) for d in imported.diagnostics if d.code != "MESH0417"] == [
        ("MESH0413", 8, "route 1: matching on port is not supported: route not imported"),
        ("MESH0413", 11, "route 2: rewrite is not supported by the sidecars: route not imported"),
        ("MESH0413", 15, "route 3: only an httpStatus abort is supported (no gRPC status or HTTP/2 error): "
                         "route not imported"),
        ("MESH0413", 17, 'route 4: sends the requests for reviews to another host, "ratings": not supported (a '
                         "route chooses between a service's versions): route not imported"),
        ("MESH0413", 18, "route 5 is never used: route 4 before it takes every request: not imported"),
        ("MESH0416", 25, "applies to every workload of the namespace (no selector): mesh.yaml's policies are per "
                         "service (write it under each service): not imported"),
    ]
    # Route 4 takes every request in Istio, so route 5 (to the compose service of version v3, a
    # kompose-style host) is never used either; nothing was imported for reviews. The
    # namespace-wide PeerAuthentication is the mesh-wide mode.
    assert imported.services == {}
    assert imported.mtls == {"mode": "STRICT"}


def test_subsets_select_versions_by_version_or_kompose_label(tmp_path, bookinfo):
    path = istio_file(tmp_path, """
        apiVersion: networking.istio.io/v1beta1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          subsets:
          - {name: new, labels: {io.kompose.service: reviews-v3}}
          - {name: old, labels: {version: v1}}
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - {destination: {host: reviews, subset: new}, weight: 75}
            - {destination: {host: reviews, subset: old}, weight: 25}
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    assert imported.services["reviews"]["split"] == {"v1": 25, "v3": 75}


@pytest.mark.parametrize("text, expected", [
    ("- just a list\n", "1:1: error MESH0411: not a Kubernetes resource"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: [1]\n",
     "4:1: error MESH0411: VirtualService x: spec must be a mapping"),
    ("kind: VirtualService\nspec: {hosts: [\n", "error MESH0001: invalid YAML"),
])
def test_a_file_that_is_not_istio_resources_is_an_error_with_its_line(tmp_path, bookinfo, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    [problem] = diagnostics_of(istio_import.read, [path], bookinfo.mesh)
    assert expected in str(problem)


@needs_corpus
def test_cli_refuses_to_replace_a_mesh_file_without_merge_and_never_writes_an_invalid_one(tmp_path, monkeypatch,
                                                                                           capsys):
    loaded = project(tmp_path / "bookinfo", BOOKINFO_COMPOSE, COMMENTED)
    monkeypatch.chdir(loaded.project.directory)
    mesh = loaded.workspace.mesh_path
    vs = str(BOOKINFO / "virtual-service-reviews-v3.yaml")
    assert main(["import", "istio", vs]) == 2
    assert "mesh.yaml exists" in capsys.readouterr().err and mesh.read_text() == COMMENTED
    # Two routes of one name: an invalid mesh file (MESH0111), so nothing is written.
    twice = reviews_routes(tmp_path, """
          - {name: same, match: [{uri: {prefix: /a}}], route: [{destination: {host: reviews, subset: v1}}]}
          - {name: same, match: [{uri: {prefix: /b}}], route: [{destination: {host: reviews, subset: v2}}]}
        """)
    assert main(["import", "istio", str(twice), "--merge"]) == 2
    assert "MESH0111" in capsys.readouterr().err and mesh.read_text() == COMMENTED
    assert main(["import", "istio", vs, "--merge"]) == 0
    assert "to: v3" in mesh.read_text() and "# keep the breaker" in mesh.read_text()


def codes(imported) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in imported.diagnostics]


def test_destination_rule_policy_maps_to_the_service_and_the_rest_is_reported(tmp_path, bookinfo):
    path = istio_file(tmp_path, """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews.default.svc
          trafficPolicy:
            loadBalancer: {simple: LEAST_CONN, warmupDurationSecs: 10s}
            connectionPool:
              tcp: {maxConnections: 20, connectTimeout: 1s}
              http: {http1MaxPendingRequests: 5, http2MaxRequests: 30, maxRequestsPerConnection: 1}
            outlierDetection: {consecutive5xxErrors: 2, interval: 5s, baseEjectionTime: 1m30s, minHealthPercent: 50}
            tls: {mode: ISTIO_MUTUAL}
          subsets:
          - name: v1
            labels: {version: v1}
            trafficPolicy: {loadBalancer: {simple: RANDOM}}
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    assert imported.services == {"reviews": {
        "loadBalancer": "least-request",
        "circuitBreaker": {"maxConnections": 20, "maxPendingRequests": 5, "maxRequestsPerConnection": 1},
        "outlierDetection": {"consecutive5xxErrors": 2, "baseEjectionTime": "90s"}}}
    assert codes(imported) == [("MESH0413", 7), ("MESH0413", 9), ("MESH0417", 10), ("MESH0417", 11),
                               ("MESH0413", 11), ("MESH0417", 12), ("MESH0413", 16)]
    assert imported.replaced["reviews"] == ("loadBalancer", "circuitBreaker", "outlierDetection")


def test_virtual_service_cases_istio_allows_and_the_sidecars_do_not(tmp_path, bookinfo):
    path = istio_file(tmp_path, """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: early}
        spec:
          hosts: [details]
          http: [{route: [{destination: {host: details, subset: v1}}]}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: early}
        spec:
          hosts: [details, "*.example.com"]
          gateways: [mesh, public]
          exportTo: ["."]
          tcp: [{route: [{destination: {host: details}}]}]
          http:
          - match: [{method: {regex: "GET|HEAD"}, queryParams: {debug: {regex: ".*"}}}]
            retries: {attempts: 2}
            route: [{destination: {host: details, subset: v2}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: second}
        spec:
          hosts: [details.default.svc.cluster.local]
          http: [{match: [{uri: {prefix: /}}], route: [{destination: {host: details, subset: v1}}]}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: delegate}
        spec:
          http: [{route: [{destination: {host: details}}]}]
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    # The later `early` replaces the first (as kubectl apply would); `second` finds details taken.
    assert [(r.name, r.imported) for r in imported.resources] == [("early", False), ("early", True),
                                                                  ("second", False), ("delegate", False)]
    # 8: replaces the first `early`, and no route takes every request (Istio answers those 404).
    assert codes(imported) == [("MESH0417", 8), ("MESH0417", 8), ("MESH0414", 12), ("MESH0413", 13),
                               ("MESH0417", 14), ("MESH0413", 15), ("MESH0417", 18), ("MESH0417", 19),
                               ("MESH0413", 25), ("MESH0412", 28)]
    assert imported.services == {"details": {"routes": [{
        "match": [{"method": ["GET", "HEAD"], "query": {"debug": {"present": True}}}],
        "to": "v2",
        "retries": {"attempts": 2, "retryOn": ["connect-failure", "retriable-status-codes"],
                    "retriableStatusCodes": [503], "retryNonIdempotent": True}}]}}


@pytest.mark.parametrize("text, ms", [("7s", 7000), ("0.5s", 500), ("250ms", 250), ("1m30s", 90000), ("1h", 3600000),
                                      ("1500us", 1.5)])
def test_go_durations(text, ms):
    assert istio_model.parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "7", "s", "1.2.3s", "7 s", "7days", 7])
def test_not_go_durations(text):
    with pytest.raises(ValueError):
        istio_model.parse_duration(text)


@pytest.mark.parametrize("ms, istio, mesh", [(1500, "1.5s", "1500ms"), (25, "0.025s", "25ms"), (7000, "7s", "7s"),
                                             (0.5, "0.0005s", "0.5ms"), (86400000, "86400s", "86400s")])
def test_durations_both_ways(ms, istio, mesh):
    assert istio_model.duration(ms) == istio and istio_model.parse_duration(istio) == ms
    assert istio_model.mesh_duration(ms) == mesh and mesh_config.durations.parse_ms(mesh) == ms


@pytest.mark.parametrize("host, namespace, service", [
    ("reviews", None, "reviews"), ("reviews.shop", None, "reviews"), ("reviews.shop.svc", "shop", "reviews"),
    ("reviews.shop.svc.cluster.local", None, "reviews"), ("reviews.other.svc.cluster.local", "shop",
                                                          "reviews.other.svc.cluster.local"),
    ("www.googleapis.com", None, "www.googleapis.com")])
def test_hosts_name_services(host, namespace, service):
    assert istio_model.service_of_host(host, namespace) == service


def test_routes_after_a_catch_all_that_is_not_imported_stay_unused(tmp_path, bookinfo):
    path = reviews_routes(tmp_path, """
          - match: [{uri: {prefix: /v2}}]
            route: [{destination: {host: reviews, subset: v2}}]
            retries: {attempts: 0}
          - rewrite: {uri: /}
            route: [{destination: {host: reviews, subset: v1}}]
          - route: [{destination: {host: reviews, subset: v3}}]
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    assert [(d.code, d.line) for d in imported.diagnostics if d.level.value == "warning"] == [
        ("MESH0413", 10), ("MESH0413", 12)]
    # Only the match route: the requests Istio would rewrite get the service's versions (said, at 1).
    assert imported.services == {"reviews": {"routes": [{"match": [{"path": {"prefix": "/v2"}}], "to": "v2"}]}}


def test_a_destination_naming_the_compose_service_of_a_version_is_that_version(tmp_path, bookinfo):
    path = reviews_routes(tmp_path, """
          - match: [{headers: {end-user: {exact: jason}}}]
            route: [{destination: {host: reviews-v2.default.svc.cluster.local}}]
          - route: [{destination: {host: reviews-v3}}]
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    assert imported.services == {"reviews": {"to": "v3", "routes": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "to": "v2"}]}}


SECURITY_RULES = """
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: shop}
    spec: {mtls: {mode: STRICT}}
    ---
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: reviews, namespace: shop}
    spec:
      selector: {matchLabels: {app: reviews}}
      mtls: {mode: PERMISSIVE}
      portLevelMtls: {"9080": {mode: DISABLE}}
    ---
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: ratings, namespace: shop}
    spec:
      selector: {matchLabels: {app: ratings}}
      mtls: {mode: DISABLE}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: ratings, namespace: shop}
    spec: {host: ratings, trafficPolicy: {tls: {mode: DISABLE}}}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: details, namespace: shop}
    spec: {host: details, trafficPolicy: {tls: {mode: DISABLE}}}
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: reviews-viewer, namespace: shop}
    spec:
      selector: {matchLabels: {app: reviews}}
      rules:
      - from:
        - source: {principals: [cluster.local/ns/shop/sa/productpage, cluster.local/ns/other/sa/productpage]}
        - source: {notPrincipals: ["*"]}
        to:
        - operation: {methods: [GET], paths: [/reviews/*, "*.json", /health], ports: ["9080"]}
        when:
        - {key: "request.headers[X-User]", values: ["*"]}
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-admin, namespace: shop}
    spec:
      selector: {matchLabels: {app: reviews}}
      action: DENY
      rules:
      - to: [{operation: {paths: [/admin*]}}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: jwt-only, namespace: shop}
    spec:
      selector: {matchLabels: {app: ratings}}
      action: DENY
      rules:
      - from: [{source: {requestPrincipals: ["*"]}}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: ext-authz, namespace: shop}
    spec:
      selector: {matchLabels: {app: ratings}}
      action: CUSTOM
      provider: {name: opa}
      rules: [{}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: anyone, namespace: shop}
    spec:
      selector: {matchLabels: {app: details}}
      rules:
      - to: [{operation: {notPaths: [/private]}}]
      - when: [{key: source.ip, values: [10.0.0.1]}]
"""


def test_security_resources_become_modes_and_policies_and_the_rest_is_reported(tmp_path, bookinfo):
    imported = istio_import.read([istio_file(tmp_path, SECURITY_RULES)], bookinfo.mesh)
    assert imported.mtls == {"mode": "STRICT"}
    assert imported.services == {
        "reviews": {"mtls": "PERMISSIVE", "authorization": [
            {"name": "viewer", "action": "ALLOW", "rules": [{
                # Principals that are a service's identity in the resource's namespace are that service.
                "source": ["productpage", "spiffe://cluster.local/ns/other/sa/productpage", "no-identity"],
                "method": ["GET"],
                "path": [{"prefix": "/reviews/"}, {"suffix": ".json"}, {"exact": "/health"}],
                "port": [9080],
                "headers": {"x-user": {"present": True}}}]},
            {"name": "no-admin", "action": "DENY", "rules": [{"path": {"prefix": "/admin"}}]}]},
        "ratings": {"mtls": "DISABLE"},
        "details": {},
    }
    found = [(d.code, d.line, d.message.split(": ", 1)[1]) for d in imported.diagnostics]
    assert found == [
        ("MESH0416", 12, "portLevelMtls is not imported: a service's mode applies to every port"),
        ("MESH0417", 24, "trafficPolicy.tls DISABLE: the callers of ratings send plain text, as its mode DISABLE "
                         "says: nothing else to import"),
        ("MESH0416", 29, "trafficPolicy.tls DISABLE is not imported: callers' sidecars send mTLS to details unless "
                         "its mode is DISABLE, and plain text then (set its `mtls:` or a PeerAuthentication)"),
        ("MESH0416", 61, "rule 1: from.source.requestPrincipals is not supported (end-user (JWT) identities are not "
                         "checked by the sidecars): policy not imported (what it denies is allowed locally)"),
        ("MESH0416", 68, "action CUSTOM is not supported (the sidecars ALLOW or DENY; CUSTOM asks an external "
                         "authorizer, AUDIT only logs): not imported"),
        ("MESH0416", 78, "rule 1: to.operation.notPaths is not supported: policy not imported (what it allows is "
                         "denied locally when another ALLOW policy is imported, and allowed when none is)"),
    ]
    assert [r.name for r in imported.resources if not r.imported] == ["jwt-only", "ext-authz", "anyone"]
    # What the import writes is a valid mesh file with those modes and policies.
    mesh = imported_mesh(bookinfo, imported)
    assert mesh.security.mode == "STRICT" and mesh.mtls_mode(mesh.services["ratings"]) == "DISABLE"
    [viewer, no_admin] = mesh.services["reviews"].policy.authorization
    assert viewer.rules[0].sources[-1] == "no-identity" and no_admin.action == "DENY"


@pytest.mark.parametrize("when, expected", [
    ([{"key": "request.headers[x-a]", "values": ["1", "2"]}], "one value per header"),
    ([{"key": "request.headers[x-a]", "notValues": ["1"]}], "one value per header"),
    ([{"key": "source.namespace", "values": ["x"]}], "only request.headers[NAME] conditions"),
])
def test_conditions_the_sidecars_cannot_check_leave_the_policy_out(tmp_path, bookinfo, when, expected):
    path = istio_file(tmp_path, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                "metadata: {name: p}\nspec:\n  selector: {matchLabels: {app: reviews}}\n"
                                f"  rules: [{{when: {when!r}}}]\n".replace("'", '"'))
    imported = istio_import.read([path], bookinfo.mesh)
    [warning] = imported.diagnostics
    assert warning.code == "MESH0416" and expected in warning.message and imported.services == {}


def test_merge_of_security_keeps_the_comments_and_the_trust_domain(tmp_path, bookinfo):
    text = textwrap.dedent("""\
        apiVersion: meshcli/v1
        # identities for the CI run
        mtls:
          mode: PERMISSIVE   # until every caller has a sidecar
          trustDomain: ci.example
        services:
          reviews:
            timeout: 2s      # slow on purpose
        """)
    path = istio_file(tmp_path, """
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default}
        spec: {mtls: {mode: STRICT}}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: reviews-frontend}
        spec:
          selector: {matchLabels: {app: reviews}}
          rules: [{from: [{source: {principals: [ci.example/ns/default/sa/productpage]}}]}]
        """)
    imported = istio_import.read([path], bookinfo.mesh)
    # The mode's comment keeps its column; the principal is in another trust domain than the
    # project's (cluster.local, the mesh the import reads against), so it stays a SPIFFE ID.
    assert imported.transform(text, Path("mesh.yaml")) == textwrap.dedent("""\
        apiVersion: meshcli/v1
        # identities for the CI run
        mtls:
          mode: STRICT       # until every caller has a sidecar
          trustDomain: ci.example
        services:
          reviews:
            timeout: 2s      # slow on purpose
            authorization:
              - name: frontend
                action: ALLOW
                rules:
                  - source: spiffe://ci.example/ns/default/sa/productpage
        """)


def test_policies_keep_their_places_in_the_mesh_file_whatever_the_order_of_the_files(tmp_path):
    original = project(tmp_path / "shop", SHOP_COMPOSE, EVERY_FEATURE_MESH)
    exported = istio_export.write(istio_export.export(original.mesh, original.config), tmp_path / "istio")
    policies_files = sorted((p for p in exported if p.name.startswith("authorizationpolicy-payment")), reverse=True)
    assert [p.name for p in policies_files] == ["authorizationpolicy-payment-no-debug.yaml",
                                                "authorizationpolicy-payment-callers.yaml"]
    imported = istio_import.read(list(reversed(policies_files)), original.mesh)
    assert [p["name"] for p in imported.services["payment"]["authorization"]] == ["no-debug", "callers"]
    assert list(imported.services["payment"]["authorization"][1]["rules"][0]) == [
        "source", "method", "path", "headers", "port"]  # the mesh-file reference's order
