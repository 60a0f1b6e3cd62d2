"""What a worker process tells the runner: one JSON line per change of its state, and a
heartbeat, on a pipe of its own (stdout stays the user's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["StatusWriter", "WorkerStatus", "read_statuses"]

State = Literal["starting", "running", "stopping"]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker process as it last described itself."""

    pid: int
    state: State
    ready: bool
    reasons: tuple[str, ...] = ()
    in_flight: int = 0
    acked: int = 0

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> WorkerStatus | None:
        """The status in ``line``, or None if it is not one (a torn or foreign line)."""
        try:
            data = json.loads(line)
            return cls(
                pid=int(data["pid"]),
                state=data["state"],
                ready=bool(data["ready"]),
                reasons=tuple(str(r) for r in data.get("reasons", ())),
                in_flight=int(data.get("in_flight", 0)),
                acked=int(data.get("acked", 0)),
            )
        except (ValueError, KeyError, TypeError):
            return None


class StatusWriter:
    """The worker's end of the pipe. Writes never block the event loop: a line that does
    not fit (the runner is not reading) is dropped; the next heartbeat repeats it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self.broken = False

    def send(self, status: WorkerStatus) -> bool:
        """Write ``status``; False once the runner's end is closed (the runner is gone)."""
        if self.broken:
            return False
        try:
            os.write(self._fd, status.to_line())
        except BlockingIOError:
            return True
        except OSError:  # BrokenPipeError: nobody reads any more
            self.broken = True
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


async def read_statuses(fd: int, on_status: Callable[[WorkerStatus], None]) -> None:
    """Read status lines from ``fd`` (the runner's end) until the worker closes its end
    (it exited); the fd is closed afterwards."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            status = WorkerStatus.from_line(line)
            if status is not None:
                on_status(status)
    finally:
        transport.close()
