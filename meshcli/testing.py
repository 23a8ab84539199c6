"""A typed Python API to drive a meshed Compose project from tests: what the pytest plugin's
fixtures hand out, usable on its own from any test runner.

    with Mesh.up("compose.yaml", project="ci-42") as mesh:
        with mesh.fault("payment", abort=503):
            ...                                   # every sidecar runs the fault here
        before = mesh.stats("payment")
        with mesh.split("payment", v2=100):
            ...
        assert (mesh.stats("payment") - before).count(version="v1") == 0

`Mesh.up()` starts a project (and `down()` removes it); `Mesh.attach()` drives one that is
already running. Rules are applied through the same core as the CLI, as runtime layers
on top of mesh.yaml, which a test never edits: faults through `meshcli.fault_layer`,
traffic rules (split, timeout, retries) through `meshcli.rule_layer`, validated like an
edit of mesh.yaml and applied and synced like `meshcli apply`. Each returns a `Rule` only
once every sidecar runs it; leaving its `with` block (or `Rule.undo()`) removes it again
and waits for the sidecars too, also on exceptions.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from meshcli import lifecycle, status as status_core, workspace as ws
from meshcli.errors import InputError, MeshError
from meshcli.status import WorkloadStatus
from meshcli.workspace import Loaded, Workspace

if TYPE_CHECKING:
    from meshcli.fault_layer import Fault
    from meshcli.rule_layer import TrafficRule

log = logging.getLogger("meshcli.testing")

PathLike = str | Path


def _progress(message: str) -> None:
    # pytest captures log records and shows them with a failing test.
    log.info(message)


# -- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStats:
    """Requests a service's own sidecars received (the inbound, server side of each hop),
    and how long they took there (the app's time plus its sidecar's).

    Counters are totals since the sidecars started; subtract an earlier snapshot to get
    what happened in between: `mesh.stats("payment") - before`.
    """

    service: str
    by_status: dict[int, int] = field(default_factory=dict)  # status code -> requests; 0: no answer
    by_version: dict[str, int] = field(default_factory=dict)  # version -> requests
    by_version_status: dict[tuple[str, int], int] = field(default_factory=dict)
    # version -> {bucket upper bound in ms: requests that took at most that long} (Istio's buckets)
    latency_buckets: dict[str, dict[float, int]] = field(default_factory=dict)
    latency_sum_ms: dict[str, float] = field(default_factory=dict)  # version -> total milliseconds

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())

    def count(self, *, status: int | None = None, version: str | None = None) -> int:
        """Requests with this status code and/or served by this version."""
        return sum(n for (v, s), n in self.by_version_status.items()
                   if (status is None or s == status) and (version is None or v == version))

    @property
    def errors(self) -> int:
        """Requests answered 5xx or not answered at all."""
        return sum(n for s, n in self.by_status.items() if s == 0 or s >= 500)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def share(self, version: str) -> float:
        """The fraction of requests this version served (0.0 without requests)."""
        return self.by_version.get(version, 0) / self.requests if self.requests else 0.0

    def latency_ms(self, quantile: float = 0.5, *, version: str | None = None) -> float | None:
        """The latency under which `quantile` of the requests finished (0.5: median, 0.99...),
        estimated from the histogram buckets as Prometheus' histogram_quantile() does;
        None without requests."""
        if not 0 <= quantile <= 1:
            raise ValueError(f"quantile must be from 0 to 1, got {quantile}")
        buckets = self._buckets(version)
        total = buckets[-1][1] if buckets else 0
        if not total:
            return None
        rank = quantile * total
        lower_bound, lower_count = 0.0, 0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    return lower_bound  # beyond the last bucket: its bound is all we know
                inside = count - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 1.0)
            lower_bound, lower_count = bound, count
        return lower_bound

    def mean_latency_ms(self, *, version: str | None = None) -> float | None:
        versions = [version] if version is not None else list(self.latency_sum_ms)
        total = sum(self.latency_sum_ms.get(v, 0.0) for v in versions)
        count = sum(self.latency_buckets.get(v, {}).get(float("inf"), 0) for v in versions)
        return total / count if count else None

    def _buckets(self, version: str | None) -> list[tuple[float, int]]:
        merged: Counter = Counter()
        for v, buckets in self.latency_buckets.items():
            if version is None or v == version:
                merged.update(buckets)
        return sorted(merged.items())

    def __sub__(self, earlier: ServiceStats) -> ServiceStats:
        """What happened since `earlier`."""
        if earlier.service != self.service:
            raise ValueError(f"cannot subtract stats of {earlier.service} from stats of {self.service}")
        # Empty buckets stay: they are the lower bounds of the next ones.
        buckets = {v: {bound: n - earlier.latency_buckets.get(v, {}).get(bound, 0) for bound, n in b.items()}
                   for v, b in self.latency_buckets.items()}
        sums = {v: ms - earlier.latency_sum_ms.get(v, 0.0) for v, ms in self.latency_sum_ms.items()}
        return _stats_from(self.service, Counter(self.by_version_status) - Counter(earlier.by_version_status),
                           buckets, sums)


def _stats_from(service: str, by_version_status: Counter, latency_buckets: dict | None = None,
                latency_sum_ms: dict | None = None) -> ServiceStats:
    by_status: Counter = Counter()
    by_version: Counter = Counter()
    for (version, code), n in by_version_status.items():
        by_status[code] += n
        by_version[version] += n
    return ServiceStats(service, dict(by_status), dict(by_version), dict(by_version_status),
                        latency_buckets or {}, latency_sum_ms or {})


def _version_of(row: dict, workload_version: str) -> str:
    reported = row.get("destination_version")
    return reported if reported not in (None, "", "unknown") else workload_version


# -- applied rules ------------------------------------------------------------------------


class Rule:
    """A fault or traffic rule that every sidecar runs; `undo()` or leaving `with` removes it."""

    def __init__(self, mesh: Mesh, description: str, remove: Callable[[], None]) -> None:
        self.mesh = mesh
        self.description = description
        self._remove = remove
        self.active = True

    def undo(self) -> None:
        """Remove the rule and wait until every sidecar runs without it; idempotent."""
        if not self.active:
            return
        self.active = False
        self.mesh._forget(self)
        log.info("undoing %s", self.description)
        self._remove()

    def __enter__(self) -> Rule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"<Rule {self.description}{'' if self.active else ' (undone)'}>"


# -- the mesh -----------------------------------------------------------------------------


class Mesh:
    """A meshed Compose project: its status, URLs, sidecar statistics, faults and rules."""

    def __init__(self, workspace: Workspace, *, owned: bool, sync_timeout: float = 30.0) -> None:
        """Prefer `Mesh.up()` or `Mesh.attach()`. `owned`: leaving `with` takes it down."""
        self.workspace = workspace
        self.owned = owned
        self.sync_timeout = sync_timeout
        self._rules: list[Rule] = []
        self._urls: dict[str, list[str]] = {}
        self.project = workspace.project.name

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def up(cls, compose_file: PathLike | None = None, mesh_file: PathLike | None = None,
           project: str | None = None, timeout: int = 120, *, build: bool = False,
           keep_on_failure: bool = False) -> Mesh:
        """Bring the project up with the mesh and wait until it is ready, like `meshcli up --wait`.

        Defaults as for the CLI and `docker compose`: the project in the current directory
        (compose.yaml, its override file, COMPOSE_FILE...), mesh.yaml beside it, the
        project name compose gives it. Raises MeshError when
        it is not ready within `timeout` seconds; the project is then taken down again
        unless `keep_on_failure` (to look at it).
        """
        workspace = _locate(compose_file, mesh_file, project)
        try:
            result = lifecycle.up(workspace, _progress, wait_timeout=timeout, build=build)
            if not result.ready:
                raise MeshError(f"project {result.loaded.project.name} is not ready after {timeout}s: "
                                + "; ".join(lifecycle.not_ready(result.statuses)),
                                hint=f"see `docker compose -p {result.loaded.project.name} logs`")
        except BaseException:
            if not keep_on_failure:
                _down_quietly(workspace)
            raise
        return cls(workspace, owned=True)

    @classmethod
    def attach(cls, compose_file: PathLike | None = None, mesh_file: PathLike | None = None,
               project: str | None = None, timeout: float = 30.0) -> Mesh:
        """Drive a project that is already up (e.g. `meshcli up` in an earlier CI step).

        Waits up to `timeout` seconds for it to be ready; raises MeshError when it is
        not running at all, or not ready in time. Leaving `with` does not take it down.
        """
        workspace = _locate(compose_file, mesh_file, project)
        loaded = ws.load(workspace)
        statuses = status_core.collect(loaded)
        if statuses and all(s.app == "missing" for s in statuses):
            raise MeshError(f"project {loaded.project.name} is not running",
                            hint=f"start it first: meshcli up -f {loaded.project.path} -p {loaded.project.name}")
        statuses = lifecycle.wait_ready(loaded, time.monotonic() + timeout, _progress)
        if not lifecycle.ready(statuses):
            raise MeshError(f"project {loaded.project.name} is not ready: "
                            + "; ".join(lifecycle.not_ready(statuses)))
        return cls(workspace, owned=False)

    def down(self, volumes: bool | None = None) -> None:
        """Undo the rules still applied (mesh.yaml is the user's file), then remove every
        container and network of the project (`meshcli down`). Its named volumes go too
        when this object brought the project up (`Mesh.up()` created them), and stay for
        an attached one, unless `volumes` says otherwise."""
        remove_volumes = self.owned if volumes is None else volumes
        _all_of([self.reset, lambda: lifecycle.down(self.workspace, _progress, volumes=remove_volumes)])
        self.owned = False

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.owned:
            self.down()

    def __repr__(self) -> str:
        return f"<Mesh {self.project} ({self.workspace.project.path})>"

    # -- what is running ------------------------------------------------------------------
    @property
    def loaded(self) -> Loaded:
        """The compose and mesh files as they are now (mesh.yaml changes with rules)."""
        return ws.load(self.workspace)

    def status(self) -> list[WorkloadStatus]:
        """Every workload: app and sidecar state, config sync, published URLs (`meshcli status`)."""
        return status_core.collect(self.loaded)

    def workloads(self, service: str) -> list[str]:
        """The workloads (compose services) of a logical service, or the workload itself."""
        mesh = self.loaded.mesh
        if service in mesh.services:
            return [v.workload for v in mesh.services[service].versions]
        if service in mesh.workloads:
            return [service]
        known = sorted(set(mesh.services) | set(mesh.workloads))
        raise InputError(f"no service or workload named {service!r} in project {self.project}",
                         hint="known: " + ", ".join(known))

    def urls(self, service_or_workload: str) -> list[str]:
        """Every URL the service's (or workload's) published ports answer on, from the host."""
        names = self.workloads(service_or_workload)
        if not all(name in self._urls for name in names):  # ports do not change while it runs
            self._urls.update({s.workload: s.urls for s in self.status()})
        return [url for name in names for url in self._urls.get(name, [])]

    def url(self, service_or_workload: str) -> str:
        """The published URL of a service or workload, e.g. "http://localhost:8080/"."""
        urls = self.urls(service_or_workload)
        if not urls:
            raise InputError(f"{service_or_workload} publishes no port in project {self.project}",
                             hint="add `ports: [\"8080:8080\"]` to it in the compose file")
        return urls[0]

    def stats(self, service: str) -> ServiceStats:
        """Requests the service's sidecars received (their /stats), by status code and version,
        with their latency histogram."""
        loaded = self.loaded
        counts: Counter = Counter()
        buckets: dict[str, Counter] = {}
        sums: Counter = Counter()
        for workload in self.workloads(service):
            version = loaded.mesh.workloads[workload].version
            stats = status_core.sidecar_stats(loaded, workload)
            if stats is None:
                raise MeshError(f"the sidecar of {workload} does not answer", hint="see `meshcli status`")
            for row in stats.get("requests", []):
                if row.get("reporter") == "destination":
                    counts[(_version_of(row, version), int(row.get("response_code", 0)))] += int(row.get("count", 0))
            for row in stats.get("durations", []):
                if row.get("reporter") == "destination":
                    row_version = _version_of(row, version)
                    buckets.setdefault(row_version, Counter()).update(
                        {float(bound): int(n) for bound, n in row.get("buckets", [])})
                    sums[row_version] += float(row.get("sum_ms", 0.0))
        return _stats_from(service, counts, {v: dict(b) for v, b in buckets.items()}, dict(sums))

    # -- rules ----------------------------------------------------------------------------
    def fault(self, service: str, *, abort: int | str | None = None, delay: str | None = None,
              percent: float = 100.0, source: str | None = None, tcp: str | None = None,
              latency: str | None = None, jitter: str | None = None, rate: str | None = None,
              size: int | None = None, duration: str | None = None) -> Rule:
        """Inject a fault into the calls to `service`, like `meshcli fault` (a runtime fault:
        mesh.yaml is not touched). It replaces the service's fault at the same layer (and
        source) until it is undone; then that fault is back.

        abort: an HTTP status (503) or "reset"; delay: a duration ("2s", "250ms"); percent:
        the share of requests (TCP: connections) affected; source: only calls made by this
        service. tcp: a TCP fault kind (latency, bandwidth, reset, blackhole, limit-data,
        slicer) with its values: latency/jitter ("100ms"), rate ("64KB/s"), size (bytes).
        duration: the sidecars drop the fault by themselves after this long ("30s").
        """
        from meshcli import fault_layer

        fault = fault_layer.build(
            self.loaded.mesh, service, delay=delay, abort=None if abort is None else str(abort), tcp=tcp,
            latency=latency, jitter=jitter, rate=rate, size=size, percent=percent, duration=duration,
            source=source)
        replaced = [f for f in fault_layer.active(self.workspace) if fault_layer.target(f) == fault_layer.target(fault)]
        stored = fault_layer.add(self.workspace, fault)
        rule = _FaultRule(self, f"fault {stored.id} on {service}: {fault_layer.describe(stored)}", stored, replaced)
        return self._applied(rule, self._apply_and_sync)

    def split(self, service: str, *, route: str | None = None, **weights: int) -> Rule:
        """Split the service's traffic by version weight: `split("payment", v1=90, v2=10)`,
        or `split("payment", v2=100)` to send everything to v2 (as `meshcli split`, but
        mesh.yaml is not touched)."""
        return self._traffic_rule("split", service, weights, route)

    def timeout(self, service: str, timeout: str, *, route: str | None = None) -> Rule:
        """Give calls to the service a deadline ("300ms"), retries included; callers then get 504."""
        return self._traffic_rule("timeout", service, timeout, route)

    def retries(self, service: str, attempts: int = 3, *, per_try_timeout: str | None = None,
                retry_on: list[str] | None = None, retriable_status_codes: list[int] | None = None,
                backoff: str | None = None, retry_non_idempotent: bool | None = None,
                route: str | None = None) -> Rule:
        """Retry failed calls to the service up to `attempts` times after the first try; the
        other settings are the mesh file's (docs/mesh-file.md), defaults where None."""
        policy = {"attempts": attempts, "perTryTimeout": per_try_timeout, "retryOn": retry_on,
                  "retriableStatusCodes": retriable_status_codes, "backoff": backoff,
                  "retryNonIdempotent": retry_non_idempotent}
        policy = {key: value for key, value in policy.items() if value is not None}
        return self._traffic_rule("retries", service, policy, route)

    def reset(self) -> None:
        """Undo every rule this object applied and has not undone yet, newest first."""
        _all_of([rule.undo for rule in reversed(self._rules)])

    @contextmanager
    def scope(self) -> Iterator[Mesh]:
        """Whatever changes inside is undone on exit: rules of this object, runtime faults
        and rules set any other way (`meshcli fault`, another Mesh), edits of mesh.yaml by
        hand or by `meshcli split`."""
        from meshcli import fault_layer, rule_layer

        mesh_content = self._mesh_content()
        faults = {f.id for f in fault_layer.active(self.workspace)}
        traffic_rules = {r.id for r in rule_layer.active(self.workspace)}
        rules_before = list(self._rules)

        def clear_stray_layers() -> None:
            stray_faults = [f.id for f in fault_layer.active(self.workspace) if f.id not in faults]
            for fault_id in stray_faults:
                fault_layer.clear(self.workspace, fault_id=fault_id)
            stray_rules = [r.id for r in rule_layer.active(self.workspace) if r.id not in traffic_rules]
            for rule_id in stray_rules:
                rule_layer.remove(self.workspace, rule_id)
            if stray_faults or stray_rules:
                self._apply_and_sync()

        def restore_mesh_file() -> None:
            if self._mesh_content() != mesh_content:
                self._restore_mesh_file(mesh_content)

        try:
            yield self
        finally:
            # Every step runs even when one fails; the first failure is raised at the end.
            # Not a slice from the old length: a rule from before may have been undone inside.
            _all_of([rule.undo for rule in reversed(self._rules) if rule not in rules_before]
                    + [clear_stray_layers, restore_mesh_file])

    def wait_synced(self, timeout: float | None = None) -> None:
        """Wait until every running sidecar runs the config on disk (MeshError after `timeout`)."""
        from meshcli import control_plane, sidecar_config

        control_plane.wait_synced(self.loaded, sidecar_config.current_version(self.workspace.config_dir),
                                  timeout or self.sync_timeout)

    # -- internals --------------------------------------------------------------------------
    def _remember(self, rule: Rule) -> Rule:
        self._rules.append(rule)
        return rule

    def _forget(self, rule: Rule) -> None:
        self._rules.remove(rule)

    def _applied(self, rule: Rule, apply: Callable[[], None]) -> Rule:
        """`rule` once `apply` made every sidecar run it. When `apply` fails (a sidecar does not
        sync in time, an invalid edit), what it changed is undone before the error is raised:
        the caller gets no Rule to undo, and a `with` block that never started cannot."""
        self._remember(rule)
        try:
            apply()
        except BaseException:
            try:
                rule.undo()
            except Exception as exc:  # the original failure matters more
                log.error("could not undo %s: %s", rule.description, exc)
            raise
        return rule

    def _apply_and_sync(self) -> None:
        """Compile the fault layer into sidecar.json and wait until every sidecar runs it."""
        from meshcli import control_plane

        compiled = control_plane.apply(self.workspace)
        control_plane.wait_synced(self.loaded, compiled.version, self.sync_timeout)

    def _undo_fault(self, undone: _FaultRule) -> None:
        """Remove `undone`'s fault and bring back the one it replaced. When a newer rule has
        replaced it in turn, nothing changes now: that rule brings back what `undone` replaced."""
        from meshcli import fault_layer

        newer = next((r for r in self._rules if isinstance(r, _FaultRule)
                      and any(f.id == undone.fault.id for f in r.replaced)), None)
        if newer is not None:
            newer.replaced = undone.replaced
            return
        in_force = fault_layer.active(self.workspace)
        if any(fault_layer.target(f) == fault_layer.target(undone.fault) and f.id != undone.fault.id for f in in_force):
            return  # replaced some other way (`meshcli fault`): that one stays
        if undone.fault.id not in {f.id for f in in_force} and not undone.replaced:
            return  # cleared some other way, or expired: nothing to change
        fault_layer.clear(self.workspace, fault_id=undone.fault.id)
        for fault in undone.replaced:
            fault_layer.put_back(self.workspace, fault)
        self._apply_and_sync()

    @property
    def _mesh_path(self) -> Path:
        # Where control_plane.edit() reads and writes, creating it when the project has none.
        return self.workspace.mesh_path

    def _mesh_content(self) -> str | None:
        """mesh.yaml exactly as it is on disk; None when there is none."""
        from meshcli import yaml_source

        path = self._mesh_path
        return yaml_source.TextFile.read(path).content if path.is_file() else None

    def _traffic_rule(self, kind: str, service: str, value: object, route: str | None) -> Rule:
        """A runtime traffic rule (meshcli/rule_layer.py): InvalidFileError, and nothing
        changes, when the mesh with it would be invalid."""
        from meshcli import rule_layer

        stored = rule_layer.add(self.loaded, rule_layer.TrafficRule(kind, service, value, route))
        return self._applied(_TrafficRule(self, stored), self._apply_and_sync)

    def _undo_traffic_rule(self, undone: _TrafficRule) -> None:
        from meshcli import rule_layer

        rule_layer.remove(self.workspace, undone.rule.id)
        self._apply_and_sync()

    def _restore_mesh_file(self, content: str | None) -> None:
        """Put mesh.yaml back byte for byte (None: remove the one made since), then apply it
        and wait for the sidecars."""
        from meshcli import yaml_source

        path = self._mesh_path
        with ws.state_lock(self.workspace):  # against other editors of the file
            if content is None:
                path.unlink(missing_ok=True)
            else:
                yaml_source.atomic_write(path, content)
        self.workspace = replace(self.workspace, mesh_file=path if content is not None else None)
        self._apply_and_sync()


class _FaultRule(Rule):
    """A runtime fault: undoing it removes the fault and brings back the one with the same
    target that it replaced, if any (see Mesh._undo_fault)."""

    def __init__(self, mesh: Mesh, description: str, fault: Fault, replaced: list[Fault]) -> None:
        super().__init__(mesh, description, lambda: mesh._undo_fault(self))
        self.fault = fault
        self.replaced = replaced


class _TrafficRule(Rule):
    """A runtime split, timeout or retry policy: undoing it removes it from the rule layer."""

    def __init__(self, mesh: Mesh, rule: TrafficRule) -> None:
        super().__init__(mesh, f"rule {rule.id}: {rule.describe()}", lambda: mesh._undo_traffic_rule(self))
        self.rule = rule


def _locate(compose_file: PathLike | None, mesh_file: PathLike | None, project: str | None) -> Workspace:
    from meshcli.compose_model import ComposeOptions

    files = (str(Path(compose_file).absolute()),) if compose_file is not None else ()
    return ws.locate(ComposeOptions(files=files, project_name=project),
                     Path(mesh_file) if mesh_file is not None else None)


def _all_of(steps: list[Callable[[], object]]) -> None:
    """Run every step, even after one fails; then raise the first failure."""
    failure: BaseException | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error("cleanup step failed: %s", exc)
            failure = failure or exc
    if failure is not None:
        raise failure


def _down_quietly(workspace: Workspace) -> None:
    """Remove a project `Mesh.up()` failed to bring up, with the volumes it created."""
    try:
        lifecycle.down(workspace, _progress, volumes=True)
    except MeshError as exc:  # the original failure matters more
        log.warning("could not take the project down: %s", exc.message)
