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

from ..support.checker import count_delivery
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


async def test_drain_timeout_during_a_commit_acks_what_committed(
    engine: AsyncEngine, redis: Redis, stream: str, effects: str, reliability: Recorder
) -> None:
    """stop() with drain_timeout=0.2 s while every COMMIT takes 1 s (proxy delay): the
    handlers are cancelled during their COMMIT, the COMMIT completes anyway, and every
    message that committed is acked before run() returns (none is left pending)."""
    size = 4
    keys = await publish_plain(redis, stream, size)
    url = urlsplit(DATABASE_URL)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 3306) as proxy:
        commit = Trigger(b"\x03COMMIT", Action.DELAY, once=False, delay=1.0)
        proxy.triggers.append(commit)
        proxied = create_engine(
            DATABASE_URL.replace(f":{url.port}/", f":{proxy.port}/"), pool_size=size
        )
        config = queue_config(stream, concurrency=size, drain_timeout=0.2)
        consumer = QueueConsumer(redis, config, registry=None)
        task = asyncio.create_task(consumer.run(effect_handler(effects), engine=proxied))
        try:
            await asyncio.wait_for(commit.fired.wait(), 30)
            await asyncio.sleep(0.05)  # the other workers' COMMITs are on the wire too
            consumer.stop()
            await asyncio.wait_for(task, 30)
        finally:
            await proxied.dispose()
    counts = await count_delivery(
        redis, engine, stream=stream, group="g", effects=effects, sent=keys
    )
    reliability.record(
        DELIVERY,
        "drain timeout cancels handlers during a slow COMMIT (proxy delay), no inbox",
        **counts.row(faults=size, committed_but_pending=counts.applied_but_pending),
    )
    assert counts.applied >= 1
    assert counts.applied_but_pending == 0, counts
    assert consumer.statistics().acked == counts.applied
