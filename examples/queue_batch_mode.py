"""Batch mode: with batch_size above 1 each worker handles up to that many waiting
messages in one transaction, with one COMMIT and one XACK for all of them. The handler
is the same as in per-message mode; an inbox keeps a redelivered batch applied once. This
handler defers its UPDATE, so a batch's writes reach the database in one round trip."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from safesync_async import (
    DbSession,
    Inbox,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from .settings import REDIS_URL, make_engine

INBOX = Inbox("example_batch_inbox")


async def add_points(msg: QueueMessage[Any], session: DbSession) -> None:
    session.defer(  # sent with the rest of the batch, just before its COMMIT
        "UPDATE example_points SET points = points + :p WHERE id = :id",
        {"p": msg.payload["points"], "id": msg.payload["player"]},
    )


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:points:{uuid.uuid4().hex[:8]}"
    try:
        await INBOX.create_table(engine)
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_points (id INT PRIMARY KEY, points INT)"
            )
            await session.execute("DELETE FROM example_points")
            await session.execute("INSERT INTO example_points VALUES (1, 0), (2, 0), (3, 0)")
        await QueueProducer(redis, stream).publish_batch(
            {"player": n % 3 + 1, "points": 1} for n in range(600)
        )
        # --8<-- [start:config]
        config = QueueConfig(
            stream_key=stream,
            consumer_group="scores",
            concurrency=4,  # four transactions at once...
            batch_size=50,  # ...of up to 50 messages each: one COMMIT, one XACK per batch
            block_ms=100,
        )
        consumer = QueueConsumer(redis, config, inbox=INBOX)
        await consumer.run_until_drained(add_points, engine=engine)
        # --8<-- [end:config]
        async with DbSession(engine) as session:
            points = await session.fetch_all("SELECT points FROM example_points ORDER BY id")
        assert [row["points"] for row in points] == [200, 200, 200]
        assert consumer.statistics().acked == 600
        print(f"600 messages in batches of up to 50: {[row['points'] for row in points]}")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_points")
            await session.execute(f"DROP TABLE {INBOX.table.name}")
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
