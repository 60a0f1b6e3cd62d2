"""DbSession in practice: statements and results, per-transaction options, SQLAlchemy
constructs, savepoints for expected failures, the rollback-only rule, interrupted
statements and the outcome after a cancellation, deferred writes that share a round
trip, and a connection lease for a series of short transactions.
Each function's outcome is checked in main()."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConnectionLease,
    DbSession,
    DuplicateKeyError,
    LockWaitTimeoutError,
    RollbackOnlyError,
    RowLock,
    TransactionOutcome,
    create_engine,
)

from .settings import DATABASE_URL

SLOW_QUERY = "SELECT pg_sleep(1)" if DATABASE_URL.startswith("postgresql") else "SELECT SLEEP(1)"


# --8<-- [start:basics]
async def restock(engine: AsyncEngine, sku: str, quantity: int) -> dict[str, object]:
    """One unit of work: every statement runs in the same transaction."""
    async with DbSession(engine) as session:  # checks a connection out and begins
        matched = await session.execute(
            "UPDATE example_stock SET qty = qty + :n WHERE sku = :sku", {"n": quantity, "sku": sku}
        )  # -> rows matched
        item = await session.fetch_one(
            "SELECT sku, qty FROM example_stock WHERE sku = :sku", {"sku": sku}
        )  # -> dict, or None (MultipleRowsError on two or more rows)
        skus = await session.fetch_all("SELECT sku FROM example_stock ORDER BY sku")  # -> [dict]
        total = await session.execute_scalar("SELECT SUM(qty) FROM example_stock")
    # A clean exit committed; an exception would have rolled back. Either way the
    # connection is back in the pool with no transaction open.
    return {"matched": matched, "item": item, "skus": len(skus), "total": int(total)}


# --8<-- [end:basics]


# --8<-- [start:sqlalchemy]
stock = sa.table("example_stock", sa.column("sku"), sa.column("qty"))


async def low_stock(engine: AsyncEngine, below: int) -> list[str]:
    """SQLAlchemy constructs run in the session's transaction like SQL text."""
    async with DbSession(engine) as session:
        rows = await session.fetch_all(
            sa.select(stock.c.sku).where(stock.c.qty < below).order_by(stock.c.sku)
        )
    return [row["sku"] for row in rows]


# --8<-- [end:sqlalchemy]


# --8<-- [start:options]
async def reserve(engine: AsyncEngine, sku: str) -> bool:
    """Take one item if there is one, waiting at most about 2 s for the row lock."""
    async with DbSession(
        engine,
        isolation_level="READ COMMITTED",  # for this transaction only
        lock_timeout=2,  # seconds; MySQL/MariaDB round up to whole seconds
        operation="reserve",  # the metrics label of this unit of work
    ) as session:
        matched = await session.execute(
            "UPDATE example_stock SET qty = qty - 1 WHERE sku = :sku AND qty > 0", {"sku": sku}
        )
    return matched == 1


# --8<-- [end:options]


# --8<-- [start:savepoint]
async def add_item(engine: AsyncEngine, sku: str, qty: int) -> bool:
    """Create the item, or add to it if it exists; True if it was created."""
    async with DbSession(engine) as session:
        try:
            async with session.savepoint():  # the duplicate below is an expected failure
                await session.execute(
                    "INSERT INTO example_stock (sku, qty) VALUES (:sku, :qty)",
                    {"sku": sku, "qty": qty},
                )
            created = True
        except DuplicateKeyError:
            created = False  # undone back to the savepoint; the session carries on
            await session.execute(
                "UPDATE example_stock SET qty = qty + :qty WHERE sku = :sku",
                {"sku": sku, "qty": qty},
            )
    return created


# --8<-- [end:savepoint]


# --8<-- [start:rollback-only]
async def move_one(engine: AsyncEngine, source: str, target: str) -> None:
    """Move one item. The second UPDATE may time out waiting for a row lock; swallowing
    that error must not let the first UPDATE commit on its own."""
    async with DbSession(engine, lock_timeout=1) as session:
        await session.execute(
            "UPDATE example_stock SET qty = qty - 1 WHERE sku = :s", {"s": source}
        )
        try:
            await session.execute(
                "UPDATE example_stock SET qty = qty + 1 WHERE sku = :s", {"s": target}
            )
        except LockWaitTimeoutError:
            pass  # a bug: the session is rollback-only now, so leaving the block refuses COMMIT


async def move_while_locked(engine: AsyncEngine) -> str:
    async with DbSession(engine) as other:
        await RowLock(other, "example_stock", {"sku": "bolt"}).acquire()  # held meanwhile
        try:
            await move_one(engine, "nut", "bolt")
        except RollbackOnlyError as exc:  # nothing was committed
            return type(exc.__cause__).__name__  # the error that was swallowed
    return "committed"


# --8<-- [end:rollback-only]


# --8<-- [start:deferred]
async def apply_counts(engine: AsyncEngine, counts: dict[str, int]) -> list[str]:
    """Writes whose results are not needed at once: sent together, in one round trip on
    MySQL/MariaDB, before the next statement or with the COMMIT. Returns the unknown skus."""
    async with DbSession(engine) as session:
        for sku, qty in counts.items():
            session.defer(  # no await: queued, parameters checked now
                "UPDATE example_stock SET qty = :qty WHERE sku = :sku", {"sku": sku, "qty": qty}
            )
        matched = await session.flush()  # optional: run them now; rows matched by each
        # Without flush() they would have gone with the COMMIT: one round trip in all. A
        # failing one raises where they are sent, and the whole transaction rolls back.
    return [sku for sku, rows in zip(counts, matched, strict=True) if rows == 0]


# --8<-- [end:deferred]


# --8<-- [start:lease]
async def import_counts(engine: AsyncEngine, counts: dict[str, int]) -> None:
    """Many short transactions in a row from one task: keep one pooled connection."""
    async with ConnectionLease(engine) as lease:
        for sku, qty in counts.items():
            async with DbSession(engine, lease=lease) as session:  # still one transaction each
                await session.execute(
                    "UPDATE example_stock SET qty = :qty WHERE sku = :sku", {"sku": sku, "qty": qty}
                )


# --8<-- [end:lease]


async def quantities(engine: AsyncEngine) -> dict[str, int]:
    async with DbSession(engine) as session:
        rows = await session.fetch_all("SELECT sku, qty FROM example_stock")
    return {row["sku"]: row["qty"] for row in rows}


# --8<-- [start:outcome]
async def restock_with_deadline(engine: AsyncEngine, sku: str) -> TransactionOutcome:
    """A caller with a deadline: if it expires, the session is left as it must be, and
    ``outcome`` says whether the restock was committed (a cancellation that arrives during
    the COMMIT lets the COMMIT finish first)."""
    session = DbSession(engine)
    try:
        async with asyncio.timeout(5):
            async with session:
                await session.execute(
                    "UPDATE example_stock SET qty = qty + 1 WHERE sku = :sku", {"sku": sku}
                )
    except TimeoutError:
        pass  # session.outcome is COMMITTED, ROLLED_BACK or (no COMMIT answer) UNKNOWN
    return session.outcome


async def timed_out_lookup(engine: AsyncEngine, sku: str) -> str:
    """A statement interrupted by a timeout the block catches: the connection is discarded
    with the transaction, so leaving the block raises instead of pretending to commit."""
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "UPDATE example_stock SET qty = qty + 1 WHERE sku = :sku", {"sku": sku}
            )
            try:
                async with asyncio.timeout(0.01):
                    await session.execute(SLOW_QUERY)
            except TimeoutError:
                pass  # the UPDATE above can no longer be committed
    except RollbackOnlyError as exc:
        return str(exc).split(";")[0]  # "commit refused: a statement was interrupted ..."
    return "committed"


# --8<-- [end:outcome]


async def main() -> None:
    # --8<-- [start:engine]
    engine = create_engine(DATABASE_URL, pool_size=10, max_overflow=10)
    # --8<-- [end:engine]
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_stock "
                "(sku VARCHAR(20) PRIMARY KEY, qty INT NOT NULL)"
            )
            await session.execute("DELETE FROM example_stock")
            await session.execute("INSERT INTO example_stock VALUES ('bolt', 5), ('nut', 1)")

        result = await restock(engine, "nut", 2)
        assert result == {"matched": 1, "item": {"sku": "nut", "qty": 3}, "skus": 2, "total": 8}
        assert await low_stock(engine, 4) == ["nut"]
        assert await reserve(engine, "nut") is True
        assert await add_item(engine, "washer", 10) is True
        assert await add_item(engine, "washer", 5) is False
        before = await quantities(engine)
        assert await move_while_locked(engine) == "LockWaitTimeoutError"
        assert await quantities(engine) == before  # the first UPDATE was not committed
        assert await apply_counts(engine, {"bolt": 1, "nut": 1, "gear": 1}) == ["gear"]
        assert await quantities(engine) == {"bolt": 1, "nut": 1, "washer": 15}
        await import_counts(engine, {"bolt": 7, "nut": 4, "washer": 0})
        assert await quantities(engine) == {"bolt": 7, "nut": 4, "washer": 0}
        assert await restock_with_deadline(engine, "bolt") is TransactionOutcome.COMMITTED
        refused = await timed_out_lookup(engine, "bolt")
        assert refused.startswith("commit refused: a statement was interrupted"), refused
        assert await quantities(engine) == {"bolt": 8, "nut": 4, "washer": 0}
        print(f"stock after the session examples: {await quantities(engine)}")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_stock")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
