"""Optimistic concurrency control with a retry in a new transaction each time
(seed README, database example 3), by hand and with retry_transaction."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import retry_transaction
from safesync_async.db.helpers import occ_update
from safesync_async.db.session import DbSession

from .settings import make_engine


# --8<-- [start:manual]
async def update_account_balance(engine: AsyncEngine, account_id: int, amount_change: int) -> None:
    """The seed's loop, async: every attempt is a new DbSession that re-reads the row."""
    for _attempt in range(50):
        async with DbSession(engine) as session:
            account = await session.fetch_one(
                "SELECT balance, version FROM example_accounts WHERE id = :id", {"id": account_id}
            )
            if account is None:
                raise ValueError(f"account {account_id} not found")
            rowcount = await occ_update(
                session,
                table="example_accounts",
                id_column="id",
                id_value=account_id,
                version_column="version",
                version_value=account["version"],
                updates={"balance": account["balance"] + amount_change},
            )
            if rowcount == 1:
                return
        await asyncio.sleep(random.uniform(0.001, 0.01))  # version moved on: try again
    raise RuntimeError(f"failed to update account {account_id}")


# --8<-- [end:manual]


async def update_with_helper(engine: AsyncEngine, account_id: int, amount_change: int) -> None:
    """The same with retry_transaction: backoff, caps and deadlock retries included."""

    async def attempt(session: DbSession) -> None:
        account = await session.fetch_one(
            "SELECT balance, version FROM example_accounts WHERE id = :id", {"id": account_id}
        )
        assert account is not None
        await occ_update(
            session, "example_accounts", "id", account_id, "version", account["version"],
            {"balance": account["balance"] + amount_change}, raise_on_conflict=True,
        )  # fmt: skip

    await retry_transaction(engine, attempt, max_attempts=50, operation="adjust_balance")


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_accounts (id INT PRIMARY KEY, "
                "balance INT NOT NULL, version INT NOT NULL DEFAULT 0)"
            )
            await session.execute("REPLACE INTO example_accounts (id, balance) VALUES (1, 0)")
        await asyncio.gather(
            *(update_account_balance(engine, 1, 10) for _ in range(10)),
            *(update_with_helper(engine, 1, 5) for _ in range(10)),
        )
        async with DbSession(engine) as session:
            balance = await session.execute_scalar(
                "SELECT balance FROM example_accounts WHERE id = 1"
            )
        print(f"balance after 20 concurrent optimistic updates: {balance}")
        assert balance == 150
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_accounts")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
