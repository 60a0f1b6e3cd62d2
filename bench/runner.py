"""Start worker processes, release them together, and measure the run."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from .procstat import CpuMeter, delta
from .protocol import GO, READY, RESULT, WorkerResult
from .settings import REPO_ROOT

READY_TIMEOUT = 60.0
_STDERR_TAIL = 2_000


class Spec(Protocol):
    """What a worker process is started with: a name for messages, JSON for its argv."""

    @property
    def name(self) -> str: ...

    def to_json(self) -> str: ...


@dataclass(slots=True)
class RunMeasurement:
    """One run of one or more worker processes (CPU in seconds over the run)."""

    wall_seconds: float | None = None
    workers: list[WorkerResult] = field(default_factory=list)
    worker_cpu: float | None = None
    untimed_cpu: float = 0.0  # the workers' CPU outside their own windows (not "other")
    database_cpu: float | None = None
    redis_cpu: float | None = None
    host_busy: float | None = None
    errors: list[str] = field(default_factory=list)


class _Worker:
    """One worker subprocess with its stderr kept in a temporary file."""

    def __init__(self, spec: Spec, process: asyncio.subprocess.Process, stderr: IO[bytes]):
        self.spec = spec
        self.process = process
        self.stderr = stderr

    @classmethod
    async def start(cls, spec: Spec, stderr: IO[bytes], module: str) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            spec.to_json(),
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        return cls(spec, process, stderr)

    async def line_starting(self, marker: str) -> str:
        """The first stdout line starting with ``marker`` (other lines are ignored)."""
        assert self.process.stdout is not None
        while True:
            raw = await self.process.stdout.readline()
            if not raw:
                raise RuntimeError(f"{self.spec.name} exited before saying {marker.strip()!r}")
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(marker):
                return line[len(marker) :]

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{GO}\n".encode())

    def let_go(self) -> None:
        """Close its stdin: a worker that waits for that after its result (to keep its
        connections, and the server processes serving them, until the parent has
        sampled them) may now close them and exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    async def finish(self, grace: float) -> str | None:
        """Wait for the exit (killing it after ``grace`` seconds); an error text if it failed."""
        try:
            async with asyncio.timeout(grace):
                code = await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            return f"{self.spec.name}: killed after {grace:g} s"
        if code == 0:
            return None
        return f"{self.spec.name}: exit status {code}: {self.stderr_tail()}"

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-_STDERR_TAIL:].strip()


async def run_workers(
    specs: Sequence[Spec],
    time_limit: float,
    *,
    module: str = "bench.worker",
    meter: CpuMeter | None = None,
    before_go: Callable[[], Awaitable[None]] | None = None,
) -> RunMeasurement:
    """Start every worker (``python -m <module> '<spec json>'``), wait until all are
    ready, run ``before_go`` (resetting tables, waiting for a quiet host), release them at
    once, and wait up to ``time_limit`` seconds for their results. Wall time is from the
    first worker's start to the last worker's end; CPU covers the release-to-last-result
    window (``meter`` says which database server to watch; MariaDB by default)."""
    measurement = RunMeasurement()
    workers: list[_Worker] = []
    with contextlib.ExitStack() as files:
        try:
            for spec in specs:
                stderr = files.enter_context(tempfile.TemporaryFile())
                workers.append(await _Worker.start(spec, stderr, module))
            await _measure(workers, time_limit, measurement, meter or CpuMeter(), before_go)
        except (TimeoutError, RuntimeError) as exc:
            measurement.errors.append(f"{type(exc).__name__}: {exc}".rstrip(": "))
            for worker in workers:
                worker.kill()
        except BaseException:  # interrupted: do not leave workers consuming
            for worker in workers:
                worker.kill()
            raise
        finally:
            for worker in workers:
                error = await worker.finish(grace=30.0)
                if error is not None:
                    measurement.errors.append(error)
    return measurement


async def _measure(
    workers: list[_Worker],
    time_limit: float,
    measurement: RunMeasurement,
    meter: CpuMeter,
    before_go: Callable[[], Awaitable[None]] | None,
) -> None:
    """Ready, go, results: fill ``measurement`` in."""
    async with asyncio.timeout(READY_TIMEOUT):
        await asyncio.gather(*(w.line_starting(READY) for w in workers))
    if before_go is not None:
        await before_go()
    before = meter.sample()
    for worker in workers:
        worker.go()
    async with asyncio.timeout(time_limit):
        lines = await asyncio.gather(*(w.line_starting(RESULT) for w in workers))
    after = meter.sample()
    for worker in workers:
        worker.let_go()
    results = [WorkerResult.from_json(line) for line in lines]
    measurement.workers = results
    measurement.wall_seconds = max(r.finished for r in results) - min(r.started for r in results)
    measurement.worker_cpu = sum(r.cpu_seconds for r in results)
    measurement.untimed_cpu = sum(r.untimed_cpu_seconds for r in results)
    measurement.database_cpu = delta(after.database, before.database)
    measurement.redis_cpu = delta(after.redis, before.redis)
    measurement.host_busy = after.host_busy - before.host_busy
