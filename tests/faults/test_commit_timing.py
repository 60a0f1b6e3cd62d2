"""``handler_timeout`` against a slow COMMIT: the time limit covers the handler, not the
COMMIT, and the consumer acts on the COMMIT's real outcome. A message whose transaction
committed is acked once, never reported failed or dead-lettered."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, QueueConsumer, QueueMessage, create_engine

from ..support.proxy import Action, TcpProxy, Trigger
from ..support.reliability import Recorder
from ..support.settings import DATABASE_URL
from .conftest import effect_handler, publish_plain, queue_config, running, wait_settled

pytestmark = pytest.mark.faults

DELIVERY = "Delivery under faults"


async def test_handler_timeout_expiring_during_a_slow_commit(
    engine: AsyncEngine, redis: Redis, stream: str, effects: str, reliability: Recorder
) -> None:
    """Every message's handler takes 0.6 s and its COMMIT another 0.6 s (a proxy holds the
    COMMIT packet back), so handler_timeout=1 s expires during each COMMIT: every
    transaction still commits, and every message is acked exactly once, with no failure
    and no dead letter even though max_deliveries=1."""
    size = 12
    keys = await publish_plain(redis, stream, size)
    url = urlsplit(DATABASE_URL)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 3306) as proxy:
        proxy.triggers.append(Trigger(b"\x03COMMIT", Action.DELAY, once=False, delay=0.6))
        proxied = create_engine(
            DATABASE_URL.replace(f":{url.port}/", f":{proxy.port}/"), pool_size=size
        )

        async def slow(message: QueueMessage[Any], session: DbSession) -> None:
            await asyncio.sleep(0.6)

        config = queue_config(
            stream, concurrency=size, handler_timeout=1.0, max_deliveries=1,
            claim_min_idle_ms=5_000,
        )  # fmt: skip
        consumer = QueueConsumer(redis, config, registry=None)
        try:
            async with running(consumer, effect_handler(effects, slow), engine=proxied):
                counts = await wait_settled(redis, engine, stream, effects, keys, timeout=30)
        finally:
            await proxied.dispose()
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "handler_timeout expires during a slow COMMIT (proxy delay), no inbox",
        **counts.row(faults=size, reported_failed=stats.failed),
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == size
    assert counts.dead_lettered_total == 0
    assert (stats.failed, stats.acked) == (0, size)
