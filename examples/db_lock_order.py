"""Several rows in one transaction: lock or update them in one global order (sorted
primary keys), so concurrent transactions wait for each other instead of deadlocking.
Concurrent transfers in both directions, with row locks and with optimistic updates,
finish without a single deadlock and conserve the money."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, RowLock, occ_update, retry_transaction

from .settings import make_engine


# --8<-- [start:row-locks]
async def transfer(engine: AsyncEngine, source: int, target: int, amount: int) -> bool:
    """Move money between two accounts under row locks, taken in id order."""
    async with DbSession(engine) as session:
        balances = {}
        for account in sorted((source, target)):  # the same order in every transaction
            row = await RowLock(session, "example_ledger", {"id": account}).acquire()
            if row is None:
                raise LookupError(f"no account {account}")
            balances[account] = row["balance"]
        if balances[source] < amount:
            return False
        for account, delta in ((source, -amount), (target, amount)):
            await session.execute(
                "UPDATE example_ledger SET balance = balance + :delta WHERE id = :id",
                {"delta": delta, "id": account},
            )
        return True


# --8<-- [end:row-locks]


# --8<-- [start:occ-order]
async def adjust(
    engine: AsyncEngine, deltas: Mapping[int, int], registry: CollectorRegistry
) -> None:
    """Apply several optimistic updates in one transaction. Each UPDATE keeps its row
    locked until COMMIT, so they too go in id order."""

    async def attempt(session: DbSession) -> None:
        for account in sorted(deltas):  # the same order in every transaction
            row = await session.fetch_one(
                "SELECT balance, version FROM example_ledger WHERE id = :id", {"id": account}
            )
            assert row is not None
            await occ_update(
                session,
                "example_ledger",
                "id",
                account,
                "version",
                row["version"],
                {"balance": row["balance"] + deltas[account]},
                raise_on_conflict=True,  # retry_transaction runs the attempt again
            )

    await retry_transaction(engine, attempt, operation="adjust", registry=registry)


# --8<-- [end:occ-order]


async def main(accounts: int = 4, transfers: int = 200) -> None:
    engine = make_engine()
    registry = CollectorRegistry()
    rng = random.Random(11)
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_ledger (id INT PRIMARY KEY, "
                "balance INT NOT NULL, version INT NOT NULL DEFAULT 0)"
            )
            await session.execute("DELETE FROM example_ledger")
            for account in range(1, accounts + 1):
                await session.execute(
                    "INSERT INTO example_ledger (id, balance) VALUES (:id, 1000)", {"id": account}
                )
        pairs = [rng.sample(range(1, accounts + 1), 2) for _ in range(transfers)]
        started = time.perf_counter()
        # No retries here: a single deadlock would raise DeadlockError out of gather().
        await asyncio.gather(*(transfer(engine, s, t, rng.randint(1, 50)) for s, t in pairs))
        await asyncio.gather(
            *(adjust(engine, {s: -5, t: 5}, registry) for s, t in pairs[: transfers // 2])
        )
        elapsed = time.perf_counter() - started
        async with DbSession(engine) as session:
            total = await session.execute_scalar("SELECT SUM(balance) FROM example_ledger")
        deadlocks = registry.get_sample_value(
            "safesync_db_retries_total", {"operation": "adjust", "reason": "deadlock"}
        )
        print(f"{transfers + transfers // 2} transactions in {elapsed:.2f} s, no deadlock")
        assert total == accounts * 1000  # money conserved
        assert not deadlocks  # retries there were for version conflicts, never deadlocks
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_ledger")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
