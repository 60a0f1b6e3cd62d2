"""Key-ordered processing on the real servers: the ordering checker (per-key sequence
numbers applied with a conditional UPDATE, random delays, failures and outages) with and
without the option, batch mode, and in-place retries and dead letters seen from Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DatabaseUnavailableError,
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
)

from ..conftest import TableFactory
from ..support.checker import dead_letters
from ..support.ordering import KEY_STATE, OrderingChecker, plan
from .helpers import pending_count


def _config(stream: str, **overrides: Any) -> QueueConfig:
    settings: dict[str, Any] = {
        "stream_key": stream,
        "consumer_group": "g",
        "consumer_name": "c",
        "block_ms": 100,
        "concurrency": 32,
        "claim_min_idle_ms": 500,
        "claim_interval_ms": 100,
        "reconnect_initial_delay": 0.01,
        "reconnect_max_delay": 0.05,
        "ordering_retry_delay": 0.005,
        "ordering_retry_max_delay": 0.05,
    }
    settings.update(overrides)
    return QueueConfig(**settings)


async def _check_ordering(
    engine: AsyncEngine,
    make_table: TableFactory,
    redis: Redis,
    stream: str,
    *,
    ordering: str,
    messages: int,
    batch_size: int = 1,
) -> OrderingChecker:
    """Publish ``messages`` over 50 keys (5 hot ones carry half), consume them with
    concurrency 32 and ``ordering``; with key ordering until drained, without it until
    the first violations show (or everything was applied)."""
    checker = OrderingChecker(
        engine, await make_table(KEY_STATE), plan(messages, 50, 5, 0.5, seed=messages)
    )
    await checker.setup()
    await checker.publish(QueueProducer(redis, stream, registry=None))
    consumer = QueueConsumer(
        redis,
        _config(
            stream,
            ordering=ordering,
            batch_size=batch_size,
            max_deliveries=5 if ordering == "key" else None,  # a violation is not retried forever
        ),
        registry=None,
    )
    if ordering == "key":
        await asyncio.wait_for(consumer.run_until_drained(checker.handle, engine=engine), 240)
        return checker
    task = asyncio.create_task(consumer.run(checker.handle, engine=engine))
    try:
        async with asyncio.timeout(60):
            while len(checker.violations) < 10 and not task.done():
                if consumer.statistics().acked == messages:
                    break
                await asyncio.sleep(0.02)
    finally:
        consumer.stop()
        await task
    return checker


async def _assert_applied_in_order(checker: OrderingChecker, redis: Redis, stream: str) -> None:
    assert checker.violations == []
    assert await checker.applied() == checker.expected
    assert await pending_count(redis, stream, "g") == 0
    assert await dead_letters(redis, stream) == []
    assert checker.failures > 0 and checker.outages > 0  # the run did misbehave


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_ordering_checker(
    engine: AsyncEngine, make_table: TableFactory, redis: Redis, stream: str, ordering: str
) -> None:
    """20,000 messages over 50 keys (5 hot ones carry half), concurrency 32, random
    delays, transient failures and outages: with ordering='key' every key's numbers are
    applied in order (0 violations), all of them, nothing left pending or dead-lettered;
    with ordering='none' the checker sees numbers applied out of order (so it can fail)."""
    started = time.perf_counter()
    checker = await _check_ordering(
        engine, make_table, redis, stream, ordering=ordering, messages=20_000
    )
    print(
        f"ordering={ordering}: {len(checker.violations)} violations, {checker.failures} "
        f"failures, {checker.outages} outages, {time.perf_counter() - started:.1f} s"
    )
    if ordering == "key":
        await _assert_applied_in_order(checker, redis, stream)
    else:
        assert len(checker.violations) > 0


async def test_batches_keep_key_order_in_their_transaction(
    engine: AsyncEngine, make_table: TableFactory, redis: Redis, stream: str
) -> None:
    """Batch mode (batch_size=20) with key ordering: a batch may carry several numbers of
    one key, applied in order in one transaction; failing batches fall back to one by one
    without overtaking a failed message: 0 violations, everything applied, and fewer
    commits than messages."""
    registry = CollectorRegistry()
    checker = OrderingChecker(engine, await make_table(KEY_STATE), plan(2_000, 50, 5, 0.5, seed=11))
    await checker.setup()
    await checker.publish(QueueProducer(redis, stream, registry=None))
    consumer = QueueConsumer(
        redis, _config(stream, ordering="key", batch_size=20, concurrency=8), registry=registry
    )
    await asyncio.wait_for(consumer.run_until_drained(checker.handle, engine=engine), 120)
    await _assert_applied_in_order(checker, redis, stream)
    commits = registry.get_sample_value(
        "safesync_db_transactions_total",
        {"operation": f"consume:{stream}", "outcome": "committed"},
    )
    assert commits is not None and commits < 2_000 / 2


async def test_retries_in_place_dead_letters_and_outages_on_the_servers(
    engine: AsyncEngine, make_table: TableFactory, redis: Redis, stream: str
) -> None:
    """Key a's first message fails twice (retried by this consumer: Redis still counts one
    delivery, owned by it), key b's first always fails (dead-lettered after 3 attempts,
    saying 3 deliveries) and key c's first meets two database outages (not counted, with
    max_deliveries=3); the later messages of each key are applied after their first, in
    order."""
    table = await make_table("CREATE TABLE {table} (seq {autoinc}, k VARCHAR(8), n INT)")
    producer = QueueProducer(redis, stream, registry=None)
    ids = {}
    for n in range(3):
        for key in "abc":
            ids[key, n] = await producer.publish({"k": key, "n": n}, key=key)
    attempts: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    seen_while_retrying: list[tuple[str, int]] = []

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        key, n = message.payload["k"], message.payload["n"]
        await session.execute(f"INSERT INTO {table} (k, n) VALUES (:k, :n)", {"k": key, "n": n})
        if n != 0:
            return
        attempts[key] += 1
        if key == "a" and attempts["a"] <= 2:
            [row] = await redis.xpending_range(stream, "g", message.id, message.id, 1)
            owner = row["consumer"]
            assert isinstance(owner, bytes)
            seen_while_retrying.append((owner.decode(), int(row["times_delivered"])))
            raise ValueError("transient")
        if key == "b":
            raise ValueError("poison")
        if key == "c" and attempts["c"] <= 2:
            raise DatabaseUnavailableError("simulated outage (1290)", errno=1290)

    consumer = QueueConsumer(
        redis, _config(stream, ordering="key", max_deliveries=3), registry=None
    )
    await asyncio.wait_for(consumer.run_until_drained(handler, engine=engine), 60)
    async with DbSession(engine, registry=None) as session:
        rows = await session.fetch_all(f"SELECT k, n FROM {table} ORDER BY seq")
    applied = [(str(r["k"]), int(r["n"])) for r in rows]
    assert [n for k, n in applied if k == "a"] == [0, 1, 2]
    assert [n for k, n in applied if k == "b"] == [1, 2]
    assert [n for k, n in applied if k == "c"] == [0, 1, 2]
    assert attempts == {"a": 3, "b": 3, "c": 3}
    assert seen_while_retrying == [("c", 1), ("c", 1)]
    [letter] = await dead_letters(redis, stream)
    assert (letter.original_id, letter.reason.value, letter.deliveries) == (
        ids["b", 0],
        "handler_failed",
        3,
    )
    assert consumer.statistics().claimed == 0
