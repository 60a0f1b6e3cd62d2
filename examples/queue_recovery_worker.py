"""A dedicated recovery worker for stale pending messages (seed README, queue example 3).

The consumer also recovers stale entries in its own loop; a separate worker is useful
when consumers are scaled to zero or you want recovery isolated.
"""

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


async def handle_message(msg: QueueMessage[Any], session: DbSession) -> None:
    await session.execute("INSERT INTO example_recovered (message_id) VALUES (:id)", {"id": msg.id})


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:orders:{uuid.uuid4().hex[:8]}"
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_recovered (message_id VARCHAR(40) PRIMARY KEY)"
            )
            await session.execute("DELETE FROM example_recovered")
        await QueueProducer(redis, stream).publish_batch({"n": n} for n in range(20))
        # A worker reads everything and crashes before acking: all 20 stay pending.
        await redis.xgroup_create(stream, "workers", id="0")
        await redis.xreadgroup("workers", "crashed-worker", {stream: ">"})

        # --8<-- [start:recovery]
        config = QueueConfig(stream_key=stream, consumer_group="workers", consumer_name="recovery")
        recovery = QueueConsumer(redis, config)
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(
                recovery.run_claim_stale(
                    handler=handle_message,
                    engine=engine,
                    min_idle_ms=200,  # claim messages idle > 0.2 s (60 s in production)
                    claim_interval_ms=100,
                    max_claim_count=10,
                )
            )
            while recovery.statistics().acked < 20 and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            recovery.stop()
        # --8<-- [end:recovery]
        print(f"recovered {recovery.statistics().claimed} stale messages")
        assert (await redis.xpending(stream, "workers"))["pending"] == 0
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_recovered")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
