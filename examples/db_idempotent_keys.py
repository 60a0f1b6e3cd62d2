"""insert_idempotent with key=: a duplicate on the named unique key means "already done";
a collision on any other unique key is a real error. Also: the insert as one step of a
larger transaction, which carries on after a duplicate."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import DbSession, DuplicateKeyError, insert_idempotent

from .settings import make_engine


# --8<-- [start:key]
async def register_payment(engine: AsyncEngine, payment_id: str, invoice: int) -> bool:
    """Record a payment once per payment id. Each invoice may be paid once: paying it
    again under another payment id is a bug to surface, not a duplicate to ignore."""
    async with DbSession(engine) as session:
        created = await insert_idempotent(
            session,
            "INSERT INTO example_payments_in (payment_id, invoice) VALUES (:payment, :invoice)",
            {"payment": payment_id, "invoice": invoice},
            key="PRIMARY",  # MySQL/MariaDB name of the primary key; PostgreSQL: "<table>_pkey"
        )
        if created:  # the session is still usable after a duplicate
            await session.execute(
                "UPDATE example_invoices SET paid = paid + 1 WHERE id = :id", {"id": invoice}
            )
    return created


# --8<-- [end:key]


async def refused_constraint(engine: AsyncEngine, payment_id: str, invoice: int) -> str | None:
    """The unique key a payment collided with, if it was refused."""
    try:
        await register_payment(engine, payment_id, invoice)
    except DuplicateKeyError as exc:  # the whole transaction was rolled back
        return exc.constraint
    return None


async def paid(engine: AsyncEngine, invoice: int) -> int:
    async with DbSession(engine) as session:
        value = await session.execute_scalar(
            "SELECT paid FROM example_invoices WHERE id = :id", {"id": invoice}
        )
    return int(value)


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_invoices "
                "(id INT PRIMARY KEY, paid INT NOT NULL)"
            )
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_payments_in "
                "(payment_id VARCHAR(40) PRIMARY KEY, invoice INT NOT NULL, "
                "CONSTRAINT uq_example_invoice UNIQUE (invoice))"
            )
            await session.execute("DELETE FROM example_payments_in")
            await session.execute("DELETE FROM example_invoices")
            await session.execute("INSERT INTO example_invoices VALUES (1, 0), (2, 0)")

        # The same payment delivered five times at once: recorded once, invoice paid once.
        results = await asyncio.gather(*(register_payment(engine, "pay-1", 1) for _ in range(5)))
        assert results.count(True) == 1
        assert await paid(engine, 1) == 1

        # Another payment for the same invoice collides on uq_example_invoice, not PRIMARY.
        assert await refused_constraint(engine, "pay-2", 1) == "uq_example_invoice"
        assert await paid(engine, 1) == 1
        print(f"5 deliveries of one payment: {results.count(True)} recorded; second payer refused")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_payments_in")
            await session.execute("DROP TABLE example_invoices")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
