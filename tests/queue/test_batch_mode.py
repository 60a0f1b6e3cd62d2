"""Batch mode: many messages per transaction, with per-message fallback on failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    DeadLetterReason,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    dead_letter_key,
    parse_dead_letter,
)

from ..conftest import TableFactory
from .helpers import EFFECTS, effect_counts, effect_writer, pending_count

pytestmark = pytest.mark.cluster  # also on a Redis Cluster (see tests/conftest.py)


async def test_batches_commit_together_and_isolate_poison(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """3,000 messages in batches of 50: every good message applied once, fewer commits
    than messages, and the three poison messages dead-lettered without losing the
    batches they were in."""
    table = await make_table(EFFECTS)
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(3_000))
    poison = {7, 1_500, 2_999}
    writer = effect_writer(table)

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await writer(message, session)
        if message.payload["n"] in poison:
            raise ValueError("poison")

    config = QueueConfig(
        stream_key=stream, consumer_group="g", consumer_name="c", block_ms=100,
        concurrency=4, batch_size=50, max_deliveries=1, claim_min_idle_ms=300,
        claim_interval_ms=100,
    )  # fmt: skip
    registry = CollectorRegistry()
    consumer = QueueConsumer(redis, config, registry=registry)
    await consumer.run_until_drained(handler, engine=engine)
    commits = registry.get_sample_value(
        "safesync_db_transactions_total",
        {"operation": f"consume:{stream}", "outcome": "committed"},
    )
    assert commits is not None and commits < 3_000 / 10
    assert await effect_counts(engine, table) == (3_000 - 3, 3_000 - 3)
    letters = [
        parse_dead_letter(i.decode(), f) for i, f in await redis.xrange(dead_letter_key(stream))
    ]
    assert len(letters) == 3
    assert {x.reason for x in letters} == {DeadLetterReason.HANDLER_FAILED}
    assert await pending_count(redis, stream, "g") == 0
    stats = consumer.statistics()
    assert stats.acked == 3_000 - 3 and stats.failed == 3


async def test_batches_of_deferred_writes_isolate_a_failing_write(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """Handlers that only defer their writes: a batch's statements go to the database at
    its commit, so a write failing there (a duplicate key) fails the whole batch; its
    messages are then handled one by one, the offending ones dead-lettered, and every
    other message applied exactly once."""
    effects = await make_table(EFFECTS)
    claimed = await make_table("CREATE TABLE {table} (n INT PRIMARY KEY)")
    poison = [11, 900, 1_999]
    async with DbSession(engine) as s:
        for n in poison:
            await s.execute(f"INSERT INTO {claimed} VALUES (:n)", {"n": n})
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(2_000))

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        n = message.payload["n"]
        session.defer(f"INSERT INTO {claimed} VALUES (:n)", {"n": n})
        session.defer(
            f"INSERT INTO {effects} (message_id, n) VALUES (:id, :n)", {"id": message.id, "n": n}
        )

    config = QueueConfig(
        stream_key=stream, consumer_group="g", consumer_name="c", block_ms=100,
        concurrency=4, batch_size=25, max_deliveries=1,
    )  # fmt: skip
    registry = CollectorRegistry()
    consumer = QueueConsumer(redis, config, registry=registry)
    await consumer.run_until_drained(handler, engine=engine)
    assert await effect_counts(engine, effects) == (2_000 - 3, 2_000 - 3)
    letters = [
        parse_dead_letter(i.decode(), f) for i, f in await redis.xrange(dead_letter_key(stream))
    ]
    assert sorted(json.loads(x.fields[b"data"])["n"] for x in letters) == poison
    assert all(x.error.startswith("DuplicateKeyError") for x in letters)
    assert await pending_count(redis, stream, "g") == 0
    commits = registry.get_sample_value(
        "safesync_db_transactions_total",
        {"operation": f"consume:{stream}", "outcome": "committed"},
    )
    assert commits is not None and commits < 2_000 / 10
