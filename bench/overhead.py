"""Section 2b: what DbSession costs over a bare SQLAlchemy AsyncConnection.

Both run the same unit of work on the same engine: SELECT a row by primary key, UPDATE
it, COMMIT; once sequentially (1 worker) and with 32 concurrent workers. The paths
alternate within every repetition; the ratio compares median wall times.
"""

from __future__ import annotations

import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession

from .counters import CounterTable
from .load import Operation, run_load
from .procstat import CpuMeter, CpuWindow, is_disturbed, wait_for_quiet_host
from .settings import (
    ACCOUNTS,
    DISTURBED_SHARE,
    PAYLOAD_SEED,
    PRIMITIVE_WORKERS,
    QUIET_HOST_BUSY,
)
from .stats import median, progress, ratio

TARGET_RATIO = 1.20
WARM_UP_OPS = 200
PATHS = ("DbSession", "AsyncConnection")


def cold_keys(ops: int) -> list[int]:
    """The row of each operation: seeded uniform over the rows."""
    rng = random.Random(PAYLOAD_SEED)
    return [rng.randint(1, ACCOUNTS) for _ in range(ops)]


def paths(engine: AsyncEngine, table: str) -> dict[str, Operation]:
    """The unit of work through DbSession and through a bare AsyncConnection."""
    select_sql = f"SELECT id, n FROM {table} WHERE id = :id"
    update_sql = f"UPDATE {table} SET n = n + 1 WHERE id = :id"
    select_clause, update_clause = sa.text(select_sql), sa.text(update_sql)

    async def through_session(key: int) -> None:
        async with DbSession(engine) as session:
            await session.fetch_one(select_sql, {"id": key})
            await session.execute(update_sql, {"id": key})

    async def through_connection(key: int) -> None:
        async with engine.connect() as conn:
            (await conn.execute(select_clause, {"id": key})).mappings().one_or_none()
            await conn.execute(update_clause, {"id": key})
            await conn.commit()

    return {"DbSession": through_session, "AsyncConnection": through_connection}


async def overhead_section(
    engine: AsyncEngine, ops: int, reps: int, patience: float
) -> dict[str, Any]:
    """Median wall time per (workers, path) over ``reps`` interleaved repetitions (each
    run after waiting up to ``patience`` seconds for a quiet host)."""
    table = CounterTable(engine, ACCOUNTS)
    await table.create()
    work = paths(engine, table.name)
    keys = cold_keys(ops)
    meter = CpuMeter()
    runs: list[dict[str, Any]] = []
    try:
        for path in PATHS:  # fill the pool and the statement caches first
            await run_load(work[path], keys[:WARM_UP_OPS], PRIMITIVE_WORKERS)
        for rep in range(1, reps + 1):
            for workers in (1, PRIMITIVE_WORKERS):
                for path in PATHS:
                    await table.reset()
                    await wait_for_quiet_host(QUIET_HOST_BUSY, patience)
                    window = CpuWindow(meter)
                    load = await run_load(work[path], keys, workers)
                    cpu = window.usage()
                    total = await table.total()
                    runs.append(
                        {
                            "rep": rep,
                            "workers": workers,
                            "path": path,
                            **load.summary(),
                            "ok": total == ops and not load.errors,
                            "cpu_s": cpu,
                            "disturbed": is_disturbed(
                                cpu["other"], load.wall_seconds, DISTURBED_SHARE
                            ),
                        }
                    )
    finally:
        await table.drop()
    comparisons = []
    for workers in (1, PRIMITIVE_WORKERS):
        walls = {
            path: median(
                [r["wall_seconds"] for r in runs if r["workers"] == workers and r["path"] == path]
            )
            for path in PATHS
        }
        value = ratio(walls["DbSession"], walls["AsyncConnection"])
        comparisons.append(
            {
                "workers": workers,
                "ops": ops,
                "median_wall_s": walls,
                "us_per_op": {p: w / ops * 1e6 if w else None for p, w in walls.items()},
                "ratio": value,
                "target": TARGET_RATIO,
                "ok": all(r["ok"] for r in runs if r["workers"] == workers),
                "disturbed_runs": sum(r["disturbed"] for r in runs if r["workers"] == workers),
            }
        )
        progress(f"[overhead] {workers} worker(s): DbSession / AsyncConnection = {value or 0:.3f}")
    return {"reps": reps, "runs": runs, "comparisons": comparisons}
