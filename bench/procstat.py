"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_UTIME = 11  # utime and stime, counted from the field after the command name
_STIME = 12


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds a process (all its threads) has used; None if unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[_UTIME]) + int(fields[_STIME])) / _TICKS


def status_bytes(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of /proc/<pid>/status (``VmHWM``, ``VmRSS``...) in bytes."""
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    return None


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent busy (all CPUs; idle and iowait excluded)."""
    first = (_PROC / "stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


async def wait_for_quiet_host(limit: float, patience: float, window: float = 0.5) -> float:
    """Wait until the host's busy share over ``window`` seconds is below ``limit`` (or
    ``patience`` seconds have passed); returns the last busy share measured."""
    cpus = os.cpu_count() or 1
    deadline = time.monotonic() + patience
    while True:
        before = host_busy_seconds()
        await asyncio.sleep(window)
        share = (host_busy_seconds() - before) / (window * cpus)
        if share < limit or time.monotonic() > deadline:
            return share


def parent_pid(pid: int | str) -> int | None:
    """The parent of a process; None if unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def main_thread_cpu_seconds(pid: int | str) -> float | None:
    """CPU seconds of a process's main thread at nanosecond resolution
    (``/proc/<pid>/schedstat``; for a single-threaded process, the whole process), falling
    back to :func:`cpu_seconds`. Per-process tick counts would round each of many short
    busy processes down by up to a tick."""
    try:
        return int((_PROC / str(pid) / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a single-threaded process and its direct children (a PostgreSQL
    server: the postmaster and its backends); None if the process is unreadable. Children
    that exited are not counted."""
    own = main_thread_cpu_seconds(pid)
    if own is None:
        return None
    total = own
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and entry.name != str(pid) and parent_pid(entry.name) == pid:
            total += main_thread_cpu_seconds(entry.name) or 0.0
    return total


def find_pid(*names: str) -> int | None:
    """The lowest pid whose command name is one of ``names`` (e.g. ``mariadbd``)."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            found.append(int(entry.name))
    return min(found) if found else None


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU counters at one moment: the servers' processes and the whole host."""

    database: float | None
    redis: float | None
    host_busy: float


#: Process names of the database servers, by the backend name used in the results.
DATABASE_PROCESSES = {"mariadb": ("mariadbd", "mysqld"), "postgresql": ("postgres",)}


class CpuMeter:
    """Samples the CPU time of the database and Redis servers (when they run on this host).
    The database is the lowest pid with one of ``database_names`` and its direct children
    (PostgreSQL runs a process per connection)."""

    def __init__(self, database_names: tuple[str, ...] = DATABASE_PROCESSES["mariadb"]) -> None:
        self.database_pid = find_pid(*database_names)
        self._database_tree = "postgres" in database_names
        self.redis_pid = find_pid("redis-server", "valkey-server")

    def sample(self) -> CpuSample:
        database = None
        if self.database_pid:
            database = (
                tree_cpu_seconds(self.database_pid)
                if self._database_tree
                else cpu_seconds(self.database_pid)
            )
        return CpuSample(
            database=database,
            redis=cpu_seconds(self.redis_pid) if self.redis_pid else None,
            host_busy=host_busy_seconds(),
        )


class CpuWindow:
    """CPU used between creation and :meth:`usage` by this process, the servers, and the
    rest of the host (for work done inside the harness process itself)."""

    def __init__(self, meter: CpuMeter) -> None:
        self._meter = meter
        self._own = cpu_seconds()
        self._servers = meter.sample()

    def usage(self) -> dict[str, float | None]:
        own = delta(cpu_seconds(), self._own)
        servers = self._meter.sample()
        database = delta(servers.database, self._servers.database)
        redis = delta(servers.redis, self._servers.redis)
        host_busy = servers.host_busy - self._servers.host_busy
        return {
            "own": own,
            "database": database,
            "redis": redis,
            "host_busy": host_busy,
            "other": remainder(host_busy, own, database, redis),
        }


def is_disturbed(other_cpu: float | None, wall_seconds: float | None, share: float) -> bool:
    """Did CPU not accounted to the measured processes exceed ``share`` of the host's
    capacity over ``wall_seconds``? (Other processes competed with the measurement.)"""
    if other_cpu is None or not wall_seconds:
        return False
    return other_cpu > share * wall_seconds * (os.cpu_count() or 1)


def delta(after: float | None, before: float | None) -> float | None:
    """``after - before``, or None when either is unknown."""
    return None if after is None or before is None else after - before


def remainder(total: float | None, *parts: float | None) -> float | None:
    """``total`` minus every part, or None when any of them is unknown."""
    if total is None:
        return None
    left = total
    for part in parts:
        if part is None:
            return None
        left -= part
    return left
