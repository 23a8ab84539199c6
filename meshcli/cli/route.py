"""`meshcli route ...`: timeouts, retries, circuit breaking, outlier detection, mirroring and
named match rules, each an edit of mesh.yaml (see cli/mesh_edits.py); `route show` prints the
rules callers' sidecars apply."""

from __future__ import annotations

from typing import Callable, Optional

import typer

from meshcli.cli import common, mesh_edits, output


def register(app: typer.Typer) -> None:
    route_app = common.App(help="Timeouts, retries, circuit breaking, outlier detection, mirroring and "
                                "header/path routing rules, written to mesh.yaml.")
    app.add_typer(route_app, name="route")

    @route_app.command("timeout")
    @common.project_command()
    def timeout_command(
        service: str = mesh_edits.Service,
        value: str = typer.Argument(..., metavar="DURATION|off", help="The whole request's deadline: 300ms, 2s."),
        route: Optional[str] = mesh_edits.RouteName,
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Give calls to a service a deadline (retries included); past it callers get 504."""
        from meshcli import mesh_edit, rule_input

        if rule_input.is_off(value):
            what = "timeout off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "timeout", route)
        else:
            what = f"timeout {rule_input.duration(value, 'timeout')}"
            transform = lambda text, path: mesh_edit.set_timeout(text, path, service, value, route)
        mesh_edits.run(project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("retries")
    @common.project_command()
    def retries(
        service: str = mesh_edits.Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes the retry policy."),
        attempts: Optional[int] = typer.Option(None, "--attempts", min=0, help="Retries after the first try."),
        per_try_timeout: Optional[str] = typer.Option(None, "--per-try-timeout", help="Deadline of each try: 500ms."),
        retry_on: Optional[str] = typer.Option(None, "--retry-on",
                                               help="Comma-separated: 5xx,gateway-error,connect-failure,reset,"
                                                    "retriable-status-codes."),
        backoff: Optional[str] = typer.Option(None, "--backoff", help="Base interval between tries: 25ms."),
        retry_non_idempotent: bool = typer.Option(False, "--retry-non-idempotent",
                                                  help="Also retry POST, PATCH and other non-idempotent methods."),
        route: Optional[str] = mesh_edits.RouteName,
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) the retry policy of calls to a service, or `off` to remove it."""
        from meshcli import mesh_edit, rule_input

        if off is not None:
            settings = (attempts, per_try_timeout, retry_on, backoff)
            rule_input.check_off(off, retry_non_idempotent or any(v is not None for v in settings),
                                 f"meshcli route retries {service} --attempts 3")
            what = "retries off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "retries", route)
        else:
            policy = rule_input.retry_policy(attempts, per_try_timeout, retry_on, backoff, retry_non_idempotent,
                                             service)
            what = f"retries {attempts}" + (f" per try {per_try_timeout}" if per_try_timeout else "")
            transform = lambda text, path: mesh_edit.set_retries(text, path, service, policy, route)
        mesh_edits.run(project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("circuit-breaker")
    @common.project_command()
    def circuit_breaker(
        service: str = mesh_edits.Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes the circuit breaker."),
        max_connections: Optional[int] = typer.Option(None, "--max-connections", min=0,
                                                      help="Requests in flight from one caller's sidecar."),
        max_pending: Optional[int] = typer.Option(None, "--max-pending-requests", min=0,
                                                  help="Requests waiting beyond that; more get 503 at once."),
        max_per_connection: Optional[int] = typer.Option(None, "--max-requests-per-connection", min=0,
                                                         help="0: unlimited; 1 disables keep-alive."),
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) the connection limits callers' sidecars keep for a service, or `off`."""
        from meshcli import mesh_edit

        policy = {k: v for k, v in (("maxConnections", max_connections), ("maxPendingRequests", max_pending),
                                    ("maxRequestsPerConnection", max_per_connection)) if v is not None}
        _policy(service, off, policy, "circuitBreaker", "circuit-breaker", mesh_edit.set_circuit_breaker,
                "--max-connections 100", project, dry_run, as_json, no_wait, timeout)

    @route_app.command("outlier-detection")
    @common.project_command()
    def outlier_detection(
        service: str = mesh_edits.Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes outlier detection."),
        consecutive_5xx: Optional[int] = typer.Option(None, "--consecutive-5xx", min=1,
                                                      help="5xx answers in a row that eject a version."),
        consecutive_gateway: Optional[int] = typer.Option(None, "--consecutive-gateway-errors", min=1,
                                                          help="502/503/504/connect failures in a row that eject."),
        base_ejection_time: Optional[str] = typer.Option(None, "--base-ejection-time", help="Ejected this long: 30s."),
        max_ejection_percent: Optional[int] = typer.Option(None, "--max-ejection-percent", min=0, max=100,
                                                           help="Never eject more than this share of versions."),
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) when callers' sidecars eject a failing version of a service, or `off`."""
        from meshcli import mesh_edit, rule_input

        policy = {k: v for k, v in (
            ("consecutive5xxErrors", consecutive_5xx), ("consecutiveGatewayErrors", consecutive_gateway),
            ("baseEjectionTime", rule_input.duration(base_ejection_time, "--base-ejection-time") if base_ejection_time else None),
            ("maxEjectionPercent", max_ejection_percent)) if v is not None}
        _policy(service, off, policy, "outlierDetection", "outlier-detection", mesh_edit.set_outlier_detection,
                "--consecutive-5xx 5", project, dry_run, as_json, no_wait, timeout)

    @route_app.command("mirror")
    @common.project_command()
    def mirror(
        service: str = mesh_edits.Service,
        version: str = typer.Argument(..., metavar="VERSION|off", help="The version that gets copies, or `off`."),
        percent: float = typer.Option(100.0, "--percent", help="Share of requests copied (0-100)."),
        route: Optional[str] = mesh_edits.RouteName,
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Copy a share of the requests to a version (fire and forget; its answers are discarded)."""
        from meshcli import mesh_edit, rule_input

        if rule_input.is_off(version):
            what = "mirror off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "mirror", route)
        else:
            what = f"mirror {rule_input.percent(percent, '--percent'):g}% to {version}"
            transform = lambda text, path: mesh_edit.set_mirror(text, path, service, version, percent, route)
        mesh_edits.run(project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("match")
    @common.project_command()
    def match(
        service: str = mesh_edits.Service,
        name: str = typer.Argument(..., help="The route's name (shown in access logs and metrics)."),
        to: str = typer.Option(..., "--to", help="The version matching requests go to."),
        header: list[str] = typer.Option([], "--header", help="NAME=VALUE: the header equals VALUE (repeatable)."),
        header_prefix: list[str] = typer.Option([], "--header-prefix", help="NAME=PREFIX (repeatable)."),
        header_present: list[str] = typer.Option([], "--header-present", help="NAME: the header is sent."),
        path_prefix: Optional[str] = typer.Option(None, "--path-prefix", help="The path starts with this: /api."),
        path_exact: Optional[str] = typer.Option(None, "--path", help="The path is exactly this."),
        method: list[str] = typer.Option([], "--method", help="GET, POST... (repeatable: any of them)."),
        query: list[str] = typer.Option([], "--query", help="NAME=VALUE: the query parameter equals VALUE "
                                                            "(repeatable)."),
        source: Optional[str] = typer.Option(None, "--source", help="Only calls made by this service."),
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Send the requests that match to one version (a named route).

        Adds the route before the default route, or replaces the match and destination of the
        route of that name.
        """
        from meshcli import mesh_edit, rule_input

        conditions = rule_input.match(header, header_prefix, header_present, path_prefix, path_exact, method, query, source)
        transform = lambda text, path: mesh_edit.set_match_route(text, path, service, name, conditions, to)
        mesh_edits.run(project, service, f"route {name} -> {to}", transform, dry_run, as_json,
              no_wait, timeout)

    @route_app.command("delete")
    @common.project_command()
    def delete(
        service: str = mesh_edits.Service,
        name: str = typer.Argument(..., help="The route to delete."),
        project: common.ProjectFlags = common.PROJECT, dry_run: bool = mesh_edits.DryRun,
        no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Delete a named route of a service."""
        from meshcli import mesh_edit

        transform = lambda text, path: mesh_edit.delete_route(text, path, service, name)
        mesh_edits.run(project, service, f"route {name} deleted", transform, dry_run, as_json,
              no_wait, timeout)

    @route_app.command("show")
    @common.project_command()
    def show(
        service: str = mesh_edits.Service,
        project: common.ProjectFlags = common.PROJECT, as_json: bool = common.Json,
    ) -> None:
        """Show the rules callers' sidecars apply to a service, in order.

        As compiled from mesh.yaml, plus the runtime faults of `meshcli fault`.
        """
        from meshcli import control_plane

        rules = control_plane.effective_rules(project.locate(), service)
        if as_json:
            output.result({"service": service, **rules})
        else:
            _print_rules(service, rules)


def _policy(service: str, off: str | None, policy: dict, key: str, command: str, setter: Callable[..., str],
            example: str, project, dry_run, as_json, no_wait, timeout) -> None:
    from meshcli import mesh_edit, rule_input
    from meshcli.errors import InputError

    if off is not None:
        rule_input.check_off(off, bool(policy), f"meshcli route {command} {service} {example}")
        what = f"{command} off"
        transform = lambda text, path: mesh_edit.remove(text, path, service, key)
    else:
        if not policy:
            raise InputError("give at least one option, or `off`", hint=f"meshcli route {command} {service} {example}")
        what = f"{command} " + " ".join(f"{k}={v}" for k, v in policy.items())
        transform = lambda text, path: setter(text, path, service, policy)
    mesh_edits.run(project, service, what, transform, dry_run, as_json, no_wait, timeout)


def _print_rules(service: str, rules: dict) -> None:
    from meshcli import durations

    output.out.print(f"service {service}: versions {', '.join(v['name'] for v in rules['versions'])}"
                     f" ({rules.get('loadBalancer', 'round-robin')})", markup=False)
    for route in rules["routes"]:
        conditions = " or ".join(_describe_match(m) for m in route.get("match") or []) or "every other request"
        output.out.print(f"  route {route['name']}: {conditions}", markup=False)
        split = route.get("split") or []
        parts = [("split " + " ".join(f"{w['version']}={w['weight']}" for w in split)) if split
                 else "balance across all versions"]
        if route.get("timeoutMs") is not None:
            parts.append(f"timeout {durations.format_ms(route['timeoutMs'])}")
        if route.get("retries"):
            r = route["retries"]
            parts.append(f"retries {r['attempts']}" + (f" per try {durations.format_ms(r['perTryTimeoutMs'])}"
                                                       if r.get("perTryTimeoutMs") else "")
                         + f" on {','.join(r.get('retryOn') or [])}")
        if route.get("mirror"):
            parts.append(f"mirror {route['mirror']['percent']:g}% to {route['mirror']['version']}")
        if route.get("fault"):
            parts.append("fault: " + _fault_text(service, {"http": route["fault"]}))
        output.out.print("    " + "; ".join(parts), markup=False)
    if rules.get("tcpFault"):
        output.out.print("  TCP fault: " + _fault_text(service, {"tcp": rules["tcpFault"]}), markup=False)
    for key, label in (("circuitBreaker", "circuit breaker"), ("outlierDetection", "outlier detection")):
        if rules.get(key):
            settings = " ".join(f"{k}={v}" for k, v in rules[key].items() if v is not None)
            output.out.print(f"  {label}: {settings}", markup=False)
    for fault in rules.get("faults", []):
        output.out.print(f"  runtime fault {fault['id']}: {_fault_text(service, fault)}", markup=False)


def _fault_text(service: str, compiled: dict) -> str:
    """'abort 503 on 10% of requests' for a fault as sidecar.json holds it."""
    from meshproxy.config import parse_runtime_fault

    from meshcli.fault_layer import describe

    return describe(parse_runtime_fault({"id": "", "service": service, **compiled}))


def _describe_match(match: dict) -> str:
    parts = []
    if match.get("path"):
        parts.append(f"path {match['path']['kind']} {match['path'].get('value', '')}")
    if match.get("methods"):
        parts.append("method " + "|".join(match["methods"]))
    for kind in ("headers", "query"):
        for m in match.get(kind) or []:
            parts.append(f"{kind[:-1] if kind == 'headers' else 'query'} {m['name']} {m['kind']} "
                         f"{m.get('value', '')}".rstrip())
    if match.get("source"):
        parts.append(f"from {match['source']}")
    return " and ".join(parts) or "any request"
