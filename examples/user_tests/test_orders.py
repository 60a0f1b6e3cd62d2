"""How an application tests its own handlers with the shipped fixtures only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, Inbox, QueueMessage
from safesync_async.testing import StreamFixture

pytestmark = pytest.mark.anyio


# --8<-- [start:handler]
async def mark_paid(message: QueueMessage[Any], session: DbSession) -> None:
    """The application's handler under test."""
    await session.execute(
        "UPDATE user_orders SET status = 'paid' WHERE id = :id", {"id": message.payload["order"]}
    )


# --8<-- [end:handler]


# --8<-- [start:session-test]
async def test_session_is_rolled_back_after_each_test(
    safesync_engine: AsyncEngine, safesync_session: DbSession
) -> None:
    """Writes through safesync_session are visible inside the test, rolled back after it."""
    async with DbSession(safesync_engine) as setup:
        await setup.execute("CREATE TABLE IF NOT EXISTS user_notes (id INT PRIMARY KEY)")
    await safesync_session.execute("INSERT INTO user_notes VALUES (1)")
    assert await safesync_session.execute_scalar("SELECT COUNT(*) FROM user_notes") == 1


# --8<-- [end:session-test]


# --8<-- [start:stream-test]
@pytest.fixture
async def orders(safesync_engine: AsyncEngine) -> AsyncIterator[Inbox]:
    """Five new orders and the handler's inbox; both tables are dropped afterwards."""
    inbox = Inbox("user_orders_inbox")
    await inbox.create_table(safesync_engine)
    async with DbSession(safesync_engine) as session:
        await session.execute(
            "CREATE TABLE IF NOT EXISTS user_orders (id INT PRIMARY KEY, status VARCHAR(10))"
        )
        await session.execute("DELETE FROM user_orders")  # left by an interrupted run
        for order in range(1, 6):
            await session.execute("INSERT INTO user_orders VALUES (:id, 'new')", {"id": order})
    yield inbox
    async with DbSession(safesync_engine) as session:
        await session.execute("DROP TABLE user_orders")
        await session.execute(f"DROP TABLE {inbox.table.name}")


async def test_handler_marks_orders_paid(
    safesync_engine: AsyncEngine, safesync_stream: StreamFixture, orders: Inbox
) -> None:
    """Every published payment marks its order paid, exactly once, nothing left pending."""
    await safesync_stream.producer.publish_batch({"order": order} for order in range(1, 6))

    consumer = await safesync_stream.drain(mark_paid, engine=safesync_engine, inbox=orders)

    assert consumer.statistics().acked == 5
    async with DbSession(safesync_engine) as session:
        paid = await session.execute_scalar(
            "SELECT COUNT(*) FROM user_orders WHERE status = 'paid'"
        )
    assert paid == 5
    pending = await safesync_stream.redis.xpending(safesync_stream.key, safesync_stream.group)
    assert pending["pending"] == 0


# --8<-- [end:stream-test]


# --8<-- [start:poison-test]
async def test_failing_message_is_dead_lettered(safesync_stream: StreamFixture) -> None:
    """A message whose handler always fails reaches the dead letters within seconds."""
    await safesync_stream.producer.publish({"order": 404})

    async def fail(message: QueueMessage[Any]) -> None:
        raise LookupError(f"order {message.payload['order']} not found")

    async with asyncio.timeout(10):
        consumer = await safesync_stream.drain(
            fail, max_deliveries=2, claim_min_idle_ms=100, claim_interval_ms=50
        )

    assert consumer.statistics().dead_lettered == 1
    assert await safesync_stream.redis.xlen(safesync_stream.dead_letters) == 1


# --8<-- [end:poison-test]
