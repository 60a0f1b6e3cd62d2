"""Inspect a pool's connections from the server's side: open transactions, named locks,
changed session settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .settings import DATABASE_URL


@dataclass(frozen=True)
class PoolReport:
    checked_out: int
    idle_connections: int
    open_transactions: int
    lock_waits: int
    held_lock_names: tuple[str, ...]
    lock_wait_timeouts: tuple[int, ...]


async def _thread_id(conn: AsyncConnection) -> int:
    raw = await conn.get_raw_connection()
    value = raw.driver_connection.thread_id()  # type: ignore[union-attr]
    assert isinstance(value, int)
    return value


async def pool_report(engine: AsyncEngine, lock_names: tuple[str, ...] = ()) -> PoolReport:
    """Borrow every idle connection of ``engine`` and report what the server sees."""
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    idle = engine.pool.checkedin()  # type: ignore[attr-defined]
    borrowed: list[AsyncConnection] = []
    timeouts: list[int] = []
    ids: list[int] = []
    try:
        for _ in range(idle):
            conn = await engine.connect()
            borrowed.append(conn)
            ids.append(await _thread_id(conn))
            result = await conn.exec_driver_sql("SELECT @@SESSION.innodb_lock_wait_timeout")
            timeouts.append(int(result.scalar_one()))
            await conn.rollback()
    finally:
        for conn in borrowed:
            await conn.close()
    # InnoDB refreshes its INFORMATION_SCHEMA transaction cache at most every 100 ms.
    await asyncio.sleep(0.15)
    probe = create_async_engine(DATABASE_URL, poolclass=NullPool)
    try:
        async with probe.connect() as conn:
            id_list = ",".join(str(i) for i in ids) or "NULL"
            open_trx = (
                await conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                    f"WHERE trx_mysql_thread_id IN ({id_list})"
                )
            ).scalar()
            waits = (
                await conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                    "WHERE trx_state = 'LOCK WAIT'"
                )
            ).scalar()
            held = []
            for name in lock_names:
                owner = (await conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (name,))).scalar()
                if owner is not None:
                    held.append(name)
    finally:
        await probe.dispose()
    return PoolReport(
        checked_out=checked_out,
        idle_connections=idle,
        open_transactions=int(open_trx or 0),
        lock_waits=int(waits or 0),
        held_lock_names=tuple(held),
        lock_wait_timeouts=tuple(timeouts),
    )
