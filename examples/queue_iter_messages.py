"""Basic consumption with an async iterator and explicit acks (seed README, queue example 1)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from safesync_async import QueueProducer, create_redis_client
from safesync_async.config import QueueConfig
from safesync_async.queue.consumer import QueueConsumer

from .settings import REDIS_URL


def process_message(payload: dict[str, Any]) -> None:
    if payload.get("order_id") is None:
        raise ValueError("no order id")
    print(f"processed order {payload['order_id']}")


async def main() -> None:
    redis = create_redis_client(REDIS_URL, block_ms=1_000)
    stream = f"example:orders:{uuid.uuid4().hex[:8]}"
    config = QueueConfig(
        stream_key=stream,
        consumer_group="workers",
        consumer_name="worker_1",
        block_ms=1_000,  # wait up to 1 s for new messages
    )
    consumer = QueueConsumer(redis, config)
    try:
        await QueueProducer(redis, stream).publish_batch([{"order_id": 1}, {}, {"order_id": 3}])
        handled = 0
        # --8<-- [start:iterate]
        async for msg in consumer.iter_messages():
            handled += 1
            try:
                process_message(msg.payload)
                await consumer.ack(msg)  # acknowledge after successful processing
            except Exception as exc:
                print(f"failed to process {msg.id}: {exc}")  # not acked: stays pending
            if handled == 3:
                consumer.stop()
        # --8<-- [end:iterate]
        pending = (await redis.xpending(stream, "workers"))["pending"]
        print(f"pending after the loop: {pending}")
        assert pending == 1
    finally:
        await redis.delete(stream)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
