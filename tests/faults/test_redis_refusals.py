"""A consumer starting while Redis refuses writes at ``maxmemory`` (noeviction): creating
the group is refused with OOM, but consuming and acking still work (and free memory), so a
restarted worker must start and drain instead of dying."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import Inbox, QueueConsumer, QueueProducer, create_redis_client

from ..support.checker import count_delivery
from ..support.reliability import Recorder
from ..support.servers import PrivateRedis
from .conftest import PrivateServers, effect_handler, queue_config, running, until

pytestmark = pytest.mark.faults

DELIVERY = "Delivery under faults"
STREAM = "jobs"


async def _fill_to_maxmemory(redis: Redis) -> None:
    """Make every further write that may grow memory fail with OOM (noeviction)."""
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", "1")
    with pytest.raises(OutOfMemoryError):
        await redis.xgroup_create(STREAM, "other", id="0", mkstream=True)


async def _nothing_pending(redis: Redis) -> bool:
    return int((await redis.xpending(STREAM, "g"))["pending"]) == 0


async def test_consumer_starts_and_drains_at_maxmemory(
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    private_servers: PrivateServers,
    reliability: Recorder,
) -> None:
    """The group exists with 300 entries, 50 of them pending for the restarted consumer's
    own name; Redis is at maxmemory: the consumer starts (XGROUP CREATE refused with OOM is
    fine because the group exists), applies all 300 exactly once and acks them."""
    server = private_servers.redis(appendonly=True)
    redis = create_redis_client(server.url, block_ms=200)
    try:
        await redis.xgroup_create(STREAM, "g", id="0", mkstream=True)
        ids = await QueueProducer(redis, STREAM, registry=None).publish_batch(
            {"n": n} for n in range(300)
        )
        await redis.xreadgroup("g", "c", {STREAM: ">"}, count=50)  # the crashed run's work
        await _fill_to_maxmemory(redis)
        consumer = QueueConsumer(redis, queue_config(STREAM), inbox=inbox, registry=None)
        async with running(consumer, effect_handler(effects), engine=engine) as task:
            await until(lambda: _nothing_pending(redis), timeout=30)
            assert not task.done()
        keys = [f"id:{entry_id}" for entry_id in ids]
        counts = await count_delivery(
            redis, engine, stream=STREAM, group="g", effects=effects, sent=keys
        )
    finally:
        await redis.aclose()
    reliability.record(
        DELIVERY,
        "consumer (re)started while Redis is at maxmemory (noeviction), group exists, inbox",
        **counts.row(faults=1),
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == 300


async def test_group_creation_refused_with_oom_is_retried(
    private_servers: PrivateServers, reliability: Recorder
) -> None:
    """No group yet and Redis at maxmemory: start-up backs off and retries (counted as
    Redis being unavailable) instead of failing, and starts once memory is available."""
    server: PrivateRedis = private_servers.redis(appendonly=True)
    redis = create_redis_client(server.url, block_ms=200)
    handled = asyncio.Event()

    async def handler(message: object) -> None:
        handled.set()

    try:
        await _fill_to_maxmemory(redis)
        consumer = QueueConsumer(redis, queue_config(STREAM), registry=None)
        async with running(consumer, handler) as task:
            await until(lambda: consumer.statistics().reconnects >= 2, timeout=10)
            assert consumer.statistics().redis_unavailable
            assert not task.done()
            await redis.config_set("maxmemory", "0")
            waited = await until(lambda: _group_exists(redis), timeout=10)
            await QueueProducer(redis, STREAM, registry=None).publish({"n": 1})
            await asyncio.wait_for(handled.wait(), 10)
            assert not consumer.statistics().redis_unavailable
    finally:
        await redis.aclose()
    reliability.record(
        "Server-fault timings",
        "Redis at maxmemory before the group exists: memory freed to group created",
        recovery_s=waited,
    )


async def _group_exists(redis: Redis) -> bool:
    return bool(await redis.exists(STREAM)) and any(
        group["name"] == b"g" for group in await redis.xinfo_groups(STREAM)
    )
