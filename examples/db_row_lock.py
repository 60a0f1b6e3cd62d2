"""Pessimistic row locking for read-modify-write (seed README, database example 2)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async.db.locking.row_lock import RowLock
from safesync_async.db.session import DbSession

from .settings import make_engine


# --8<-- [start:process-order]
async def process_order(engine: AsyncEngine, order_id: int) -> bool:
    """Process an order once, even if many workers try at the same time."""
    async with DbSession(engine) as session:
        order = await RowLock(session, "example_orders", {"id": order_id}).acquire()
        if order is None or order["status"] == "processed":
            return False  # missing, or another worker got there first
        await session.execute(
            "UPDATE example_orders SET status = :status, handled = handled + 1 WHERE id = :id",
            {"id": order_id, "status": "processed"},
        )
        return True  # the row lock is released when the transaction commits


# --8<-- [end:process-order]


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_orders "
                "(id INT PRIMARY KEY, status VARCHAR(20) NOT NULL, handled INT NOT NULL)"
            )
            await session.execute("REPLACE INTO example_orders VALUES (42, 'new', 0)")
        results = await asyncio.gather(*(process_order(engine, 42) for _ in range(10)))
        async with DbSession(engine) as session:
            handled = await session.execute_scalar(
                "SELECT handled FROM example_orders WHERE id = 42"
            )
        print(
            f"10 workers raced for order 42: {results.count(True)} processed it, handled={handled}"
        )
        assert results.count(True) == 1
        assert handled == 1
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_orders")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
