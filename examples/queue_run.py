"""The template method: fetch -> handler(msg, session) -> commit -> ack, concurrently
(seed README, queue example 2 and the queue quick start)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from safesync_async import QueueProducer, create_redis_client
from safesync_async.config import QueueConfig
from safesync_async.db.session import DbSession
from safesync_async.queue.consumer import QueueConsumer
from safesync_async.queue.models import QueueMessage

from .settings import REDIS_URL, make_engine


# --8<-- [start:handler]
async def handle_message(msg: QueueMessage[Any], session: DbSession) -> None:
    """Process one message inside a database transaction."""
    order_id = msg.payload["order_id"]
    order = await session.fetch_one(
        "SELECT id, status FROM example_queue_orders WHERE id = :id", {"id": order_id}
    )
    if not order:
        raise ValueError(f"order {order_id} not found")  # rolled back, not acked, retried
    await session.execute(
        "UPDATE example_queue_orders SET status = :status WHERE id = :id",
        {"id": order_id, "status": "processed"},
    )
    # the transaction commits when this returns; the message is acked after the commit


# --8<-- [end:handler]


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:orders:{uuid.uuid4().hex[:8]}"
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_queue_orders "
                "(id INT PRIMARY KEY, status VARCHAR(20) NOT NULL)"
            )
            await session.execute("DELETE FROM example_queue_orders")
            for order_id in range(1, 101):
                await session.execute(
                    "INSERT INTO example_queue_orders VALUES (:id, 'new')", {"id": order_id}
                )
        await QueueProducer(redis, stream).publish_batch(
            {"order_id": order_id} for order_id in range(1, 101)
        )
        # --8<-- [start:consume]
        # --8<-- [start:config]
        config = QueueConfig(
            stream_key=stream,
            consumer_group="workers",
            consumer_name="worker_1",
            concurrency=8,
            block_ms=200,
        )
        consumer = QueueConsumer(redis, config)
        # --8<-- [end:config]
        # A worker would `await consumer.run(...)` until SIGTERM; this example stops once
        # the stream is drained.
        await consumer.run_until_drained(handle_message, engine=engine)
        # --8<-- [end:consume]
        async with DbSession(engine) as session:
            done = await session.execute_scalar(
                "SELECT COUNT(*) FROM example_queue_orders WHERE status = 'processed'"
            )
        print(f"processed orders: {done}")
        assert done == 100
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_queue_orders")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
