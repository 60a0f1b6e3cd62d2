"""Idempotent INSERT with the database's unique key (seed README, database example 5)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async.db.helpers import insert_idempotent
from safesync_async.db.session import DbSession

from .settings import make_engine


# --8<-- [start:create-profile]
async def create_user_profile(
    engine: AsyncEngine, user_id: int, initial_data: dict[str, Any]
) -> bool:
    """Create a profile; safe to call any number of times, concurrently too."""
    async with DbSession(engine) as session:
        inserted = await insert_idempotent(
            session,
            """
            INSERT INTO example_user_profiles (user_id, display_name, created_at)
            VALUES (:user_id, :display_name, NOW())
            """,
            {"user_id": user_id, "display_name": initial_data.get("display_name", "User")},
        )
    print("Profile created" if inserted else "Profile already exists")
    return inserted


# --8<-- [end:create-profile]


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_user_profiles (user_id INT PRIMARY KEY, "
                "display_name VARCHAR(50) NOT NULL, created_at DATETIME NOT NULL)"
            )
            await session.execute("DELETE FROM example_user_profiles WHERE user_id = 7")
        results = await asyncio.gather(
            *(create_user_profile(engine, 7, {"display_name": "Ada"}) for _ in range(5))
        )
        assert results.count(True) == 1
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_user_profiles")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
