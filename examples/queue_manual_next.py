"""Manual fetching for full control of the loop (seed README, queue example 4)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from safesync_async import QueueProducer, create_redis_client
from safesync_async.config import QueueConfig
from safesync_async.db.session import DbSession
from safesync_async.queue.consumer import QueueConsumer

from .settings import REDIS_URL, make_engine


async def process_message(payload: dict[str, Any], session: DbSession) -> None:
    await session.execute(
        "UPDATE example_counters SET value = value + :n WHERE id = 1", {"n": payload["n"]}
    )


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:manual:{uuid.uuid4().hex[:8]}"
    config = QueueConfig(stream_key=stream, consumer_group="workers", consumer_name="worker_1")
    consumer = QueueConsumer(redis, config)
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_counters "
                "(id INT PRIMARY KEY, value INT NOT NULL)"
            )
            await session.execute("REPLACE INTO example_counters VALUES (1, 0)")
        await QueueProducer(redis, stream).publish_batch({"n": n} for n in range(1, 11))
        # --8<-- [start:next]
        while not consumer.stopping:
            msg = await consumer.next(block_ms=200)
            if msg is None:
                consumer.stop()  # drained: a real worker would keep waiting
                continue
            async with DbSession(engine) as session:
                await process_message(msg.payload, session)
            await consumer.ack(msg)  # only after the commit
        # --8<-- [end:next]
        async with DbSession(engine) as session:
            value = await session.execute_scalar("SELECT value FROM example_counters WHERE id = 1")
        print(f"sum of processed values: {value}")
        assert value == 55
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_counters")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
