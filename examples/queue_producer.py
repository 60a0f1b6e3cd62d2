"""QueueProducer: publish one entry with an idempotency key and headers, publish many with
pipelined XADDs, read what a handler sees, and trim the stream without losing entries
that a consumer group has not acknowledged yet."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from safesync_async import (
    QueueConfig,
    QueueConsumer,
    QueueProducer,
    UnsafeOperationError,
    create_redis_client,
)

from .settings import REDIS_URL


# --8<-- [start:publish]
async def publish_events(redis: Redis, stream: str) -> list[str]:
    producer = QueueProducer(redis, stream)  # JSON in the field "data", like the seed library
    first = await producer.publish(
        {"order": 1, "event": "created"},
        idempotency_key="order-1-created",  # the inbox deduplicates on it
        headers={"source": "checkout"},  # extra entry fields, strings only
    )
    rest = await producer.publish_batch(  # pipelined: one round trip per 500 entries
        {"order": n, "event": "created"} for n in range(2, 101)
    )
    return [first, *rest]  # entry ids, in order


# --8<-- [end:publish]


async def main() -> None:
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:events:{uuid.uuid4().hex[:8]}"
    try:
        ids = await publish_events(redis, stream)
        assert len(ids) == 100

        config = QueueConfig(stream_key=stream, consumer_group="billing", consumer_name="b1")
        consumer = QueueConsumer(redis, config)
        # --8<-- [start:message]
        msg = await consumer.next(block_ms=200)
        assert msg is not None
        assert msg.payload == {"order": 1, "event": "created"}  # decoded by the codec
        assert msg.idempotency_key == "order-1-created"
        assert msg.fields[b"source"] == b"checkout"  # the raw entry fields
        assert msg.delivery_count == 1  # 2 and more on redeliveries
        print(f"{msg.id} was added at {msg.enqueued_at:%H:%M:%S} to {msg.stream}")
        # --8<-- [end:message]
        await consumer.ack(msg)
        for _ in range(59):  # the group handles 60 entries and acknowledges 50
            received = await consumer.next(block_ms=200)
            assert received is not None
            if int(received.payload["order"]) <= 50:
                await consumer.ack(received)

        # --8<-- [start:trim]
        producer = QueueProducer(redis, stream)
        try:
            await producer.trim(10, strict=True)  # all or nothing
        except UnsafeOperationError:
            pass  # entries 51 to 100 are not acknowledged yet: nothing was removed
        removed = await producer.trim(10)  # stops at the oldest unacknowledged entry
        # --8<-- [end:trim]
        assert removed == 50
        assert await redis.xlen(stream) == 50
        print(f"published 100 entries, trimmed {removed}: the 50 acknowledged ones")
    finally:
        await redis.delete(stream)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
