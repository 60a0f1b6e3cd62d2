"""The raw ceiling on PostgreSQL: 32 asyncio workers, each owning an ``asyncpg``
connection, running the same SQL text directly (asyncpg prepares and caches each text
per connection). Errors are looked at only as far as the retry policy needs (SQLSTATE of
a deadlock, serialization failure or lock timeout); no pool, no metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa

from .harness import AsyncImplementation
from .statements import ADVISORY_XACT_LOCK, TransferSql, advisory_key, advisory_key64, positional
from .workload import CellSpec, RetryPolicy, Transfer, VersionConflict

#: SQLSTATEs after which the transfer runs again in a new transaction.
RETRYABLE_SQLSTATES = {
    "40P01": "deadlock",
    "40001": "serialization",
    "55P03": "lock_wait_timeout",
}
_ID, _BALANCE, _VERSION, _TRANSFERS = range(4)  # SELECT * column order

Body = Callable[[Any, Transfer], Awaitable[None]]


def _sql(sql: str, *names: str) -> str:
    """``sql`` in asyncpg's paramstyle, checking the order the bodies pass values in."""
    text, found = positional(sql, "numeric")
    assert found == names, (found, names)
    return text


def bodies(table: str, accounts: int) -> dict[str, Body]:
    """One transaction's statements per strategy, on an asyncpg connection inside
    ``connection.transaction()``."""
    sql = TransferSql.for_table(table)
    add = _sql(sql.add, "delta", "id")
    lock = _sql(sql.lock, "id")
    read = _sql(sql.read, "id")
    write = _sql(sql.write, "balance", "id")
    occ_write = _sql(sql.occ_write, "balance", "transfers", "id", "version")
    xact_lock = _sql(ADVISORY_XACT_LOCK, "key")
    keys = {
        account: advisory_key64(advisory_key(table, account)) for account in range(1, accounts + 1)
    }

    async def atomic(connection: Any, t: Transfer) -> None:
        await connection.execute(add, t.delta, t.low)
        await connection.execute(add, -t.delta, t.high)

    async def row_lock(connection: Any, t: Transfer) -> None:
        low = await connection.fetchrow(lock, t.low)
        high = await connection.fetchrow(lock, t.high)
        await connection.execute(write, low[_BALANCE] + t.delta, t.low)
        await connection.execute(write, high[_BALANCE] - t.delta, t.high)

    async def occ(connection: Any, t: Transfer) -> None:
        low = await connection.fetchrow(read, t.low)
        high = await connection.fetchrow(read, t.high)
        for row, delta in ((low, t.delta), (high, -t.delta)):
            status = await connection.execute(
                occ_write, row[_BALANCE] + delta, row[_TRANSFERS] + 1, row[_ID], row[_VERSION]
            )
            if status == "UPDATE 0":
                raise VersionConflict

    async def advisory(connection: Any, t: Transfer) -> None:
        await connection.execute(xact_lock, keys[t.low])
        await connection.execute(xact_lock, keys[t.high])
        low = await connection.fetchrow(read, t.low)
        high = await connection.fetchrow(read, t.high)
        await connection.execute(write, low[_BALANCE] + t.delta, t.low)
        await connection.execute(write, high[_BALANCE] - t.delta, t.high)

    return {"atomic": atomic, "row_lock": row_lock, "occ": occ, "advisory": advisory}


def retry_reason(exc: Exception) -> str | None:
    """Why running the transfer again can help, or None if it cannot."""
    if isinstance(exc, VersionConflict):
        return "version_conflict"
    if isinstance(exc, asyncpg.PostgresError):
        return RETRYABLE_SQLSTATES.get(exc.sqlstate)
    return None


class RawPostgres(AsyncImplementation[Any]):
    """Per transfer: ``async with connection.transaction():`` (BEGIN ... COMMIT) around
    the strategy's statements; advisory locks are transaction-scoped
    (``pg_advisory_xact_lock``), released by the COMMIT or ROLLBACK. On a deadlock,
    serialization failure, lock timeout or OCC conflict: ROLLBACK, pause, again."""

    def __init__(self, spec: CellSpec) -> None:
        super().__init__(spec)
        self.body = bodies(spec.table, spec.accounts)[spec.strategy]
        self.policy = RetryPolicy()

    async def connect(self) -> Sequence[Any]:
        url = sa.make_url(self.spec.database_url)
        connections = []
        for _ in range(self.spec.workers):
            connection = await asyncpg.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 5432,
                user=url.username or "postgres",
                password=url.password,
                database=url.database,
            )
            self.resources.push_async_callback(connection.close)
            connections.append(connection)
        return connections

    async def transfer(self, connection: Any, transfer: Transfer) -> None:
        attempt = 0
        deadline = 0.0
        while True:
            attempt += 1
            try:
                async with connection.transaction():
                    await self.body(connection, transfer)
                return
            except Exception as exc:
                reason = retry_reason(exc)
                if reason is None:
                    raise
            deadline = deadline or self.policy.deadline()
            await asyncio.sleep(self.policy.pause(reason, attempt, deadline))

    def retries(self) -> dict[str, int]:
        return dict(self.policy.counts)
