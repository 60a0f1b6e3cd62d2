"""A handler's transaction that loses a lock conflict is run again at once, without
spending a delivery (QueueConfig.transaction_retries)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    DeadlockError,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
)

from ..conftest import TableFactory
from .helpers import pending_count


def _config(stream: str, **overrides: Any) -> QueueConfig:
    settings: dict[str, Any] = {
        "stream_key": stream,
        "consumer_group": "g",
        "consumer_name": "c",
        "block_ms": 100,
        "concurrency": 2,
        "max_deliveries": 1,
        "claim_min_idle_ms": 60_000,
    }
    settings.update(overrides)
    return QueueConfig(**settings)


def _retries(registry: CollectorRegistry, stream: str, reason: str) -> float:
    value = registry.get_sample_value(
        "safesync_db_retries_total", {"operation": f"consume:{stream}", "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("retries", [3, 0])
async def test_real_deadlock_is_retried_in_place(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str, retries: int
) -> None:
    """Two handlers lock two rows in opposite orders and meet at a barrier, so the
    server must pick a deadlock victim. With retries the victim runs again and both
    transfers land on their first delivery; without, the victim's delivery fails (and
    with max_deliveries=1 it is dead-lettered), and only the survivor is applied."""
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL)")
    async with DbSession(engine) as s:
        await s.execute(f"INSERT INTO {table} (id, n) VALUES (1, 0), (2, 0)")
    await QueueProducer(redis, stream).publish_batch([{"rows": [1, 2]}, {"rows": [2, 1]}])
    barrier = asyncio.Barrier(2)
    attempts: collections.Counter[str] = collections.Counter()

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        attempts[message.id] += 1
        first, second = message.payload["rows"]
        await session.execute(f"UPDATE {table} SET n = n + 1 WHERE id = :id", {"id": first})
        if attempts[message.id] == 1:
            async with asyncio.timeout(10):
                await barrier.wait()
        await session.execute(f"UPDATE {table} SET n = n + 1 WHERE id = :id", {"id": second})

    registry = CollectorRegistry()
    consumer = QueueConsumer(redis, _config(stream, transaction_retries=retries), registry=registry)
    await asyncio.wait_for(consumer.run_until_drained(handler, engine=engine), 60)

    async with DbSession(engine) as s:
        total = await s.execute_scalar(f"SELECT SUM(n) FROM {table}")
    stats = consumer.statistics()
    assert await pending_count(redis, stream, "g") == 0
    if retries:
        assert int(total) == 4
        assert stats.acked == 2 and stats.failed == 0 and stats.dead_lettered == 0
        assert sorted(attempts.values()) == [1, 2]
        assert _retries(registry, stream, "deadlock") == 1
    else:
        assert int(total) == 2
        assert stats.acked == 1 and stats.failed == 1 and stats.dead_lettered == 1
        assert _retries(registry, stream, "deadlock") == 0


async def test_batch_is_retried_whole_before_falling_back(
    engine: AsyncEngine, redis: Any, stream: str
) -> None:
    """A batch that loses a conflict twice is run again as a batch (one transaction),
    not split into single messages; one that keeps losing falls back to one by one."""
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(20))
    batches: list[int] = []
    failures_left = 2

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        nonlocal failures_left
        await session.execute_scalar("SELECT 1")
        if message.payload["n"] == 0:
            batches.append(0)
        if message.payload["n"] == 19 and failures_left:
            failures_left -= 1
            raise DeadlockError("simulated deadlock", errno=1213, sqlstate="40001")

    registry = CollectorRegistry()
    config = _config(stream, concurrency=1, batch_size=20, transaction_retries=2)
    # The whole backlog is read at once and waits, so the single worker takes one batch.
    consumer = QueueConsumer(redis, config, registry=registry)
    await consumer.run_until_drained(handler, engine=engine)

    assert len(batches) == 3  # two failed attempts of the batch, then the committed one
    stats = consumer.statistics()
    assert stats.acked == 20 and stats.failed == 0
    assert _retries(registry, stream, "deadlock") == 2
    commits = registry.get_sample_value(
        "safesync_db_transactions_total",
        {"operation": f"consume:{stream}", "outcome": "committed"},
    )
    assert commits == 1
