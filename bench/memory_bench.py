"""Section 3: peak RSS of one consumer process working through a large backlog."""

from __future__ import annotations

from typing import Any

import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from .consumer_bench import ConsumerVariant, measure_run
from .workload import AccountsWorkload, Deposits

TARGET_MB = 150.0

#: Default QueueConfig apart from concurrency 32 (pool of 32 connections).
MEMORY_VARIANT = ConsumerVariant(
    key="memory", label="safesync_async, 1 proc x concurrency 32", kind="safesync",
    processes=1, concurrency=32,
)  # fmt: skip


async def memory_section(
    engine: AsyncEngine, client: redis.asyncio.Redis, backlog: int, patience: float
) -> dict[str, Any]:
    """One verified run over a ``backlog``-message stream; the worker reports VmHWM."""
    workload = AccountsWorkload(engine, client)
    await workload.create()
    try:
        record = await measure_run(
            workload, Deposits.generate(backlog), MEMORY_VARIANT, "mem", patience
        )
    finally:
        await workload.cleanup()
    return {"backlog": backlog, "target_mb": TARGET_MB, "run": record}
