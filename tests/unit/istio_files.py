"""Shared by the Istio export and import tests: projects, the every-feature mesh file, and the
CRD schemas of ../shared/corpora/istio/crds.yaml turned into JSON Schemas jsonschema checks.

Structural schema conversion: an object with `properties` takes no other field unless it says
`x-kubernetes-preserve-unknown-fields` (the API server would prune them; here they are errors),
`x-kubernetes-int-or-string` is an integer or a string, `nullable` allows null, int32/uint32
formats bound the number, and the CEL rules of `x-kubernetes-validations` that Istio's
networking CRDs use are checked by the functions in CEL_RULES (an unknown rule fails the test,
so none is skipped unnoticed).
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "istio"
BOOKINFO = CORPUS / "bookinfo"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the Istio corpus is not at {CORPUS}")

BOOKINFO_COMPOSE = """
name: bookinfo
x-app: &app
  image: meshcli-sample-app:dev
  expose: ["9080"]
services:
  productpage: *app
  details-v1: *app
  details-v2: *app
  reviews-v1: *app
  reviews-v2: *app
  reviews-v3: *app
  ratings-v1: *app
  ratings-v2: *app
"""

SHOP_COMPOSE = """
x-app: &app
  image: meshcli-sample-app:dev
  expose: ["8080"]
services:
  frontend: *app
  orders: *app
  payment-v1: *app
  payment-v2: *app
"""

# Every setting `export istio` maps (and nothing it only warns about).
EVERY_FEATURE_MESH = """
apiVersion: meshcli/v1
mtls:
  mode: PERMISSIVE
services:
  payment:
    loadBalancer: least-request
    split: {v1: 90, v2: 10}
    timeout: 2s
    retries:
      attempts: 3
      perTryTimeout: 500ms
      retryOn: [5xx, gateway-error, connect-failure, reset, retriable-status-codes]
      retriableStatusCodes: [409]
      backoff: 50ms
      retryNonIdempotent: true
    mirror: {version: v2, percent: 25}
    fault:
      delay: {fixed: 1.5s, percent: 10}
      abort: {httpStatus: 503, percent: 5.5}
    routes:
      - name: canary-testers
        match:
          - headers:
              x-canary: {exact: "true"}
              x-debug: {present: true}
              x-trace: {prefix: abc}
            path: {prefix: /api}
            method: [GET, POST]
            query: {debug: {exact: "1"}, trace: {present: true}, id: {regex: "[0-9]+"}}
            source: frontend
          - path: {regex: "/v[0-9]+/.*"}
            method: PUT
        to: v2
        timeout: 1s
      - name: slow-path
        match:
          - path: {exact: /slow}
        retries: {attempts: 0}
        fault:
          delay: {fixed: 3s}
    circuitBreaker:
      maxConnections: 100
      maxPendingRequests: 10
      maxRequestsPerConnection: 0
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      baseEjectionTime: 45s
      maxEjectionPercent: 50
    mtls: STRICT
    authorization:
      - name: no-debug
        action: DENY
        rules:
          - path: [{prefix: /debug}, {suffix: .bak}]
          - source: no-identity
            method: [POST, PUT]
      - name: callers
        action: ALLOW
        rules:
          - source: [frontend, no-identity, spiffe://cluster.local/ns/legacy/sa/batch, orders]
            method: [GET, POST]
            path: {exact: /pay}
            headers:
              x-env: {exact: prod}
              x-file: {suffix: .json}
              x-tenant: {prefix: acme-}
              x-user: {present: true}
            port: [8080, 9090]
          - path: {exact: /healthz}
  orders:
    loadBalancer: random
    mtls: DISABLE
    authorization:
      - name: anyone
        action: ALLOW
    routes:
      - name: admins
        match:
          - headers:
              x-role: {regex: "admin|root"}
        mirror: {version: v1}
"""


@lru_cache(maxsize=None)
def crd_schema(kind: str, version: str = "v1") -> dict:
    for doc in yaml.safe_load_all((CORPUS / "crds.yaml").read_text()):
        if doc and doc["spec"]["names"]["kind"] == kind:
            [found] = [v for v in doc["spec"]["versions"] if v["name"] == version]
            return _structural(found["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


INT_RANGES = {"int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1)}


def _structural(node):
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _structural(v) for k, v in node.items() if k != "description"}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    low_high = INT_RANGES.get(out.get("format"))
    if low_high:
        out.setdefault("minimum", low_high[0])
        out.setdefault("maximum", low_high[1])
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
GO_UNITS_MS = {"ns": Decimal("1e-6"), "us": Decimal("1e-3"), "µs": Decimal("1e-3"), "ms": Decimal(1),
               "s": Decimal(1000), "m": Decimal(60000), "h": Decimal(3600000)}


def _go_duration_ms(text) -> Decimal | None:
    if not isinstance(text, str) or not GO_DURATION.match(text):
        return None
    return sum((Decimal(n) * GO_UNITS_MS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)),
               Decimal(0))


CEL_RULES = {
    "duration(self) >= duration('1ms')": lambda v: (ms := _go_duration_ms(v)) is not None and ms >= 1,
    '!self.contains("*")': lambda v: "*" not in v,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) for k in v),
    "self.size() == 0": lambda v: len(v) == 0,
    "self.all(key, 0 < int(key) && int(key) <= 65535)": lambda v: all(str(k).isdigit() and 0 < int(k) <= 65535
                                                                       for k in v),
    # security.istio.io: one way to select workloads; service accounts exclude principals and namespaces.
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda v: sum(k in v for k in ("selector", "targetRef", "targetRefs")) <= 1,
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&\n!has(self.notPrincipals)"
    " && !has(self.namespaces) && !has(self.notNamespaces)) : true":
        lambda v: not ("serviceAccounts" in v or "notServiceAccounts" in v)
        or not any(k in v for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")),
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels "
    ": {}).size() > 0) : true":
        lambda v: "portLevelMtls" not in v or bool((v.get("selector") or {}).get("matchLabels")),
}


def _cel(validator, rules, instance, schema):
    for rule in rules:
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            yield jsonschema.ValidationError(f"CEL rule not checked by this test: {rule['rule']}")
        elif not check(instance):
            yield jsonschema.ValidationError(f"{rule.get('message', rule['rule'])}: {instance!r}")


KubernetesValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel})


def schema_errors(manifest: dict) -> list[str]:
    """Why `manifest` does not validate against its kind's CRD schema (empty: it does)."""
    group, version = manifest["apiVersion"].split("/")
    errors = [] if group in ("networking.istio.io", "security.istio.io") else [f"apiVersion {manifest['apiVersion']}"]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"]):
        errors.append(f"metadata.name {manifest['metadata']['name']!r} is not a DNS-1123 label")
    validator = KubernetesValidator(crd_schema(manifest["kind"], version)["properties"]["spec"])
    return errors + [f"spec/{'/'.join(map(str, e.absolute_path))}: {e.message}"
                     for e in validator.iter_errors(manifest["spec"])]
