"""The raw ceiling on MariaDB/MySQL: 32 asyncio workers, each owning an ``asyncmy``
connection, running the same SQL text directly. Errors are looked at only as far as the
retry policy needs (errno of a deadlock or lock wait timeout); no pool, no metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncmy
import sqlalchemy as sa
from asyncmy.constants import CLIENT
from asyncmy.errors import MySQLError

from .harness import AsyncImplementation
from .statements import (
    ADVISORY_TIMEOUT,
    GET_LOCK,
    RELEASE_ALL_LOCKS,
    TransferSql,
    advisory_key,
    positional,
)
from .workload import CellSpec, RetryPolicy, Transfer, VersionConflict

#: Server errors after which the transfer runs again in a new transaction.
RETRYABLE_ERRNOS = {1213: "deadlock", 3058: "deadlock", 1205: "lock_wait_timeout"}
_ID, _BALANCE, _VERSION, _TRANSFERS = range(4)  # SELECT * column order

Slot = tuple[Any, Any]  # (connection, cursor)
Body = Callable[[Any, Transfer], Awaitable[None]]


class LockNotGranted(Exception):
    """GET_LOCK returned 0 (timeout) or NULL (error)."""


def _sql(sql: str, *names: str) -> str:
    """``sql`` in asyncmy's paramstyle, checking the order the bodies pass values in."""
    text, found = positional(sql, "format")
    assert found == names, (found, names)
    return text


def bodies(table: str, accounts: int) -> dict[str, Body]:
    """One transaction's statements per strategy, on an asyncmy cursor (no COMMIT)."""
    sql = TransferSql.for_table(table)
    add = _sql(sql.add, "delta", "id")
    lock = _sql(sql.lock, "id")
    read = _sql(sql.read, "id")
    write = _sql(sql.write, "balance", "id")
    occ_write = _sql(sql.occ_write, "balance", "transfers", "id", "version")
    get_lock = _sql(GET_LOCK, "name", "timeout")
    names = {account: advisory_key(table, account) for account in range(1, accounts + 1)}

    async def atomic(cursor: Any, t: Transfer) -> None:
        await cursor.execute(add, (t.delta, t.low))
        await cursor.execute(add, (-t.delta, t.high))

    async def row_lock(cursor: Any, t: Transfer) -> None:
        await cursor.execute(lock, (t.low,))
        low = await cursor.fetchone()
        await cursor.execute(lock, (t.high,))
        high = await cursor.fetchone()
        await cursor.execute(write, (low[_BALANCE] + t.delta, t.low))
        await cursor.execute(write, (high[_BALANCE] - t.delta, t.high))

    async def occ(cursor: Any, t: Transfer) -> None:
        await cursor.execute(read, (t.low,))
        low = await cursor.fetchone()
        await cursor.execute(read, (t.high,))
        high = await cursor.fetchone()
        for row, delta in ((low, t.delta), (high, -t.delta)):
            args = (row[_BALANCE] + delta, row[_TRANSFERS] + 1, row[_ID], row[_VERSION])
            if await cursor.execute(occ_write, args) == 0:
                raise VersionConflict

    async def advisory(cursor: Any, t: Transfer) -> None:
        for account in (t.low, t.high):
            name = names[account]
            await cursor.execute(get_lock, (name, ADVISORY_TIMEOUT))
            (granted,) = await cursor.fetchone()
            if granted != 1:
                raise LockNotGranted(f"GET_LOCK({name!r}) returned {granted}")
        await cursor.execute(read, (t.low,))
        low = await cursor.fetchone()
        await cursor.execute(read, (t.high,))
        high = await cursor.fetchone()
        await cursor.execute(write, (low[_BALANCE] + t.delta, t.low))
        await cursor.execute(write, (high[_BALANCE] - t.delta, t.high))

    return {"atomic": atomic, "row_lock": row_lock, "occ": occ, "advisory": advisory}


def retry_reason(exc: Exception) -> str | None:
    """Why running the transfer again can help, or None if it cannot."""
    if isinstance(exc, VersionConflict):
        return "version_conflict"
    if isinstance(exc, MySQLError) and exc.args:
        return RETRYABLE_ERRNOS.get(exc.args[0])
    return None


class RawMariaDB(AsyncImplementation[Slot]):
    """Per transfer: the strategy's statements, COMMIT (and for AdvisoryLock
    ``RELEASE_ALL_LOCKS()`` after it, on the same connection); on a deadlock, lock wait
    timeout or OCC conflict: ROLLBACK, pause, again."""

    def __init__(self, spec: CellSpec) -> None:
        super().__init__(spec)
        self.body = bodies(spec.table, spec.accounts)[spec.strategy]
        self.releases_locks = spec.strategy == "advisory"
        self.policy = RetryPolicy()

    async def connect(self) -> Sequence[Slot]:
        url = sa.make_url(self.spec.database_url)
        slots = []
        for _ in range(self.spec.workers):
            connection = await asyncmy.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 3306,
                user=url.username or "root",
                password=url.password or "",
                db=url.database,
                autocommit=False,
                client_flag=CLIENT.FOUND_ROWS,  # matched rows, as SQLAlchemy's dialect asks
            )
            self.resources.push_async_callback(connection.ensure_closed)
            slots.append((connection, connection.cursor()))
        return slots

    async def transfer(self, slot: Slot, transfer: Transfer) -> None:
        connection, cursor = slot
        attempt = 0
        deadline = 0.0
        while True:
            attempt += 1
            try:
                await self.body(cursor, transfer)
                await connection.commit()
                if self.releases_locks:
                    await cursor.execute(RELEASE_ALL_LOCKS)
                return
            except Exception as exc:
                await self._roll_back(connection, cursor)
                reason = retry_reason(exc)
                if reason is None:
                    raise
            deadline = deadline or self.policy.deadline()
            await asyncio.sleep(self.policy.pause(reason, attempt, deadline))

    async def _roll_back(self, connection: Any, cursor: Any) -> None:
        await connection.rollback()
        if self.releases_locks:
            await cursor.execute(RELEASE_ALL_LOCKS)

    def retries(self) -> dict[str, int]:
        return dict(self.policy.counts)
