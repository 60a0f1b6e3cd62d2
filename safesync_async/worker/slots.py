"""A worker slot (index, consumer name, restart history) and its current process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field

from .restarts import RestartHistory
from .status import WorkerStatus

__all__ = ["Incarnation", "Slot", "consumer_name", "describe_exit"]


def consumer_name(index: int, runner_pid: int | None = None) -> str:
    """``<host>-<runner pid>-<index>``: unique per process, stable across its restarts."""
    return f"{socket.gethostname()}-{runner_pid or os.getpid()}-{index}"


@dataclass(eq=False)
class Incarnation:
    """One started process of a slot, and what it last reported."""

    process: asyncio.subprocess.Process
    started_at: float
    last_seen: float
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    status: WorkerStatus | None = None
    ran: bool = False  # its consumer was running at some point
    restart_requested: bool = False

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def signal(self, sig: signal.Signals) -> None:
        if self.alive and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


@dataclass(eq=False)
class Slot:
    """Worker ``index``: its consumer name, restart history and current process."""

    index: int
    consumer_name: str
    history: RestartHistory
    current: Incarnation | None = None
    waiting: str | None = "starting"  # what it waits for while no process runs

    @property
    def running(self) -> Incarnation | None:
        """The current process if it has not exited."""
        current = self.current
        return current if current is not None and current.alive else None


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
