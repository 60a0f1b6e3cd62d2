"""Run a fixed number of operations with concurrent asyncio workers and time each."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .stats import percentile

Operation = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class LoadResult:
    """Wall time of the whole load, latency of each successful operation, failures."""

    wall_seconds: float
    latencies: list[float]
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies)
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return {
            "wall_seconds": self.wall_seconds,
            "completed": done,
            "ops_per_s": done / self.wall_seconds if self.wall_seconds else None,
            "p50_ms": p50 * 1000 if p50 is not None else None,
            "p99_ms": p99 * 1000 if p99 is not None else None,
            "errors": dict(self.errors),
        }


async def run_load(operation: Operation, keys: Sequence[int], workers: int) -> LoadResult:
    """Call ``operation(key)`` once per key, ``workers`` calls at a time. A failing call
    is counted by exception type and the load goes on."""
    pending = iter(keys)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def worker() -> None:
        for key in pending:  # shared iterator: each key is taken by exactly one worker
            started = time.perf_counter()
            try:
                await operation(key)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return LoadResult(time.perf_counter() - started, latencies, errors)
