"""What a container or a host process costs: CPU time and resident memory, read from the
kernel (cgroup v1 cpuacct and memory controllers, /proc), never from the process itself."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cgroup_dir(controller: str, container_id: str, pid: int | None) -> Path:
    """The container's cgroup for `controller`: where its main process is (what docker set up,
    whatever the parent), else the cgroupfs driver's default /docker/<id>."""
    if pid:
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if controller in controllers.split(","):
                    return CGROUP_ROOT / controller / path.lstrip("/")
        except OSError:
            pass
    return CGROUP_ROOT / controller / "docker" / container_id


class Container:
    """One running container's cgroup counters."""

    def __init__(self, container_id: str, pid: int | None = None):
        self.id = container_id
        self.cpu_dir = _cgroup_dir("cpuacct", container_id, pid)
        self.memory_dir = _cgroup_dir("memory", container_id, pid)

    def cpu_seconds(self) -> float:
        return int((self.cpu_dir / "cpuacct.usage").read_text()) / 1e9

    def rss_bytes(self) -> int:
        for line in (self.memory_dir / "memory.stat").read_text().splitlines():
            key, value = line.split()
            if key == "rss":
                return int(value)
        raise ValueError(f"no rss in {self.memory_dir / 'memory.stat'}")


def containers(ids: dict[str, str]) -> dict[str, Container]:
    """Service name -> Container for ids from Project.container_ids()."""
    import json
    import subprocess

    if not ids:
        return {}
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids.values()], capture_output=True,
                                          text=True, check=True).stdout)
    pids = {c["Id"]: c["State"]["Pid"] for c in inspected}
    return {name: Container(cid, pids.get(cid)) for name, cid in ids.items()}


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a host process (plus its reaped children's, for a shim that runs runc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def pids_of(name: str) -> list[int]:
    """Host processes whose command (comm) is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def shim_pids(container_ids: list[str]) -> dict[str, int]:
    """Container id -> the pid of its containerd shim (one per container, the id on its command
    line). The shim runs runc for every healthcheck and exec, so its children's time counts."""
    wanted, found = set(container_ids), {}
    for pid in pids_of("containerd-shim"):  # comm is cut to 15 characters
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            if arg.decode(errors="replace") in wanted:
                found[arg.decode()] = pid
    return found


class PeakRss:
    """Samples the RSS of some containers in a thread while a load runs: `peaks` (per
    container) and `peak_total` (of their sum at one instant), in bytes, after."""

    def __init__(self, watched: dict[str, Container], interval: float = 0.25):
        self.watched, self.interval = watched, interval
        self.peaks = {name: 0 for name in watched}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = {name: c.rss_bytes() for name, c in self.watched.items()}
            except OSError:
                now = {}
            for name, value in now.items():
                self.peaks[name] = max(self.peaks[name], value)
            self.peak_total = max(self.peak_total, sum(now.values()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
