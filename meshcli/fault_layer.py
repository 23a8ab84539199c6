"""Runtime faults (`meshcli fault`): a layer of faults on top of the mesh file.

They live in `.mesh/<project>/faults.json`, never in mesh.yaml: the user's file stays theirs,
and clearing a fault leaves no trace. Each fault targets one service (optionally only
the calls of one source service) at one layer, HTTP (Istio's delay/abort) or TCP
(Toxiproxy's toxics); a new fault for the same service, source and layer replaces the
old one. A fault set `--for` a while carries its end time (`until`), so the sidecars
stop applying it by themselves. A fault is the sidecars' own `RuntimeFault`, and the
file holds them as sidecar.json's "faults" list does (proxy/meshproxy/config.py):
`active()` is that list.
"""

from __future__ import annotations

import math
import secrets
import string
import time
from dataclasses import replace
from pathlib import Path

from meshproxy import config as wire
from meshproxy.config import RuntimeFault, TcpFaultKind

from meshcli import durations, mesh_config, sidecar_config
from meshcli.diagnostics import did_you_mean
from meshcli.errors import InputError, MeshError
from meshcli.mesh_config import TCP_FAULT_FIELDS, TCP_FAULT_REQUIRED, Abort, Delay, Mesh
from meshcli.workspace import Workspace, state_lock
from meshcli.yaml_source import atomic_write

FILE_NAME = "faults.json"
_ID_ALPHABET = string.ascii_lowercase + string.digits


Fault = RuntimeFault  # what `meshcli fault` sets: the sidecars' own type


def target(fault: Fault) -> tuple[str, str | None, str]:
    """(service, source, layer): a fault replaces the one with the same target."""
    return fault.service, fault.source, "tcp" if fault.tcp is not None else "http"


def describe(fault: Fault) -> str:
    """'abort 503 on 10% of requests' - what the fault does, without its duration."""
    parts = []
    delay, abort = (fault.http.delay, fault.http.abort) if fault.http else (None, None)
    if delay:
        parts.append(f"delay {_format_seconds(delay.seconds)} on {_percent(delay.percent)} of requests")
    if abort:
        what = "reset" if abort.reset else f"abort {abort.status}"
        parts.append(f"{what} on {_percent(abort.percent)} of requests")
    if fault.tcp:
        t = fault.tcp
        latency, jitter = _format_seconds(t.latency), _format_seconds(t.jitter)
        detail = {
            TcpFaultKind.LATENCY: f" {latency}" + (f" ± {jitter}" if t.jitter else ""),
            TcpFaultKind.BANDWIDTH: f" {t.rate} bytes/s",
            TcpFaultKind.LIMIT_DATA: f" after {t.bytes} bytes",
            TcpFaultKind.SLICER: f" into {t.bytes}-byte slices" + (f" {latency} apart" if t.latency else ""),
        }.get(t.kind, "")
        parts.append(f"tcp {t.kind}{detail} on {_percent(t.percent)} of connections")
    text = ", ".join(parts)
    return text + (f" (calls from {fault.source})" if fault.source else "")


def view(fault: Fault, now: float) -> dict:
    """A fault as `meshcli fault ... --json` shows it: as stored, with what it does and the time left."""
    left = fault.seconds_left(now)
    return {**wire.fault_json(fault), "description": describe(fault),
            "secondsLeft": None if left is None else round(left, 1), "timeLeft": format_seconds(left)}


def _format_seconds(value: float) -> str:
    return durations.format_ms(wire.milliseconds(value))


def format_seconds(seconds: float | None) -> str:
    """Time left, rounded up: 29.2 -> '30 s', 90 -> '1 min 30 s'; None -> 'until cleared'."""
    if seconds is None:
        return "until cleared"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if minutes and rest else f"{minutes} min" if minutes else f"{rest} s"


def _percent(value: float) -> str:
    return f"{value:g}%"


# --- building a fault from command-line values --------------------------------------------

def parse_rate(text: str) -> int:
    """'64KB/s' -> 64000 bytes per second; a plain number is bytes per second."""
    try:
        rate = durations.parse_rate(int(text) if text.strip().isdigit() else text.strip())
    except ValueError as exc:
        raise InputError(f"--rate: {exc}") from None
    if rate <= 0:
        raise InputError(f"--rate: must be more than 0 bytes per second, got {text!r}")
    return rate


def _duration_ms(text: str, option: str) -> int | float:
    try:
        return durations.parse_ms(text)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None


def check_service(mesh: Mesh, name: str, option: str = "service") -> None:
    if name not in mesh.services:
        raise InputError(f"unknown {option} {name!r}{did_you_mean(name, mesh.services)}",
                         hint=f"services of this mesh: {', '.join(sorted(mesh.services))}")


def _check_percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise InputError(f"--percent: expected a number from 0 to 100, got {value:g}")
    return float(value)


def build(mesh: Mesh, service: str, *, delay: str | None = None, abort: str | None = None, tcp: str | None = None,
          latency: str | None = None, jitter: str | None = None, rate: str | None = None, size: int | None = None,
          percent: float = 100.0, duration: str | None = None, source: str | None = None,
          now: float | None = None) -> Fault:
    """A new fault from the values of `meshcli fault`; InputError for anything wrong."""
    now = time.time() if now is None else now
    check_service(mesh, service)
    if source is not None:
        check_service(mesh, source, "--source service")
    percent = _check_percent(percent)
    tcp_values = {"latency": latency, "jitter": jitter, "rate": rate, "bytes": size}
    if tcp is not None and (delay is not None or abort is not None):
        raise InputError("a fault is either HTTP (--delay/--abort) or TCP (--tcp), not both",
                         hint="run `meshcli fault` twice to set one of each")
    if tcp is None and delay is None and abort is None:
        raise InputError("nothing to inject: give --delay, --abort or --tcp",
                         hint="e.g. `meshcli fault payment --abort 503 --percent 10`")
    until = None
    if duration is not None:
        ms = _duration_ms(duration, "--for")
        if ms <= 0:
            raise InputError(f"--for: must be longer than 0, got {duration!r}")
        until = round(now + ms / 1000.0, 3)
    fault = Fault(id="", service=service, source=source, created=round(now, 3), until=until)
    if tcp is None:
        given = [f"--{name}" for name, value in tcp_values.items() if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} only go with --tcp")
        return replace(fault, http=sidecar_config.http_fault(mesh_config.Fault(
            Delay(_duration_ms(delay, "--delay"), percent) if delay is not None else None,
            _abort(abort, percent) if abort is not None else None)))
    return replace(fault, tcp=sidecar_config.tcp_fault(_tcp(tcp, tcp_values, percent)))


def _abort(text: str, percent: float) -> Abort:
    if text.strip().lower() == "reset":
        return Abort(reset=True, percent=percent)
    try:
        status = int(text)
    except ValueError:
        raise InputError(f"--abort: expected an HTTP status (200-599) or 'reset', got {text!r}") from None
    if not 200 <= status <= 599:
        raise InputError(f"--abort: expected an HTTP status from 200 to 599, got {status}")
    return Abort(status=status, percent=percent)


def _tcp(kind: str, values: dict, percent: float) -> mesh_config.TcpFault:
    if kind not in TCP_FAULT_FIELDS:
        raise InputError(f"--tcp: unknown kind {kind!r}{did_you_mean(kind, TCP_FAULT_FIELDS)}",
                         hint=f"expected one of {', '.join(TCP_FAULT_FIELDS)}")
    allowed = TCP_FAULT_FIELDS[kind]
    extra = [f"--{name}" for name, value in values.items() if value is not None and name not in allowed]
    if extra:
        takes = f"takes only {', '.join('--' + a for a in allowed)}" if allowed else "takes no other values"
        raise InputError(f"--tcp {kind} {takes}, not {', '.join(extra)}")
    missing = [f"--{name}" for name in TCP_FAULT_REQUIRED.get(kind, ()) if values[name] is None]
    if missing:
        raise InputError(f"--tcp {kind} needs {' and '.join(missing)}")
    size = values["bytes"] or 0
    if size < (1 if kind == "slicer" else 0):
        raise InputError(f"--bytes: expected {'at least 1' if kind == 'slicer' else 'a positive number'}, got {size}")
    return mesh_config.TcpFault(
        kind,
        latency_ms=_duration_ms(values["latency"], "--latency") if values["latency"] is not None else 0,
        jitter_ms=_duration_ms(values["jitter"], "--jitter") if values["jitter"] is not None else 0,
        rate=parse_rate(values["rate"]) if values["rate"] is not None else 0,
        bytes=size,
        percent=percent,
    )


# --- the file -----------------------------------------------------------------------------

def path(workspace: Workspace) -> Path:
    return workspace.state_dir / FILE_NAME


def _read(workspace: Workspace) -> list[Fault]:
    file = path(workspace)
    try:
        return list(wire.parse_faults(file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise MeshError(f"{file}: not a faults file meshcli can read ({exc.__class__.__name__}: {exc})",
                        hint="run `meshcli fault clear` to start over") from None


def _write(workspace: Workspace, faults: list[Fault]) -> None:
    atomic_write(path(workspace), wire.dump_faults(faults))


def new_id(taken: set[str], prefix: str = "f-") -> str:
    """A short id not in `taken`: f-1a2b for faults (the rule layer's are r-...)."""
    while True:
        candidate = prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
        if candidate not in taken:
            return candidate


def add(workspace: Workspace, fault: Fault, now: float | None = None) -> Fault:
    """Store `fault` with a new id; it replaces any fault for the same service, source and layer."""
    with state_lock(workspace):
        stored = replace(fault, id=new_id({f.id for f in _read(workspace)}))
        _store(workspace, stored, now)
    return stored


def put_back(workspace: Workspace, fault: Fault, now: float | None = None) -> None:
    """Store `fault` as it is, id included, replacing any fault with the same target: how the
    testing API brings back a fault that a newer one replaced for a while."""
    with state_lock(workspace):
        _store(workspace, fault, now)


def _store(workspace: Workspace, fault: Fault, now: float | None) -> None:
    now = time.time() if now is None else now
    kept = [f for f in _read(workspace) if f.active(now) and target(f) != target(fault)]
    _write(workspace, kept + [fault])


def clear(workspace: Workspace, service: str | None = None, fault_id: str | None = None,
          now: float | None = None) -> list[Fault]:
    """Remove the faults of `service` and/or with `fault_id` (all when neither); return the active ones removed."""
    now = time.time() if now is None else now
    with state_lock(workspace):
        if service is None and fault_id is None:
            try:
                removed = _read(workspace)
            except MeshError:
                removed = []  # an unreadable file is what `clear` is for
            _write(workspace, [])
            return [f for f in removed if f.active(now)]
        faults = _read(workspace)
        removed = [f for f in faults
                   if (service is None or f.service == service) and (fault_id is None or f.id == fault_id)]
        _write(workspace, [f for f in faults if f not in removed and f.active(now)])
        return [f for f in removed if f.active(now)]


def active(workspace: Workspace, now: float | None = None) -> list[Fault]:
    """The faults still in force, oldest first: sidecar.json's "faults"."""
    now = time.time() if now is None else now
    return [f for f in _read(workspace) if f.active(now)]


def in_force(workspace: Workspace, mesh: Mesh, now: float | None = None) -> list[dict]:
    """Every fault the callers' sidecars apply now, for `meshcli status`: the runtime ones
    (which win), then those written in the mesh file, per route."""
    now = time.time() if now is None else now
    rows = [{"origin": "runtime", "id": f.id, "service": f.service, "route": None, "source": f.source,
             "description": describe(f), "timeLeft": format_seconds(f.seconds_left(now))}
            for f in active(workspace, now)]
    for service in mesh.services.values():
        policy = service.policy
        routes = (*policy.routes, policy.default_route)
        from_file = [(route.name, Fault("mesh.yaml", service.name, http=sidecar_config.http_fault(route.fault)))
                     for route in routes if route.fault]
        if policy.tcp_fault:
            from_file.append((None, Fault("mesh.yaml", service.name, tcp=sidecar_config.tcp_fault(policy.tcp_fault))))
        rows += [{"origin": "mesh.yaml", "id": None, "service": service.name, "route": route, "source": None,
                  "description": describe(fault), "timeLeft": format_seconds(None)} for route, fault in from_file]
    return rows
