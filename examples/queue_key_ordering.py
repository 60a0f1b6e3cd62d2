"""Key-ordered processing: the events of one order are handled one at a time, in the
order they were published, while different orders are handled concurrently. Each event
moves its order one step (created, paid, shipped) with an UPDATE that only matches the
step before, so an event handled out of order would fail instead of being applied."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from .settings import REDIS_URL, make_engine

ORDERS = 100
PREVIOUS = {"paid": "created", "shipped": "paid"}


# --8<-- [start:handler]
async def apply_event(msg: QueueMessage[Any], session: DbSession) -> None:
    """Move the order one step; the UPDATE matches only if the previous step is done."""
    order, event = msg.payload["order"], msg.payload["event"]
    if event == "created":
        await session.execute(
            "INSERT INTO example_order_steps (id, status) VALUES (:id, 'created')", {"id": order}
        )
        return
    moved = await session.execute(
        "UPDATE example_order_steps SET status = :new WHERE id = :id AND status = :old",
        {"id": order, "new": event, "old": PREVIOUS[event]},
    )
    if moved == 0:
        raise RuntimeError(f"order {order}: {event!r} came before {PREVIOUS[event]!r}")


# --8<-- [end:handler]


# --8<-- [start:publish]
async def publish_events(redis: Redis, stream: str) -> None:
    producer = QueueProducer(redis, stream)
    for order in range(1, ORDERS + 1):
        for event in ("created", "paid", "shipped"):
            # key=: the entry's ordering key (field "ordering_key"): one order's events
            # are handled one at a time, in the order they were published
            await producer.publish({"order": order, "event": event}, key=f"order-{order}")


# --8<-- [end:publish]


# --8<-- [start:key-function]
def order_key(msg: QueueMessage[Any]) -> str:
    """The ordering key derived from the payload, for entries published without one."""
    return f"order-{msg.payload['order']}"


# --8<-- [end:key-function]


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:order-steps:{uuid.uuid4().hex[:8]}"
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_order_steps "
                "(id INT PRIMARY KEY, status VARCHAR(10) NOT NULL)"
            )
            await session.execute("DELETE FROM example_order_steps")
        await publish_events(redis, stream)
        # --8<-- [start:config]
        config = QueueConfig(
            stream_key=stream,
            consumer_group="order-steps",
            concurrency=16,  # 16 orders at a time...
            ordering="key",  # ...but never two events of one order, nor out of order
            block_ms=100,
        )
        consumer = QueueConsumer(redis, config)
        await consumer.run_until_drained(apply_event, engine=engine)
        # --8<-- [end:config]
        async with DbSession(engine) as session:
            shipped = await session.execute_scalar(
                "SELECT COUNT(*) FROM example_order_steps WHERE status = 'shipped'"
            )
        stats = consumer.statistics()
        assert shipped == ORDERS
        assert (stats.acked, stats.failed) == (3 * ORDERS, 0)
        # --8<-- [start:derived]
        derived = QueueConfig(
            stream_key=stream,
            consumer_group="order-steps",
            ordering="key",
            ordering_key=order_key,  # instead of the entry's ordering_key field
        )
        # --8<-- [end:derived]
        assert derived.ordering_key is order_key
        print(f"{shipped} orders shipped, {3 * ORDERS} events handled in order per order")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_order_steps")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
