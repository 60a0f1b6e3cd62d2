"""A running consumer keeps the entries it holds from looking abandoned, so a handler
slower than claim_min_idle_ms is not claimed and handled a second time elsewhere."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from redis.asyncio import Redis

from safesync_async import QueueConfig, QueueConsumer, QueueMessage, QueueProducer

from .helpers import pending_count, wait_until

pytestmark = pytest.mark.cluster  # also on a Redis Cluster (see tests/conftest.py)


async def test_slow_handler_is_not_claimed_by_another_consumer(redis: Redis, stream: str) -> None:
    """Consumer A takes the entry and works on it for 4 x claim_min_idle_ms while consumer
    B runs in-loop recovery every 50 ms: B never claims it, it is handled once, on its
    first delivery, and acked."""
    handled: collections.Counter[str] = collections.Counter()
    deliveries: list[int] = []
    started = asyncio.Event()

    async def slow(message: QueueMessage[Any]) -> None:
        handled[message.id] += 1
        deliveries.append(message.delivery_count)
        started.set()
        await asyncio.sleep(1.6)

    def config(name: str) -> QueueConfig:
        return QueueConfig(
            stream_key=stream, consumer_group="g", consumer_name=name, block_ms=100,
            concurrency=1, claim_min_idle_ms=400, claim_interval_ms=50,
        )  # fmt: skip

    entry_id = await QueueProducer(redis, stream).publish({"n": 1})
    first = QueueConsumer(redis, config("a"))
    running_first = asyncio.create_task(first.run(slow))
    await asyncio.wait_for(started.wait(), 10)
    second = QueueConsumer(redis, config("b"))
    running_second = asyncio.create_task(second.run(slow))
    try:

        async def acked() -> bool:
            return await pending_count(redis, stream, "g") == 0

        await wait_until(acked, timeout=10)
        await asyncio.sleep(0.3)  # give a wrongly claimed copy time to show up
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(running_first, running_second)
    assert handled == {entry_id: 1}
    assert deliveries == [1]
    assert second.statistics().claimed == 0


async def test_keep_alive_never_takes_back_an_entry_claimed_elsewhere(
    redis: Redis, stream: str
) -> None:
    """Consumer A holds an entry in a slow handler; another consumer legitimately claims it
    (XCLAIM); A's keep-alive, which keeps running, must not move it back to A."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(message: QueueMessage[Any]) -> None:
        started.set()
        await release.wait()

    config = QueueConfig(
        stream_key=stream, consumer_group="g", consumer_name="a", block_ms=100,
        claim_min_idle_ms=200, claim_interval_ms=None,
    )  # fmt: skip
    entry_id = await QueueProducer(redis, stream).publish({"n": 1})
    consumer = QueueConsumer(redis, config)
    task = asyncio.create_task(consumer.run(slow))
    try:
        await asyncio.wait_for(started.wait(), 10)
        await redis.xclaim(stream, "g", "b", 0, [entry_id], justid=True)
        await asyncio.sleep(0.5)  # five keep-alive rounds of A (every 100 ms)
        [row] = await redis.xpending_range(stream, "g", "-", "+", 10)
        assert row["consumer"] == b"b"
    finally:
        release.set()
        consumer.stop()
        await task


async def test_keep_alive_runs_until_the_last_handler_finishes(redis: Redis, stream: str) -> None:
    """stop() while a handler runs for 3 x claim_min_idle_ms: the draining consumer keeps the
    entry alive, so a recovering consumer never claims it and it is handled once."""
    handled: collections.Counter[str] = collections.Counter()
    started = asyncio.Event()

    async def slow(message: QueueMessage[Any]) -> None:
        handled[message.id] += 1
        started.set()
        await asyncio.sleep(1.2)

    def config(name: str) -> QueueConfig:
        return QueueConfig(
            stream_key=stream, consumer_group="g", consumer_name=name, block_ms=100,
            concurrency=1, claim_min_idle_ms=400, claim_interval_ms=50, drain_timeout=10,
        )  # fmt: skip

    entry_id = await QueueProducer(redis, stream).publish({"n": 1})
    first = QueueConsumer(redis, config("a"))
    running_first = asyncio.create_task(first.run(slow))
    await asyncio.wait_for(started.wait(), 10)
    first.stop()  # drains: the handler goes on for 1.2 s
    second = QueueConsumer(redis, config("b"))
    running_second = asyncio.create_task(second.run(slow))
    try:
        await running_first
        assert await pending_count(redis, stream, "g") == 0
    finally:
        second.stop()
        await running_second
    assert handled == {entry_id: 1}
    assert second.statistics().claimed == 0
