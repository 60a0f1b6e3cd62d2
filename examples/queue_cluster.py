"""Redis Cluster: a cluster client, the key layout (dead letters share their stream's hash
slot), a consumer and a producer that waits for a replica to acknowledge each entry.

Needs a cluster: ``SAFESYNC_REDIS_CLUSTER_URL`` names any of its nodes (the test suite
points it at the private cluster it starts)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from safesync_async import (
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    RedisClient,
    ReplicationError,
    create_redis_client,
    dead_letter_key,
)
from safesync_async.queue.keys import hash_slot


def cluster_url() -> str:
    url = os.environ.get("SAFESYNC_REDIS_CLUSTER_URL")
    if not url:
        raise SystemExit("set SAFESYNC_REDIS_CLUSTER_URL to a node of a Redis Cluster")
    return url


# --8<-- [start:client]
def cluster_client(url: str) -> RedisClient:
    # Any node will do, the others are discovered. The policy is the standalone one:
    # socket timeout above the blocking read, TCP keepalive, a single retry.
    return create_redis_client(url, cluster=True)


# --8<-- [end:client]


# --8<-- [start:keys]
def show_key_layout() -> None:
    assert dead_letter_key("orders") == "{orders}:dead"  # hashes like "orders"
    assert dead_letter_key("{shop}orders") == "{shop}orders:dead"  # keeps the stream's tag
    assert hash_slot("{orders}:dead") == hash_slot("orders")


# --8<-- [end:keys]


# --8<-- [start:wait]
async def publish_durably(redis: RedisClient, stream: str, order: int) -> str | None:
    producer = QueueProducer(redis, stream, wait_replicas=1, wait_timeout_ms=500)
    try:
        return await producer.publish({"order": order}, idempotency_key=f"order-{order}")
    except ReplicationError as exc:
        # Added to the master, but no replica confirmed it within 500 ms: a failover
        # now could lose it. Publish it again later with the same idempotency key
        # (a consumer with an inbox applies it once).
        print(f"order {order} not confirmed ({exc.acknowledged} of {exc.required} replicas)")
        return None


# --8<-- [end:wait]


async def main() -> None:
    show_key_layout()
    redis = cluster_client(cluster_url())
    stream = f"example:cluster:{uuid.uuid4().hex[:8]}"
    handled: list[int] = []

    async def handle(message: QueueMessage[Any]) -> None:
        handled.append(int(message.payload["order"]))

    try:
        for order in range(1, 6):
            for _attempt in range(5):  # again, with the same key, until a replica has it
                if await publish_durably(redis, stream, order) is not None:
                    break
            else:
                raise AssertionError(f"order {order}: no replica confirmed it")
        await redis.xadd(stream, {"data": b"{not json"})  # poison: dead-lettered
        config = QueueConfig(stream_key=stream, consumer_group="shipping", block_ms=100)
        consumer = QueueConsumer(redis, config)
        async with asyncio.timeout(30):
            await consumer.run_until_drained(handle)
        assert sorted(set(handled)) == [1, 2, 3, 4, 5]  # a retried one may come twice
        assert await redis.xlen(dead_letter_key(stream)) == 1  # in the stream's slot
        print(f"handled {sorted(set(handled))}; 1 dead letter in {dead_letter_key(stream)}")
    finally:
        await redis.delete(stream)
        await redis.delete(dead_letter_key(stream))
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
