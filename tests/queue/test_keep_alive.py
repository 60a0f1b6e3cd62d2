"""A running consumer keeps the entries it holds from looking abandoned, so a handler
slower than claim_min_idle_ms is not claimed and handled a second time elsewhere."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from redis.asyncio import Redis

from safesync_async import QueueConfig, QueueConsumer, QueueMessage, QueueProducer

from .helpers import pending_count, wait_until


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
