"""retry_transaction in practice: a unit of work that meets a row lock held elsewhere is
run again in a new transaction until it succeeds; when the lock is held too long the
retries run out with RetryExhaustedError. Retries are counted in a private Prometheus
registry. Also: an optimistic update whose new value is an SQL expression."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    RetryExhaustedError,
    RowLock,
    occ_update,
    retry_transaction,
)

from .settings import make_engine


# --8<-- [start:retry]
async def add_interest(engine: AsyncEngine, account_id: int, registry: CollectorRegistry) -> int:
    """Credit 1 % interest. If the row stays locked longer than lock_timeout, the attempt
    fails with a lock wait timeout and retry_transaction runs it again, in a new session."""

    async def attempt(session: DbSession) -> int:
        account = await session.fetch_one(
            "SELECT balance FROM example_savings WHERE id = :id FOR UPDATE", {"id": account_id}
        )
        assert account is not None
        interest = int(account["balance"]) // 100
        await session.execute(
            "UPDATE example_savings SET balance = balance + :i WHERE id = :id",
            {"i": interest, "id": account_id},
        )
        return interest

    return await retry_transaction(
        engine,
        attempt,
        lock_timeout=1,  # passed to every attempt's DbSession
        max_attempts=5,
        max_elapsed=30,
        operation="add_interest",  # the metrics label
        registry=registry,
    )


# --8<-- [end:retry]


# --8<-- [start:expression]
async def withdraw(engine: AsyncEngine, account_id: int, amount: int) -> None:
    """The new value may be an SQL expression; the version check still guards the row."""

    async def attempt(session: DbSession) -> None:
        account = await session.fetch_one(
            "SELECT balance, version FROM example_savings WHERE id = :id", {"id": account_id}
        )
        if account is None or account["balance"] < amount:
            raise ValueError("insufficient funds")  # not retried: propagates at once
        await occ_update(
            session,
            "example_savings",
            "id",
            account_id,
            "version",
            account["version"],
            {"balance": sa.column("balance") - amount},
            raise_on_conflict=True,  # VersionConflictError: retried in a new transaction
        )

    await retry_transaction(engine, attempt, operation="withdraw")


# --8<-- [end:expression]


# --8<-- [start:exhausted]
async def reset_balance(engine: AsyncEngine, account_id: int) -> str:
    """Give up after two attempts that each wait at most about a second for the lock."""

    async def attempt(session: DbSession) -> None:
        await session.execute(
            "UPDATE example_savings SET balance = 0 WHERE id = :id", {"id": account_id}
        )

    try:
        await retry_transaction(engine, attempt, lock_timeout=1, max_attempts=2)
    except RetryExhaustedError as exc:  # the last error is exc.__cause__
        return f"gave up after {exc.attempts} attempts: {type(exc.__cause__).__name__}"
    return "reset"


# --8<-- [end:exhausted]


async def hold_row(engine: AsyncEngine, account_id: int, seconds: float) -> asyncio.Task[None]:
    """Another worker locks the row and keeps it locked for a while (returns once the
    lock is taken)."""
    locked = asyncio.Event()

    async def hold() -> None:
        async with DbSession(engine) as session:
            await RowLock(session, "example_savings", {"id": account_id}).acquire()
            locked.set()
            await asyncio.sleep(seconds)

    task = asyncio.create_task(hold())
    await locked.wait()
    return task


async def balance(engine: AsyncEngine, account_id: int) -> int:
    async with DbSession(engine) as session:
        value = await session.execute_scalar(
            "SELECT balance FROM example_savings WHERE id = :id", {"id": account_id}
        )
    return int(value)


async def main() -> None:
    engine = make_engine()
    registry = CollectorRegistry()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_savings (id INT PRIMARY KEY, "
                "balance INT NOT NULL, version INT NOT NULL DEFAULT 0)"
            )
            await session.execute("DELETE FROM example_savings")
            await session.execute("INSERT INTO example_savings (id, balance) VALUES (1, 1000)")

        # The row is locked for 1.5 s: the first attempt gives up after 1 s, the second
        # gets the lock when the holder commits.
        holder = await hold_row(engine, 1, 1.5)
        assert await add_interest(engine, 1, registry) == 10
        await holder
        retries = registry.get_sample_value(
            "safesync_db_retries_total",
            {"operation": "add_interest", "reason": "lock_wait_timeout"},
        )
        assert retries == 1

        # Locked for longer than the attempts can wait: the retries run out.
        holder = await hold_row(engine, 1, 3)
        assert await reset_balance(engine, 1) == "gave up after 2 attempts: LockWaitTimeoutError"
        await holder

        await asyncio.gather(*(withdraw(engine, 1, 10) for _ in range(10)))
        assert await balance(engine, 1) == 1010 - 100
        print(
            f"balance after interest, a refused reset and withdrawals: {await balance(engine, 1)}"
        )
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_savings")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
