"""Tap: the requests of one service as they happen, read from its sidecars (`meshcli tap`).

Each sidecar of the service's workloads streams its finished requests from its admin
port (`/tap`, see proxy/meshproxy/admin.py): requests to the service (inbound) and the
calls it makes (outbound), with the caller, the version chosen, status and latency, its
headers already redacted by the sidecar. The stream is read through `docker exec` (the
admin port stays inside the pod) by a shell that ends the reader when meshcli goes away,
so a sidecar is never left tapping. Filters are applied here; the sidecars send all.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from meshproxy.config import ADMIN_PORT, TAP_PATH

from meshcli import docker_engine
from meshcli.compose_rewrite import sidecar_name
from meshcli.errors import InputError, MeshError
from meshcli.workspace import Loaded

DEFAULT_MAX_RPS = 100  # requests per second each sidecar sends (linkerd's default)


def tap_command(max_rps: int) -> list[str]:
    """curl streams the tap; `cat` holds the exec's stdin: when meshcli closes it, curl is ended."""
    return ["sh", "-c", f"curl -sN 'http://127.0.0.1:{ADMIN_PORT}{TAP_PATH}?maxRps={int(max_rps)}' & "
                        "reader=$!; cat >/dev/null; kill $reader"]


@dataclass(frozen=True)
class Filters:
    path: str | None = None  # a prefix of the path
    method: str | None = None
    status: str | None = None  # "503", or a class: "5xx"
    source: str | None = None  # the calling workload or service

    def matches(self, record: dict) -> bool:
        if self.path is not None and not record["path"].startswith(self.path):
            return False
        if self.method is not None and record["method"].upper() != self.method.upper():
            return False
        if self.status is not None:
            status = str(record["status"])
            wanted = self.status.lower()
            if not (status == wanted or wanted.endswith("xx") and status[:1] == wanted[:1]):
                return False
        if self.source is not None and self.source not in (record["source"], record.get("sourceService")):
            return False
        return True


def check_status(value: str | None) -> str | None:
    """A --status value: a code (503) or a class (5xx); InputError otherwise."""
    if value is None:
        return None
    if not (value.isdigit() and len(value) == 3 or len(value) == 3 and value[0].isdigit() and
            value[1:].lower() == "xx"):
        raise InputError(f"--status {value!r}: expected an HTTP status (503) or a class (5xx)")
    return value


def _sidecars(loaded: Loaded, service: str) -> list:
    workloads = [w.name for w in loaded.mesh.workloads.values() if w.service == service]
    if not workloads:
        known = ", ".join(sorted(loaded.mesh.services)) or "none"
        raise InputError(f"unknown service {service!r}; the mesh has: {known}")
    engine = docker_engine.client()
    found = engine.containers.list(filters={"label": f"com.docker.compose.project={loaded.project.name}",
                                            "status": "running"})
    wanted = {sidecar_name(w) for w in workloads}
    sidecars = [c for c in found if c.labels.get("com.docker.compose.service") in wanted]
    if not sidecars:
        raise MeshError(f"no sidecar of {service} is running", hint="start the mesh with `meshcli up`")
    return sidecars


def _read(container, max_rps: int, records: queue.Queue, stop: threading.Event) -> None:
    """Put every record one sidecar streams into `records` until `stop`."""
    from docker.utils.socket import frames_iter

    api = container.client.api
    try:
        exec_id = api.exec_create(container.id, tap_command(max_rps), stdin=True, stdout=True, stderr=False)["Id"]
        sock = api.exec_start(exec_id, socket=True)
    except Exception as exc:  # the sidecar went away: the others still stream
        records.put(("error", f"{container.name}: {exc}"))
        return
    raw = getattr(sock, "_sock", sock)
    closer = threading.Thread(target=lambda: (stop.wait(), _close(raw)), daemon=True)
    closer.start()
    pending = b""
    try:
        for _, data in frames_iter(sock, tty=False):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    if "dropped" in record:
                        record["workload"] = container.labels.get("com.docker.compose.service", container.name)
                    records.put(("record", record))
            if stop.is_set():
                break
    except (OSError, ValueError):
        pass
    finally:
        _close(raw)


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


def stream(loaded: Loaded, service: str, filters: Filters = Filters(), count: int | None = None,
           seconds: float | None = None, max_rps: int = DEFAULT_MAX_RPS) -> Iterator[dict]:
    """The requests of `service` as its sidecars finish them (at most `max_rps` a second from
    each), until `count` were yielded, `seconds` passed, or the caller stops iterating.
    A record {"dropped": n, "overRate": m, "workload": w} says how many requests sidecar w
    did not send so far (this reader fell behind; beyond max_rps); {"error": text}, a
    sidecar's stream that could not start."""
    sidecars = _sidecars(loaded, service)
    workloads = {w.name: w.service for w in loaded.mesh.workloads.values()}
    records: queue.Queue = queue.Queue()
    stop = threading.Event()
    for container in sidecars:
        threading.Thread(target=_read, args=(container, max_rps, records, stop), daemon=True).start()
    until = time.monotonic() + seconds if seconds is not None else None
    seen = 0
    try:
        while count is None or seen < count:
            wait = 0.5 if until is None else min(0.5, until - time.monotonic())
            if wait <= 0:
                return
            try:
                kind, item = records.get(timeout=wait)
            except queue.Empty:
                continue
            if kind == "error":
                yield {"error": item}
            elif "dropped" in item:
                yield item
            else:
                item["sourceService"] = workloads.get(item["source"], item["source"])
                if filters.matches(item):
                    seen += 1
                    yield item
    finally:
        stop.set()
