"""safesync_async's worker runner, ``safesync worker``, with 1 or more processes.

The bench worker process starts the runner (``python -m safesync_async.cli worker
bench.consumers.runner:app --workers N``) when told to go, as an operator would, and
stops it with SIGTERM once the group is drained. So that the comparison with the plain
consumer is about consuming, not about starting interpreters, the variant measures its
own window: from the first worker process's "started" log record to the moment the group
is drained, and the CPU that the runner, its processes and this process used in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import time
from datetime import datetime
from typing import Any

import redis.asyncio

from safesync_async import DbSession, QueueMessage, WorkerApp

from ..drain import group_drained
from ..procstat import cpu_seconds, status_bytes
from ..settings import DRAIN_POLL_SECONDS
from ..workload import handler_sql
from .base import AsyncVariant

TABLE_VARIABLE = "BENCH_RUNNER_TABLE"
_SQL = handler_sql(os.environ.get(TABLE_VARIABLE, "unused"))


async def deposit(message: QueueMessage[Any], session: DbSession) -> None:
    """The same one-UPDATE handler as the other variants."""
    await session.execute(_SQL, message.payload)


#: What ``safesync worker bench.consumers.runner:app`` runs; the stream, group, URLs and
#: concurrency come from SAFESYNC_* environment variables set by :class:`RunnerConsumer`.
app = WorkerApp(handler=deposit)


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _children_cpu() -> float:
    """CPU seconds of the exited and reaped child processes (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunnerConsumer(AsyncVariant):
    """``safesync worker`` with ``spec.processes`` processes at ``spec.concurrency`` each.

    ``measurement`` (started, finished, CPU seconds in that window, peak RSS bytes of the
    largest worker process, CPU seconds of the runner and its processes outside the
    window) replaces what the bench worker measures around :meth:`consume`."""

    measurement: tuple[float, float, float, int, float] | None = None

    async def aprepare(self) -> None:
        self.redis = redis.asyncio.Redis.from_url(self.spec.redis_url)
        self.resources.push_async_callback(self.redis.aclose)
        await self.redis.ping()

    async def aconsume(self) -> dict[str, int]:
        spec = self.spec
        env = {
            **os.environ,
            "SAFESYNC_STREAM": spec.stream,
            "SAFESYNC_GROUP": spec.group,
            "SAFESYNC_DATABASE_URL": spec.database_url,
            "SAFESYNC_REDIS_URL": spec.redis_url,
            "SAFESYNC_CONCURRENCY": str(spec.concurrency),
            "SAFESYNC_BATCH_SIZE": str(spec.batch_size),
            TABLE_VARIABLE: spec.table,
        }
        port = _free_port()
        own_before = cpu_seconds() or 0.0
        children_before = _children_cpu()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "safesync_async.cli", "worker", "bench.consumers.runner:app",
            "--workers", str(spec.processes), "--http-port", str(port), "--log-format", "json",
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        baselines: dict[int, float] = {}  # pid -> CPU seconds when its consumer started
        first_start: list[float] = []
        try:
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self._read_log(process, baselines, first_start))
                while not first_start or not await group_drained(
                    self.redis, spec.stream, spec.group
                ):
                    if process.returncode is not None:
                        raise RuntimeError(f"the runner exited with code {process.returncode}")
                    await asyncio.sleep(DRAIN_POLL_SECONDS)
                finished = _monotonic()
                cpu = sum((cpu_seconds(pid) or 0.0) - before for pid, before in baselines.items())
                own = (cpu_seconds() or 0.0) - own_before
                peak = max((status_bytes("VmHWM", pid) or 0) for pid in baselines)
                counters = {"acked": int(await self._acked(port))}
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), 60)
                await reader
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if code != 0:
            raise RuntimeError(f"the runner exited with code {code}")
        everything = _children_cpu() - children_before + (cpu_seconds() or 0.0) - own_before
        self.measurement = (first_start[0], finished, cpu + own, peak, everything - cpu - own)
        return counters

    async def _read_log(
        self,
        process: asyncio.subprocess.Process,
        baselines: dict[int, float],
        first_start: list[float],
    ) -> None:
        """Pass the runner's log on to stderr; note when each worker process started."""
        assert process.stderr is not None
        while line := await process.stderr.readline():
            sys.stderr.write(line.decode(errors="replace"))
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "worker_started":
                at = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
                if not first_start:
                    first_start.append(_monotonic() - (time.time() - at))
                    baselines[process.pid] = cpu_seconds(process.pid) or 0.0
                baselines[int(record["pid"])] = cpu_seconds(int(record["pid"])) or 0.0

    async def _acked(self, port: int) -> float:
        """``safesync_queue_messages_total{outcome="acked"}`` on the runner's endpoint."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("safesync_queue_messages_total{") and 'outcome="acked"' in line
        )
