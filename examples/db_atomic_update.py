"""Atomic SQL update: one statement, no lock needed (seed README, database example 1)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async.db.session import DbSession

from .settings import make_engine


# --8<-- [start:increment]
async def increment_counter(engine: AsyncEngine, counter_id: int) -> None:
    """Increment a counter atomically: the server serialises the single UPDATE."""
    async with DbSession(engine) as session:
        await session.execute(
            "UPDATE example_counters SET value = value + 1 WHERE id = :id", {"id": counter_id}
        )


# --8<-- [end:increment]


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_counters "
                "(id INT PRIMARY KEY, value INT NOT NULL)"
            )
            await session.execute("REPLACE INTO example_counters VALUES (1, 0)")
        await asyncio.gather(*(increment_counter(engine, 1) for _ in range(50)))
        async with DbSession(engine) as session:
            value = await session.execute_scalar("SELECT value FROM example_counters WHERE id = 1")
        print(f"counter after 50 concurrent increments: {value}")
        assert value == 50
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_counters")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
