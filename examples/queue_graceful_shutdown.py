"""Graceful shutdown on SIGTERM / SIGINT (seed README, queue example 5).

In-flight handlers finish (within drain_timeout), committed messages are acked, messages
read ahead but not started are handed back to the group, then run() returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

from safesync_async import QueueProducer, create_redis_client, install_signal_handlers
from safesync_async.config import QueueConfig
from safesync_async.queue.consumer import QueueConsumer
from safesync_async.queue.models import QueueMessage

from .settings import REDIS_URL


async def main() -> None:
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:shutdown:{uuid.uuid4().hex[:8]}"
    # --8<-- [start:config]
    config = QueueConfig(
        stream_key=stream, consumer_group="workers", consumer_name="worker_1", drain_timeout=10
    )
    consumer = QueueConsumer(redis, config)
    # --8<-- [end:config]
    handled = 0

    async def handle(msg: QueueMessage[Any]) -> None:
        nonlocal handled
        await asyncio.sleep(0.01)
        handled += 1
        if handled == 50:
            os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator does

    # --8<-- [start:signals]
    remove_handlers = install_signal_handlers(consumer)  # SIGTERM and SIGINT -> stop()
    # --8<-- [end:signals]
    try:
        await QueueProducer(redis, stream).publish_batch({"n": n} for n in range(500))
        # --8<-- [start:run]
        await consumer.run(handle)  # returns after the graceful stop
        stats = consumer.statistics()
        print(f"stopped after {stats.acked} acks; {stats.handed_back} handed back for others")
        # --8<-- [end:run]
        pending = (await redis.xpending(stream, "workers"))["pending"]
        assert stats.acked == handled
        assert pending == stats.handed_back
    finally:
        remove_handlers()
        await redis.delete(stream)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
