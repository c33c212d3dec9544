"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` is the host's count. A container limited to one CPU on a 64-core host
sees 64 there, and BLAS libraries start that many threads by default; two limits say
what the process may actually use:

* the **affinity mask** (``os.sched_getaffinity(0)``: ``taskset``, ``docker --cpuset-cpus``);
* the **CPU quota** of its cgroup (``docker --cpus``, Kubernetes CPU limits): per period the
  cgroup may run ``quota`` microseconds of CPU time, ``quota / period`` CPUs on average.

  - cgroup v2: ``cpu.max`` holds ``"$QUOTA $PERIOD"``, ``"max $PERIOD"`` when unlimited;
  - cgroup v1: ``cpu.cfs_quota_us`` (``-1`` when unlimited) and ``cpu.cfs_period_us``.

  A parent cgroup's quota limits its children too, so every level from the process's
  cgroup up to the mount point counts; the smallest quota wins.

:func:`cpu_budget` is ``min(affinity, ceil(quota / period))``, at least 1. Every reader
takes a ``root`` folder standing for ``/`` so that tests can lay out fake ``/proc`` and
``/sys/fs/cgroup`` trees; anything missing or malformed counts as "no limit".
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the mask is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` -> CPUs: ``"50000 100000"`` -> 0.5; ``"max 100000"`` -> None (no limit)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000  # the kernel's default period
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` -> CPUs; quota -1 -> None (no limit)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _mounts(root: Path) -> list[tuple[str, str, str, set[str]]]:
    """cgroup mounts from ``/proc/self/mountinfo``: (mount root in the hierarchy, mount point, fstype, options)."""
    text = _read(root / "proc/self/mountinfo") or ""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return mounts


def _levels(root: Path, mount_point: str, mount_root: str, path: str) -> list[Path]:
    """The folders of the process's cgroup ``path`` and of each parent up to the mount point."""
    rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    rel = "" if rel in (".", "/") else rel.lstrip("/")
    base = root / mount_point.lstrip("/")
    parts = [p for p in rel.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _smallest(values: list[float | None]) -> float | None:
    limits = [v for v in values if v is not None]
    return min(limits) if limits else None


def cgroup_cpus(root: str | os.PathLike = "/") -> float | None:
    """The CPU quota of this process's cgroup (v2 or v1) in CPUs, e.g. 1.5; None when unlimited or unknown."""
    root = Path(root)
    found: list[float | None] = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        for mount_root, point, fstype, options in _mounts(root):
            if hid == "0" and controllers == "" and fstype == "cgroup2":
                found += [parse_cpu_max(_read(d / "cpu.max") or "") for d in _levels(root, point, mount_root, path)]
            elif fstype == "cgroup" and "cpu" in controllers.split(",") and "cpu" in options:
                found += [parse_cfs(_read(d / "cpu.cfs_quota_us") or "", _read(d / "cpu.cfs_period_us") or "")
                          for d in _levels(root, point, mount_root, path)]
    return _smallest(found)


def cpu_budget(root: str | os.PathLike = "/", affinity: int | None = None) -> int:
    """CPUs this process may use: ``min(affinity, ceil(cgroup quota))``, at least 1.

    ``ceil``: a quota of 1.5 CPUs still runs two threads at a time, three quarters of the
    time each; whether two beat one then is for the engine's measurements to say
    (engine/threads.py).
    """
    cpus = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpus(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota - 1e-9))
    return max(1, cpus)


class CpuMeter:
    """CPU time that *other* processes take on the CPUs this process may run on, from ``/proc/stat``.

    Between two calls of :meth:`sample`::

        others = (busy time of our CPUs - this process's CPU time) / wall time     [CPUs]

    busy counts user, system, irq, softirq and steal (a hypervisor running another machine
    on the same core) jiffies of each ``cpuN`` line in the affinity mask, and nice jiffies
    only when this process is niced itself (a niced process gives way to ours); ``ncpus``
    is how many such lines there are. Jiffies are 10 ms, so a window shorter than
    MIN_WINDOW returns None and keeps growing; so does everything where ``/proc/stat``
    cannot be read.
    """

    MIN_WINDOW = 0.05

    def __init__(self, path: str = "/proc/stat", cpus: set[int] | None = None,
                 clock=time.perf_counter, cpu_time=time.process_time):
        self.path, self.clock, self.cpu_time = path, clock, cpu_time
        if cpus is None:
            try:
                cpus = set(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = None
        self.names = None if cpus is None else {f"cpu{i}" for i in cpus}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpus = 0
        try:  # processes niced above us give way to us: their CPU time is ours to take, unless we are niced too
            self.count_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
        except (AttributeError, OSError):
            self.count_nice = False
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy seconds of our CPUs, this process's CPU seconds), or None."""
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        busy, n = 0, 0
        for line in lines:
            fields = line.split()
            if len(fields) < 9 or not fields[0].startswith("cpu") or fields[0] == "cpu":
                continue
            if self.names is not None and fields[0] not in self.names:
                continue
            try:
                v = [int(x) for x in fields[1:9]]
            except ValueError:
                continue
            busy += v[0] + v[2] + v[5] + v[6] + v[7] + (v[1] if self.count_nice else 0)
            n += 1
        if n == 0:
            return None
        self.ncpus = n
        return self.clock(), busy / self.tick, self.cpu_time()

    def window(self) -> float | None:
        """Seconds since the last sample (the window the next one covers), or None without a reading."""
        return None if self.last is None else self.clock() - self.last[0]

    def sample(self) -> float | None:
        """CPUs the others used since the previous sample (0.0: quiet), or None when unknown or too soon."""
        now = self._read()
        if now is None or self.last is None:
            self.last = now
            return None
        if now[0] - self.last[0] < self.MIN_WINDOW:
            return None  # the window keeps its start
        last, self.last = self.last, now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


__all__ = ["CpuMeter", "affinity_cpus", "cgroup_cpus", "cpu_budget", "parse_cfs", "parse_cpu_max"]
