"""The smallest complete worker: consume a stream into the database until SIGTERM.

    python -m examples.getting_started_worker

publishes 20 payments, starts the worker, waits until they are recorded, then sends the
process SIGTERM the way an orchestrator stops a container, and checks that the worker
stopped cleanly with every payment recorded once and nothing left pending.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_engine,
    create_redis_client,
    install_signal_handlers,
)

from .settings import DATABASE_URL, REDIS_URL


# --8<-- [start:handler]
async def record_payment(msg: QueueMessage[Any], session: DbSession) -> None:
    """Runs inside a transaction; the entry is acked only after that transaction commits."""
    await session.execute(
        "INSERT INTO example_payments (order_id, amount) VALUES (:order_id, :amount)",
        {"order_id": msg.payload["order_id"], "amount": msg.payload["amount"]},
    )
    # raising here rolls the transaction back and leaves the entry pending: it is retried


# --8<-- [end:handler]


# --8<-- [start:worker]
async def run_worker(stream: str) -> None:
    """A worker process: one engine, one Redis client, one consumer, until SIGTERM."""
    engine = create_engine(DATABASE_URL, pool_size=8)
    redis = create_redis_client(REDIS_URL)
    config = QueueConfig(
        stream_key=stream,
        consumer_group="payments",
        consumer_name="worker-1",  # stable per replica: a restart resumes its own entries
        concurrency=8,  # handlers at once; at most the pool size
    )
    consumer = QueueConsumer(redis, config)
    remove_handlers = install_signal_handlers(consumer)  # SIGTERM / SIGINT -> graceful stop
    try:
        await consumer.run(record_payment, engine=engine)  # returns after a graceful stop
    finally:
        remove_handlers()
        await redis.aclose()
        await engine.dispose()


# --8<-- [end:worker]


async def recorded(engine: AsyncEngine) -> int:
    async with DbSession(engine) as session:
        return int(await session.execute_scalar("SELECT COUNT(*) FROM example_payments"))


async def main() -> None:
    stream = f"example:payments:{uuid.uuid4().hex[:8]}"
    engine = create_engine(DATABASE_URL, pool_size=1)
    redis = create_redis_client(REDIS_URL)
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_payments "
                "(order_id INT PRIMARY KEY, amount INT NOT NULL)"
            )
            await session.execute("DELETE FROM example_payments")
        # --8<-- [start:publish]
        producer = QueueProducer(redis, stream)
        for order_id in range(1, 21):
            await producer.publish({"order_id": order_id, "amount": 10 * order_id})
        # --8<-- [end:publish]
        worker = asyncio.create_task(run_worker(stream))
        async with asyncio.timeout(30):
            while await recorded(engine) < 20:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator does
            await worker
        pending = (await redis.xpending(stream, "payments"))["pending"]
        print(f"recorded {await recorded(engine)} payments; {pending} pending after SIGTERM")
        assert await recorded(engine) == 20
        assert pending == 0
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_payments")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
