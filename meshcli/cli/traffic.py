"""`meshcli split` and `meshcli route ...`: change traffic rules by editing mesh.yaml in place;
`meshcli apply`: push mesh.yaml as it is.

Each command is one transform of meshcli/mesh_edit.py run through
`control_plane.edit()`: validated before anything is written, applied, and waited for
until every running sidecar runs it. `--dry-run` prints the diff instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from meshcli.cli import common, output
from meshcli.errors import InputError

DryRun = typer.Option(False, "--dry-run", help="Print the change to mesh.yaml as a unified diff; write nothing.")
RouteName = typer.Option(None, "--route", help="Change this named route instead of the default route.")
Service = typer.Argument(..., help="The logical service (as in mesh.yaml or `meshcli status`).")


def _pairs(values: list[str], what: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise InputError(f'{what} "{value}" is not NAME=VALUE', hint=f"for example {example}")
        pairs.append((name, rest))
    return pairs


def _weights(values: list[str]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for version, weight in _pairs(values, "weight", "v1=90 v2=10"):
        if not weight.isdigit() or int(weight) > 100:
            raise InputError(f'weight "{version}={weight}" must be a whole percentage from 0 to 100')
        if version in weights:
            raise InputError(f'version "{version}" is given twice')
        weights[version] = int(weight)
    if sum(weights.values()) != 100:
        raise InputError(f"weights sum to {sum(weights.values())}; they must sum to 100",
                         hint="for example `meshcli split payment v1=90 v2=10`, or v2=100 to promote")
    return weights


def _duration(value: str, option: str) -> str:
    from meshcli import durations

    try:
        durations.parse_ms(value)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None
    return value


def _percent(value: float, option: str) -> float:
    if not 0 <= value <= 100:
        raise InputError(f"{option} must be from 0 to 100, got {value:g}")
    return value


def _off(value: str | None) -> bool:
    return value is not None and value.lower() == "off"


def _check_off(value: str, with_options: bool, example: str) -> None:
    """The optional `off` argument: that word, and then no settings beside it."""
    if not _off(value):
        raise InputError(f'unexpected argument "{value}"; the only word accepted here is `off`', hint=example)
    if with_options:
        raise InputError("`off` removes the setting: give it without other settings, or the settings without `off`",
                         hint=example)


def _choices(values: list[str], option: str, choices: tuple[str, ...]) -> list[str]:
    """Each of `values` (stripped, blanks dropped) must be one of `choices`."""
    from meshcli.diagnostics import did_you_mean

    chosen = [v.strip() for v in values if v.strip()]
    for value in chosen:
        if value not in choices:
            raise InputError(f'{option}: "{value}" is not one of: {", ".join(choices)}'
                             f"{did_you_mean(value, choices)}")
    if not chosen:
        raise InputError(f"{option}: give at least one of: {', '.join(choices)}")
    return chosen


def _edit(compose_file: Optional[Path], mesh_file: Optional[Path], project: Optional[str], service: str | None,
          what: str, transform: Callable[[str, Path], str], dry_run: bool, as_json: bool, no_wait: bool,
          timeout: float) -> None:
    """Run `transform(text, path)` through control_plane.edit() and report like every command here.
    `service` None: the change is not about one service (`meshcli apply`)."""
    from meshcli import control_plane, workspace

    located = common.locate(compose_file, mesh_file, project)
    path = located.mesh_file or located.compose_file.parent / workspace.MESH_FILE
    subject = service or path.name
    if dry_run:
        result = control_plane.edit(located, lambda text: transform(text, path), dry_run=True, service=service)
    else:
        with output.progress(f"{subject}: {what}") as progress:
            result = control_plane.edit(located, lambda text: transform(text, path), wait=not no_wait,
                                        timeout=timeout, progress=progress, service=service)
    workloads = len(result.synced) if result.synced is not None else None
    synced = sum(1 for s in result.synced if s.sync == "SYNCED") if result.synced is not None else None
    if as_json:
        output.emit_json({
            "service": service, "change": what, "file": str(result.file), "changed": result.changed,
            "dry_run": dry_run, "diff": result.diff,
            "version": result.compiled.version if result.compiled else None,
            "generation": result.compiled.generation if result.compiled else None,
            "sidecars": {"synced": synced, "workloads": workloads} if result.synced is not None else None,
            "seconds": round(result.seconds, 2),
        })
        return
    if dry_run:
        output.emit_text(result.diff)
        if not result.changed:
            output.info(f"{subject}: {what} - nothing would change")
        return
    generation = f"{'' if result.compiled.changed else 'already at '}generation {result.compiled.generation}"
    if result.synced is not None:
        output.success(f"{subject}: {what} - {generation} running on {synced}/{workloads} sidecars "
                       f"({result.seconds:.1f} s)")
    elif no_wait:
        output.success(f"{subject}: {what} - {generation} applied (not waiting for the sidecars)")
    else:
        output.success(f"{subject}: {what} - {generation} written (project not running)")


def register(app: typer.Typer) -> None:
    from meshcli import mesh_config, mesh_edit

    @app.command("split")
    def split(
        service: str = Service,
        weights: list[str] = typer.Argument(..., help="VERSION=PERCENT pairs summing to 100: v1=90 v2=10."),
        route: Optional[str] = RouteName,
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Split a service's traffic between versions by weight (`split payment v2=100` promotes v2).

        Versions not named leave the split. Writes `split:` in mesh.yaml and waits until every
        sidecar runs it.
        """
        parsed = _weights(weights)
        what = "split " + " ".join(f"{v}={w}" for v, w in parsed.items())
        _edit(compose_file, mesh_file, project, service, what,
              lambda text, path: mesh_edit.set_split(text, path, service, parsed, route),
              dry_run, as_json, no_wait, timeout)

    @app.command("apply")
    def apply(
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, no_wait: bool = common.NoWait, timeout: float = common.SyncTimeout,
        as_json: bool = common.Json,
    ) -> None:
        """Validate mesh.yaml and push it (with the runtime faults) to every sidecar now.

        Then waits until each sidecar runs it. The watcher started by `meshcli up` does this
        on every save.
        """
        _edit(compose_file, mesh_file, project, None, "applied", lambda text, path: text,
              False, as_json, no_wait, timeout)

    route_app = typer.Typer(help="Timeouts, retries, circuit breaking, outlier detection, mirroring and "
                                 "header/path routing rules, written to mesh.yaml.", no_args_is_help=True)
    app.add_typer(route_app, name="route")

    @route_app.command("timeout")
    def timeout_command(
        service: str = Service,
        value: str = typer.Argument(..., metavar="DURATION|off", help="The whole request's deadline: 300ms, 2s."),
        route: Optional[str] = RouteName,
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Give calls to a service a deadline (retries included); past it callers get 504."""
        if _off(value):
            what = "timeout off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "timeout", route)
        else:
            what = f"timeout {_duration(value, 'timeout')}"
            transform = lambda text, path: mesh_edit.set_timeout(text, path, service, value, route)
        _edit(compose_file, mesh_file, project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("retries")
    def retries(
        service: str = Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes the retry policy."),
        attempts: Optional[int] = typer.Option(None, "--attempts", min=0, help="Retries after the first try."),
        per_try_timeout: Optional[str] = typer.Option(None, "--per-try-timeout", help="Deadline of each try: 500ms."),
        retry_on: Optional[str] = typer.Option(None, "--retry-on",
                                               help="Comma-separated: 5xx,gateway-error,connect-failure,reset,"
                                                    "retriable-status-codes."),
        backoff: Optional[str] = typer.Option(None, "--backoff", help="Base interval between tries: 25ms."),
        retry_non_idempotent: bool = typer.Option(False, "--retry-non-idempotent",
                                                  help="Also retry POST, PATCH and other non-idempotent methods."),
        route: Optional[str] = RouteName,
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) the retry policy of calls to a service, or `off` to remove it."""
        if off is not None:
            settings = (attempts, per_try_timeout, retry_on, backoff)
            _check_off(off, retry_non_idempotent or any(v is not None for v in settings),
                       f"meshcli route retries {service} --attempts 3")
            what = "retries off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "retries", route)
        else:
            if attempts is None:
                raise InputError("--attempts is required", hint=f"meshcli route retries {service} --attempts 3")
            policy: dict = {"attempts": attempts}
            if per_try_timeout is not None:
                policy["perTryTimeout"] = _duration(per_try_timeout, "--per-try-timeout")
            if retry_on is not None:
                policy["retryOn"] = _choices(retry_on.split(","), "--retry-on", mesh_config.RETRY_ON)
            if backoff is not None:
                policy["backoff"] = _duration(backoff, "--backoff")
            if retry_non_idempotent:
                policy["retryNonIdempotent"] = True
            what = f"retries {attempts}" + (f" per try {per_try_timeout}" if per_try_timeout else "")
            transform = lambda text, path: mesh_edit.set_retries(text, path, service, policy, route)
        _edit(compose_file, mesh_file, project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("circuit-breaker")
    def circuit_breaker(
        service: str = Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes the circuit breaker."),
        max_connections: Optional[int] = typer.Option(None, "--max-connections", min=0,
                                                      help="Requests in flight from one caller's sidecar."),
        max_pending: Optional[int] = typer.Option(None, "--max-pending-requests", min=0,
                                                  help="Requests waiting beyond that; more get 503 at once."),
        max_per_connection: Optional[int] = typer.Option(None, "--max-requests-per-connection", min=0,
                                                         help="0: unlimited; 1 disables keep-alive."),
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) the connection limits callers' sidecars keep for a service, or `off`."""
        policy = {k: v for k, v in (("maxConnections", max_connections), ("maxPendingRequests", max_pending),
                                    ("maxRequestsPerConnection", max_per_connection)) if v is not None}
        _policy(service, off, policy, "circuitBreaker", "circuit-breaker", mesh_edit.set_circuit_breaker,
                "--max-connections 100", compose_file, mesh_file, project, dry_run, as_json, no_wait, timeout)

    @route_app.command("outlier-detection")
    def outlier_detection(
        service: str = Service,
        off: Optional[str] = typer.Argument(None, metavar="[off]", help="`off` removes outlier detection."),
        consecutive_5xx: Optional[int] = typer.Option(None, "--consecutive-5xx", min=1,
                                                      help="5xx answers in a row that eject a version."),
        consecutive_gateway: Optional[int] = typer.Option(None, "--consecutive-gateway-errors", min=1,
                                                          help="502/503/504/connect failures in a row that eject."),
        base_ejection_time: Optional[str] = typer.Option(None, "--base-ejection-time", help="Ejected this long: 30s."),
        max_ejection_percent: Optional[int] = typer.Option(None, "--max-ejection-percent", min=0, max=100,
                                                           help="Never eject more than this share of versions."),
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Set (replace) when callers' sidecars eject a failing version of a service, or `off`."""
        policy = {k: v for k, v in (
            ("consecutive5xxErrors", consecutive_5xx), ("consecutiveGatewayErrors", consecutive_gateway),
            ("baseEjectionTime", _duration(base_ejection_time, "--base-ejection-time") if base_ejection_time else None),
            ("maxEjectionPercent", max_ejection_percent)) if v is not None}
        _policy(service, off, policy, "outlierDetection", "outlier-detection", mesh_edit.set_outlier_detection,
                "--consecutive-5xx 5", compose_file, mesh_file, project, dry_run, as_json, no_wait, timeout)

    @route_app.command("mirror")
    def mirror(
        service: str = Service,
        version: str = typer.Argument(..., metavar="VERSION|off", help="The version that gets copies, or `off`."),
        percent: float = typer.Option(100.0, "--percent", help="Share of requests copied (0-100)."),
        route: Optional[str] = RouteName,
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Copy a share of the requests to a version (fire and forget; its answers are discarded)."""
        if _off(version):
            what = "mirror off"
            transform = lambda text, path: mesh_edit.remove(text, path, service, "mirror", route)
        else:
            what = f"mirror {_percent(percent, '--percent'):g}% to {version}"
            transform = lambda text, path: mesh_edit.set_mirror(text, path, service, version, percent, route)
        _edit(compose_file, mesh_file, project, service, what, transform, dry_run, as_json, no_wait, timeout)

    @route_app.command("match")
    def match(
        service: str = Service,
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
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Send the requests that match to one version (a named route).

        Adds the route before the default route, or replaces the match and destination of the
        route of that name.
        """
        conditions = _match(header, header_prefix, header_present, path_prefix, path_exact, method, query, source)
        transform = lambda text, path: mesh_edit.set_match_route(text, path, service, name, conditions, to)
        _edit(compose_file, mesh_file, project, service, f"route {name} -> {to}", transform, dry_run, as_json,
              no_wait, timeout)

    @route_app.command("delete")
    def delete(
        service: str = Service,
        name: str = typer.Argument(..., help="The route to delete."),
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, dry_run: bool = DryRun, no_wait: bool = common.NoWait,
        timeout: float = common.SyncTimeout, as_json: bool = common.Json,
    ) -> None:
        """Delete a named route of a service."""
        transform = lambda text, path: mesh_edit.delete_route(text, path, service, name)
        _edit(compose_file, mesh_file, project, service, f"route {name} deleted", transform, dry_run, as_json,
              no_wait, timeout)

    @route_app.command("show")
    def show(
        service: str = Service,
        compose_file: Optional[Path] = common.ComposeFile, mesh_file: Optional[Path] = common.MeshFile,
        project: Optional[str] = common.ProjectName, as_json: bool = common.Json,
    ) -> None:
        """Show the rules callers' sidecars apply to a service, in order.

        As compiled from mesh.yaml, plus the runtime faults of `meshcli fault`.
        """
        from meshcli import control_plane

        rules = control_plane.effective_rules(common.locate(compose_file, mesh_file, project), service)
        if as_json:
            output.emit_json({"service": service, **rules})
        else:
            _print_rules(service, rules)


def _policy(service: str, off: str | None, policy: dict, key: str, command: str, setter: Callable[..., str],
            example: str, compose_file, mesh_file, project, dry_run, as_json, no_wait, timeout) -> None:
    from meshcli import mesh_edit

    if off is not None:
        _check_off(off, bool(policy), f"meshcli route {command} {service} {example}")
        what = f"{command} off"
        transform = lambda text, path: mesh_edit.remove(text, path, service, key)
    else:
        if not policy:
            raise InputError("give at least one option, or `off`", hint=f"meshcli route {command} {service} {example}")
        what = f"{command} " + " ".join(f"{k}={v}" for k, v in policy.items())
        transform = lambda text, path: setter(text, path, service, policy)
    _edit(compose_file, mesh_file, project, service, what, transform, dry_run, as_json, no_wait, timeout)


def _match(header: list[str], header_prefix: list[str], header_present: list[str], path_prefix: str | None,
           path_exact: str | None, methods: list[str], query: list[str] = (), source: str | None = None) -> dict:
    """One mesh-file match entry from the command's options."""
    from meshcli import mesh_config

    headers: dict[str, dict] = {}
    for name, value in _pairs(header, "--header", "--header x-canary=true"):
        headers[name.lower()] = {"exact": value}
    for name, value in _pairs(header_prefix, "--header-prefix", "--header-prefix user-agent=Mobile"):
        headers[name.lower()] = {"prefix": value}
    for name in header_present:
        headers[name.lower()] = {"present": True}
    match: dict = {}
    if headers:
        match["headers"] = headers
    if path_prefix is not None and path_exact is not None:
        raise InputError("give --path or --path-prefix, not both")
    if path_prefix is not None or path_exact is not None:
        match["path"] = {"prefix": path_prefix} if path_prefix is not None else {"exact": path_exact}
    if methods:
        chosen = _choices([m.upper() for m in methods], "--method", mesh_config.HTTP_METHODS)
        match["method"] = chosen[0] if len(chosen) == 1 else chosen
    if query:
        match["query"] = {name: {"exact": value} for name, value in _pairs(query, "--query", "--query debug=1")}
    if source is not None:
        match["source"] = source  # checked against the mesh's services when the edit is validated
    if not match:
        raise InputError("a route needs at least one condition",
                         hint="--header NAME=VALUE, --header-prefix, --header-present, --path-prefix, --path, "
                              "--method, --query NAME=VALUE, --source SERVICE")
    return match


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
