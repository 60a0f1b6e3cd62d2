"""Advisory (named) locks for work spanning several tables (seed README, database example 4)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async.db.locking.advisory_lock import AdvisoryLock
from safesync_async.db.session import DbSession
from safesync_async.errors import LockTimeoutError

from .settings import make_engine


# --8<-- [start:advisory]
async def process_user_data(engine: AsyncEngine, user_id: int) -> bool:
    """Recompute a user's summary; only one worker at a time per user."""
    try:
        async with (
            DbSession(engine) as session,
            AdvisoryLock(session, f"user_processing:{user_id}", timeout=10),
        ):
            orders = await session.fetch_all(
                "SELECT total FROM example_user_orders WHERE user_id = :user_id",
                {"user_id": user_id},
            )
            await session.execute(
                "UPDATE example_users SET total_spent = :total, runs = runs + 1 WHERE id = :id",
                {"id": user_id, "total": sum(order["total"] for order in orders)},
            )
        # Unlike the seed, the lock is released right after the commit, on this
        # connection, before it goes back to the pool.
        return True
    except LockTimeoutError:
        print(f"could not acquire the lock for user {user_id}")
        return False


# --8<-- [end:advisory]


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_users "
                "(id INT PRIMARY KEY, total_spent INT NOT NULL, runs INT NOT NULL)"
            )
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_user_orders (user_id INT, total INT)"
            )
            await session.execute("REPLACE INTO example_users VALUES (7, 0, 0)")
            await session.execute("DELETE FROM example_user_orders WHERE user_id = 7")
            await session.execute("INSERT INTO example_user_orders VALUES (7, 30), (7, 12)")
        results = await asyncio.gather(*(process_user_data(engine, 7) for _ in range(5)))
        async with DbSession(engine) as session:
            user = await session.fetch_one(
                "SELECT total_spent, runs FROM example_users WHERE id = 7"
            )
        print(f"5 serialized runs: {results.count(True)} succeeded, user row: {user}")
        assert user == {"total_spent": 42, "runs": 5}
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_users")
            await session.execute("DROP TABLE IF EXISTS example_user_orders")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
