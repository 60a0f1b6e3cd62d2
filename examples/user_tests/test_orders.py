"""How an application tests its own handlers with the shipped fixtures only."""

from __future__ import annotations

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
async def test_handler_marks_orders_paid(
    safesync_engine: AsyncEngine, safesync_stream: StreamFixture
) -> None:
    """Every published payment marks its order paid, exactly once, nothing left pending."""
    async with DbSession(safesync_engine) as session:
        await session.execute(
            "CREATE TABLE IF NOT EXISTS user_orders (id INT PRIMARY KEY, status VARCHAR(10))"
        )
        await session.execute("DELETE FROM user_orders")
        for order in range(1, 6):
            await session.execute("INSERT INTO user_orders VALUES (:id, 'new')", {"id": order})
    inbox = Inbox("user_orders_inbox")
    await inbox.create_table(safesync_engine)
    await safesync_stream.producer.publish_batch({"order": order} for order in range(1, 6))

    consumer = await safesync_stream.drain(mark_paid, engine=safesync_engine, inbox=inbox)

    assert consumer.statistics().acked == 5
    async with DbSession(safesync_engine) as session:
        paid = await session.execute_scalar(
            "SELECT COUNT(*) FROM user_orders WHERE status = 'paid'"
        )
    assert paid == 5
    pending = await safesync_stream.redis.xpending(safesync_stream.key, safesync_stream.group)
    assert pending["pending"] == 0


# --8<-- [end:stream-test]
