"""Section 2a: the database primitives under contention (one hot row, 1,000 cold rows).

Every operation increments one counter by one and runs inside ``retry_transaction``
(retries are what a careful caller does; for the atomic UPDATE they never trigger), so
after N operations the counters must add up to N.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import AdvisoryLock, DbSession, RowLock, occ_update, retry_transaction

from .counters import CounterTable, server_deadlocks
from .load import Operation, run_load
from .procstat import CpuMeter, CpuWindow, delta, is_disturbed, wait_for_quiet_host
from .settings import (
    ACCOUNTS,
    DISTURBED_SHARE,
    PAYLOAD_SEED,
    PRIMITIVE_WORKERS,
    QUIET_HOST_BUSY,
)
from .stats import progress

#: Generous retry bounds so that OCC on one hot row with 32 workers completes every
#: operation (the defaults, 10 attempts / 30 s, are meant for services, not for a
#: worst case built on purpose); exhausted operations are reported as errors.
RETRY_LIMITS: dict[str, Any] = {"max_attempts": 1_000, "max_elapsed": 300.0}
RETRIES_SAMPLE = "safesync_db_retries_total"

#: Primitive (also the retry metrics' operation label) -> how the report names it.
PRIMITIVES = {
    "atomic": "atomic UPDATE n = n + 1",
    "occ": "OCC (occ_update + retry_transaction)",
    "row_lock": "RowLock read-modify-write",
    "advisory_lock": "AdvisoryLock read-modify-write",
}


def operations(
    engine: AsyncEngine, table: str, registry: CollectorRegistry
) -> dict[str, Operation]:
    """The four ways to add one to a counter, by the keys of :data:`PRIMITIVES`."""
    select = f"SELECT n, version FROM {table} WHERE id = :id"
    write = f"UPDATE {table} SET n = :n WHERE id = :id"

    def retried(name: str, work: Callable[[DbSession, int], Awaitable[None]]) -> Operation:
        async def operation(key: int) -> None:
            async def attempt(session: DbSession) -> None:
                await work(session, key)

            await retry_transaction(
                engine, attempt, operation=name, registry=registry, **RETRY_LIMITS
            )

        return operation

    async def atomic(session: DbSession, key: int) -> None:
        await session.execute(f"UPDATE {table} SET n = n + 1 WHERE id = :id", {"id": key})

    async def optimistic(session: DbSession, key: int) -> None:
        row = await session.fetch_one(select, {"id": key})
        assert row is not None
        await occ_update(
            session, table, "id", key, "version", row["version"], {"n": row["n"] + 1},
            raise_on_conflict=True,
        )  # fmt: skip

    async def row_lock(session: DbSession, key: int) -> None:
        row = await RowLock(session, table, {"id": key}).acquire()
        assert row is not None
        await session.execute(write, {"id": key, "n": row["n"] + 1})

    async def advisory_lock(session: DbSession, key: int) -> None:
        await AdvisoryLock(session, f"{table}:{key}").acquire()
        row = await session.fetch_one(select, {"id": key})
        assert row is not None
        await session.execute(write, {"id": key, "n": row["n"] + 1})

    works = {
        "atomic": atomic,
        "occ": optimistic,
        "row_lock": row_lock,
        "advisory_lock": advisory_lock,
    }
    return {name: retried(name, work) for name, work in works.items()}


def retries_by_reason(registry: CollectorRegistry) -> dict[str, int]:
    """``safesync_db_retries_total`` in ``registry``, summed per reason."""
    counts: dict[str, int] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == RETRIES_SAMPLE:
                reason = sample.labels["reason"]
                counts[reason] = counts.get(reason, 0) + int(sample.value)
    return counts


def scenario_keys(hot: bool, ops: int) -> list[int]:
    """The counter each operation increments: always row 1, or seeded uniform rows."""
    if hot:
        return [1] * ops
    rng = random.Random(PAYLOAD_SEED)
    return [rng.randint(1, ACCOUNTS) for _ in range(ops)]


async def primitives_section(
    engine: AsyncEngine, ops: int, patience: float
) -> list[dict[str, Any]]:
    """Every primitive on one hot row, then on 1,000 cold rows; each result verified.
    Before each scenario the host gets up to ``patience`` seconds to become quiet."""
    table = CounterTable(engine, ACCOUNTS)
    await table.create()
    meter = CpuMeter()
    results = []
    try:
        for hot in (True, False):
            rows = "hot (1 row)" if hot else f"cold ({ACCOUNTS:,} rows)"
            for name, label in PRIMITIVES.items():
                registry = CollectorRegistry()
                operation = operations(engine, table.name, registry)[name]
                await table.reset()
                deadlocks_before = await server_deadlocks(engine)
                await wait_for_quiet_host(QUIET_HOST_BUSY, patience)
                window = CpuWindow(meter)
                load = await run_load(operation, scenario_keys(hot, ops), PRIMITIVE_WORKERS)
                cpu = window.usage()
                deadlocks_after = await server_deadlocks(engine)
                total = await table.total()
                retries = retries_by_reason(registry)
                record = {
                    "primitive": label,
                    "rows": rows,
                    "ops": ops,
                    "workers": PRIMITIVE_WORKERS,
                    **load.summary(),
                    "retries": sum(retries.values()),
                    "retries_by_reason": retries,
                    "deadlocks": retries.get("deadlock", 0),
                    "server_deadlocks": delta(deadlocks_after, deadlocks_before),
                    "final_total": total,
                    "ok": total == ops and not load.errors,
                    "cpu_s": cpu,
                    "disturbed": is_disturbed(cpu["other"], load.wall_seconds, DISTURBED_SHARE),
                }
                results.append(record)
                progress(
                    f"[primitives] {label}, {rows}: {record['ops_per_s'] or 0:,.0f} ops/s, "
                    f"{record['retries']} retries, {'ok' if record['ok'] else 'FAILED'}"
                )
    finally:
        await table.drop()
    return results
