"""Start worker processes, release them together, and measure the run."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from .procstat import CpuMeter, delta
from .protocol import GO, READY, RESULT, WorkerResult, WorkerSpec
from .settings import REPO_ROOT

READY_TIMEOUT = 60.0
_STDERR_TAIL = 2_000


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

    def __init__(self, spec: WorkerSpec, process: asyncio.subprocess.Process, stderr: IO[bytes]):
        self.spec = spec
        self.process = process
        self.stderr = stderr

    @classmethod
    async def start(cls, spec: WorkerSpec, stderr: IO[bytes]) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.worker",
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
                raise RuntimeError(f"{self.spec.consumer} exited before saying {marker.strip()!r}")
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(marker):
                return line[len(marker) :]

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{GO}\n".encode())

    async def finish(self, grace: float) -> str | None:
        """Wait for the exit (killing it after ``grace`` seconds); an error text if it failed."""
        try:
            async with asyncio.timeout(grace):
                code = await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            return f"{self.spec.consumer}: killed after {grace:g} s"
        if code == 0:
            return None
        return f"{self.spec.consumer}: exit status {code}: {self.stderr_tail()}"

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-_STDERR_TAIL:].strip()


async def run_workers(specs: Sequence[WorkerSpec], time_limit: float) -> RunMeasurement:
    """Start every worker, wait until all are ready, release them at once, and wait up
    to ``time_limit`` seconds for their results. Wall time is from the first worker's start
    to the last worker's end; CPU covers the release-to-last-result window."""
    measurement = RunMeasurement()
    workers: list[_Worker] = []
    with contextlib.ExitStack() as files:
        try:
            for spec in specs:
                stderr = files.enter_context(tempfile.TemporaryFile())
                workers.append(await _Worker.start(spec, stderr))
            await _measure(workers, time_limit, measurement)
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


async def _measure(workers: list[_Worker], time_limit: float, measurement: RunMeasurement) -> None:
    """Ready, go, results: fill ``measurement`` in."""
    meter = CpuMeter()
    async with asyncio.timeout(READY_TIMEOUT):
        await asyncio.gather(*(w.line_starting(READY) for w in workers))
    before = meter.sample()
    for worker in workers:
        worker.go()
    async with asyncio.timeout(time_limit):
        lines = await asyncio.gather(*(w.line_starting(RESULT) for w in workers))
    after = meter.sample()
    results = [WorkerResult.from_json(line) for line in lines]
    measurement.workers = results
    measurement.wall_seconds = max(r.finished for r in results) - min(r.started for r in results)
    measurement.worker_cpu = sum(r.cpu_seconds for r in results)
    measurement.untimed_cpu = sum(r.untimed_cpu_seconds for r in results)
    measurement.database_cpu = delta(after.database, before.database)
    measurement.redis_cpu = delta(after.redis, before.redis)
    measurement.host_busy = after.host_busy - before.host_busy
