"""A partitioned stream: the events of one order always go to the same partition, each
partition is consumed by exactly one member of the group at a time, and within it one
order's events are handled one at a time, in order (the handler is queue_key_ordering's:
it refuses an event that comes before its predecessor). Here the members are two tasks of
one process; in production each is a process (or a machine) of its own, and they divide
the partitions among themselves, taking over those of a member that stops or dies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    PartitionedConsumer,
    PartitionedProducer,
    PartitionedStream,
    create_redis_client,
    partition_status,
)

from .queue_key_ordering import apply_event  # one step per event, refused out of order
from .settings import REDIS_URL, make_engine

ORDERS = 200


# --8<-- [start:publish]
async def publish_events(redis: Redis, orders: PartitionedStream) -> None:
    producer = PartitionedProducer(redis, orders)
    for order in range(1, ORDERS + 1):
        for event in ("created", "paid", "shipped"):
            # the key picks the partition (crc32(key) % 8) and orders the events within it
            await producer.publish({"order": order, "event": event}, key=f"order-{order}")


# --8<-- [end:publish]


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    name = f"example:orders:{uuid.uuid4().hex[:8]}"
    # --8<-- [start:tables]
    inbox = Inbox("example_partitioned_inbox")  # effects applied once
    fence = EpochFence("example_partitioned_epochs")  # a former owner cannot commit
    await inbox.create_table(engine)
    await fence.create_table(engine)
    # --8<-- [end:tables]
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_order_steps "
                "(id INT PRIMARY KEY, status VARCHAR(10) NOT NULL)"
            )
            await session.execute("DELETE FROM example_order_steps")
        # --8<-- [start:consume]
        orders = PartitionedStream(name, partitions=8)
        members = [
            PartitionedConsumer(
                redis,
                orders,
                "shipping",
                inbox=inbox,
                fence=fence,
                member=f"worker-{n}",  # default: host, process id and a random suffix
                concurrency=4,  # per partition owned
                lease_ttl_ms=3_000,  # a dead member's partitions move after about this
                block_ms=100,
            )
            for n in (1, 2)
        ]
        runs = [asyncio.create_task(m.run(apply_event, engine=engine)) for m in members]
        # --8<-- [end:consume]
        await _until(lambda: _owners(redis, orders, {"worker-1", "worker-2"}))
        await publish_events(redis, orders)
        await _until(lambda: _shipped(engine))
        for member in members:
            member.stop()  # graceful: drain, then release the leases
        await asyncio.gather(*runs)
        print(f"{ORDERS} orders shipped through 8 partitions shared by 2 members")
    finally:
        async with DbSession(engine) as session:
            for table in ("order_steps", "partitioned_inbox", "partitioned_epochs"):
                await session.execute(f"DROP TABLE IF EXISTS example_{table}")
        async for key in redis.scan_iter(match="{" + name + "*"):
            await redis.delete(key)
        await redis.aclose()
        await engine.dispose()


async def _shipped(engine: AsyncEngine) -> bool:
    async with DbSession(engine) as session:
        found = await session.execute_scalar(
            "SELECT COUNT(*) FROM example_order_steps WHERE status = 'shipped'"
        )
    return int(found) == ORDERS


async def _owners(redis: Redis, orders: PartitionedStream, members: set[str]) -> bool:
    """Every partition owned, each member owning some (the division settles in a second)."""
    return {s.owner for s in await partition_status(redis, orders, "shipping")} == members


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(60):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(main())
