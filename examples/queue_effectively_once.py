"""Effectively-once processing end to end: an order and its event are written in one
transaction through the outbox; a relay publishes committed events; a consumer with an
inbox applies each event once, even when the same event reaches the stream twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any, cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    Outbox,
    OutboxRelay,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    create_redis_client,
    dead_letter_key,
)

from .settings import REDIS_URL, make_engine

# --8<-- [start:tables]
OUTBOX = Outbox("example_eo_outbox")  # default table name: safesync_outbox
INBOX = Inbox("example_eo_inbox")  # default table name: safesync_inbox


async def create_tables(engine: AsyncEngine) -> None:
    await OUTBOX.create_table(engine)  # CREATE TABLE ... if it does not exist yet
    await INBOX.create_table(engine)  # or put create_sql(engine) in your migrations


# --8<-- [end:tables]


# --8<-- [start:outbox-add]
async def place_order(engine: AsyncEngine, stream: str, order_id: int, total: int) -> None:
    """The order row and its event commit together, or neither does."""
    async with DbSession(engine) as session:
        await session.execute(
            "INSERT INTO example_eo_orders (id, total) VALUES (:id, :total)",
            {"id": order_id, "total": total},
        )
        await OUTBOX.add(session, stream, {"order": order_id, "total": total})
        if total <= 0:
            raise ValueError("empty order")  # rolled back: the event never existed


# --8<-- [end:outbox-add]


# --8<-- [start:relay]
async def relay_until_sent(engine: AsyncEngine, redis: Redis) -> int:
    """Run a relay until every committed event is on its stream (a service runs it for
    its whole life, e.g. in a TaskGroup next to the web server, and stops it on SIGTERM)."""
    relay = OutboxRelay(engine, redis, OUTBOX, poll_interval=0.05)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(relay.run())
        while (await OUTBOX.status(engine)).pending:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        relay.stop()  # finishes the current batch, then run() returns
    return relay.published


# --8<-- [end:relay]


# --8<-- [start:consumer]
async def record_invoice(msg: QueueMessage[Any], session: DbSession) -> None:
    """Skipped by the consumer if the inbox has seen this message's key before."""
    await session.execute(
        "INSERT INTO example_eo_invoices (order_id, total) VALUES (:order, :total)",
        {"order": msg.payload["order"], "total": msg.payload["total"]},
    )


async def run_billing(engine: AsyncEngine, redis: Redis, stream: str) -> QueueConsumer:
    config = QueueConfig(stream_key=stream, consumer_group="billing", block_ms=100)
    consumer = QueueConsumer(redis, config, inbox=INBOX)  # inbox row + handler: one commit
    await consumer.run_until_drained(record_invoice, engine=engine)
    return consumer


# --8<-- [end:consumer]


async def invoices(engine: AsyncEngine) -> list[int]:
    async with DbSession(engine) as session:
        rows = await session.fetch_all("SELECT order_id FROM example_eo_invoices ORDER BY 1")
    return [row["order_id"] for row in rows]


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:orders-eo:{uuid.uuid4().hex[:8]}"
    try:
        await create_tables(engine)
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_eo_orders (id INT PRIMARY KEY, total INT)"
            )
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_eo_invoices (order_id INT, total INT)"
            )

        await place_order(engine, stream, 1, 30)
        await place_order(engine, stream, 2, 45)
        try:
            await place_order(engine, stream, 3, 0)
        except ValueError:
            pass  # neither the order nor its event exists
        assert await relay_until_sent(engine, redis) == 2

        # A relay that died after its XADD and before marking the row sent would publish
        # the row again: same fields, same idempotency key, new entry id.
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
        assert entries[0][1][b"idempotency_key"].startswith(b"outbox:example_eo_outbox:")
        await redis.xadd(stream, cast(Any, entries[0][1]))

        consumer = await run_billing(engine, redis, stream)
        assert await invoices(engine) == [1, 2]  # three entries, two distinct events
        assert consumer.statistics().duplicates == 1

        # --8<-- [start:housekeeping]
        status = await OUTBOX.status(engine)  # pending rows, oldest pending age, sent rows
        assert status.pending == 0
        assert status.sent == 2
        # Run these regularly, keeping rows longer than a message can be redelivered:
        await INBOX.purge(engine, timedelta(days=7))  # -> rows deleted
        await OUTBOX.purge_sent(engine, timedelta(days=7))  # -> rows deleted
        # --8<-- [end:housekeeping]
        print(f"2 orders, 3 stream entries, invoices for {await invoices(engine)}: once each")
    finally:
        async with DbSession(engine) as session:
            for table in ("example_eo_orders", "example_eo_invoices", OUTBOX.name):
                await session.execute(f"DROP TABLE IF EXISTS {table}")
            await session.execute(f"DROP TABLE IF EXISTS {INBOX.table.name}")
        await redis.delete(stream, dead_letter_key(stream))
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
