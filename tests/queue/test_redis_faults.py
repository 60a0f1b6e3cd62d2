"""The consumer against a private Redis that is killed and restarted, or frozen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from ..conftest import TableFactory
from ..support.servers import PrivateRedis
from .helpers import EFFECTS, effect_counts, effect_writer, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_redis_killed_and_restarted_mid_run(
    engine: AsyncEngine, make_table: TableFactory, private_redis: PrivateRedis
) -> None:
    """Redis (AOF) is SIGKILLed and restarted twice while the consumer is busy and blocked
    in reads: the consumer backs off, reconnects, and every message is applied (duplicates
    at most the handful in flight at each kill), with nothing left pending."""
    redis = create_redis_client(private_redis.url, block_ms=200)
    table = await make_table(EFFECTS)
    total = 1_500
    await QueueProducer(redis, "jobs").publish_batch({"n": i} for i in range(total))
    writer = effect_writer(table)

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await writer(message, session)
        await asyncio.sleep(0.002)

    config = QueueConfig(
        stream_key="jobs", consumer_group="g", consumer_name="c", block_ms=200, concurrency=8,
        claim_min_idle_ms=1_000, claim_interval_ms=200, reconnect_max_delay=0.5,
    )  # fmt: skip
    consumer = QueueConsumer(redis, config)
    task = asyncio.create_task(consumer.run(handler, engine=engine))
    try:
        for _ in range(2):
            await asyncio.sleep(0.4)
            private_redis.kill()
            await asyncio.sleep(0.5)
            private_redis.start()

        async def all_applied() -> bool:
            return (await effect_counts(engine, table))[1] == total

        await wait_until(all_applied, timeout=60)

        async def nothing_pending() -> bool:
            return int((await redis.xpending("jobs", "g"))["pending"]) == 0

        await wait_until(nothing_pending, timeout=30)
        assert not task.done()  # no crash loop: still running
    finally:
        consumer.stop()
        await task
        await redis.aclose()
    rows, distinct = await effect_counts(engine, table)
    assert distinct == total
    assert rows - distinct <= 2 * 16  # at most what was in flight at the two kills
    assert consumer.statistics().reconnects >= 2


async def test_frozen_redis_is_detected_and_survived(private_redis: PrivateRedis) -> None:
    """A Redis frozen (SIGSTOP) longer than the socket timeout makes reads fail after about
    block time + margin instead of hanging; when it resumes the consumer carries on."""
    redis = create_redis_client(private_redis.url, block_ms=200, socket_timeout=1.0)
    seen: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append(message.payload["n"])

    config = QueueConfig(
        stream_key="jobs", consumer_group="g", consumer_name="c", block_ms=200,
        reconnect_max_delay=0.3,
    )  # fmt: skip
    consumer = QueueConsumer(redis, config)
    task = asyncio.create_task(consumer.run(handler))
    try:
        await QueueProducer(redis, "jobs").publish({"n": 1})
        await wait_until(lambda: _true(seen == [1]), timeout=10)
        private_redis.pause()
        await asyncio.sleep(2.5)
        assert consumer.statistics().reconnects >= 1  # the freeze was noticed
        private_redis.resume()
        await QueueProducer(redis, "jobs").publish({"n": 2})
        await wait_until(lambda: _true(seen == [1, 2]), timeout=15)
    finally:
        private_redis.resume()
        consumer.stop()
        await task
        await redis.aclose()


async def _true(value: bool) -> bool:
    return value
