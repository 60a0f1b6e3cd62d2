"""Shared helpers of the queue tests: effect tables, waiting for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, QueueMessage

EFFECTS = "CREATE TABLE {table} (seq {autoinc}, message_id VARCHAR(40) NOT NULL, n INT)"


def effect_writer(table: str) -> Callable[[QueueMessage[object], DbSession], Awaitable[None]]:
    """A handler that records one effect row per handled message."""

    async def handler(message: QueueMessage[object], session: DbSession) -> None:
        payload = message.payload
        n = payload.get("n") if isinstance(payload, dict) else None
        await session.execute(
            f"INSERT INTO {table} (message_id, n) VALUES (:id, :n)", {"id": message.id, "n": n}
        )

    return handler


async def effect_counts(engine: AsyncEngine, table: str) -> tuple[int, int]:
    """(rows, distinct message ids) in an effect table."""
    async with DbSession(engine) as s:
        row = await s.fetch_one(
            f"SELECT COUNT(*) AS n, COUNT(DISTINCT message_id) AS d FROM {table}"
        )
    assert row is not None
    return int(row["n"]), int(row["d"])


async def pending_count(redis: Redis, stream: str, group: str) -> int:
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(interval)
