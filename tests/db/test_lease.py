"""ConnectionLease and create_engine: one pooled connection across sessions, replaced when
invalidated; the tuned engine skips needless resets and pings idle connections."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    ConfigurationError,
    ConnectionLease,
    DatabaseDisconnectError,
    DbSession,
    create_engine,
)

from ..support.backends import Backend
from ..support.settings import DATABASE_URL


async def test_lease_keeps_one_connection_and_resets_it(
    engine: AsyncEngine, backend: Backend
) -> None:
    """Sessions on a lease share one server connection, each still ends its transaction
    and releases its named lock; closing the lease returns the connection."""
    key = f"lease:{id(engine)}"
    async with ConnectionLease(engine) as lease:
        ids = set()
        for _ in range(3):
            async with DbSession(engine, lease=lease, lock_timeout=2) as s:
                ids.add(await s.execute_scalar(backend.connection_id_sql))
                await AdvisoryLock(s, key).acquire()
            assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert len(ids) == 1
        report = await backend.pool_report(engine, (key,))
        assert report.held_locks == ()
        assert report.open_transactions == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    other = create_engine(DATABASE_URL)
    try:
        with pytest.raises(ConfigurationError):
            DbSession(engine, lease=ConnectionLease(other))
    finally:
        await other.dispose()


async def test_lease_replaces_a_killed_connection(engine: AsyncEngine, backend: Backend) -> None:
    """A leased connection killed on the server fails one session with a disconnect; the
    next session on the lease gets a fresh connection."""
    async with ConnectionLease(engine) as lease:
        async with DbSession(engine, lease=lease) as s:
            first = await s.execute_scalar(backend.connection_id_sql)
        async with DbSession(engine) as killer:
            await killer.execute(backend.kill_sql(first))
        await asyncio.sleep(0.1)
        with pytest.raises(DatabaseDisconnectError):
            async with DbSession(engine, lease=lease) as s:
                await s.execute_scalar(backend.connection_id_sql)
        async with DbSession(engine, lease=lease) as s:
            assert await s.execute_scalar(backend.connection_id_sql) != first
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_tuned_engine_rolls_back_only_open_transactions() -> None:
    """With create_engine, a connection returned with a transaction open (raw use) is
    rolled back by the reset hook, and idle connections are pinged and replaced if dead."""
    engine = create_engine(DATABASE_URL, pool_size=1, max_overflow=0, ping_after=0.0)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
            await cursor.execute("SELECT GET_LOCK('tuned-probe', 0)")
            await cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS t_probe (x INT)")
            await cursor.execute("INSERT INTO t_probe VALUES (1)")
            first = await conn.exec_driver_sql("SELECT CONNECTION_ID()")
            first_id = first.scalar()
        async with DbSession(engine) as s:
            assert await s.execute_scalar("SELECT CONNECTION_ID()") == first_id
            assert await s.execute_scalar("SELECT COUNT(*) FROM t_probe") == 0  # rolled back
            await s.execute("SELECT RELEASE_LOCK('tuned-probe')")
        killer_engine = create_engine(DATABASE_URL)
        async with DbSession(killer_engine) as killer:
            await killer.execute(f"KILL {int(first_id)}")
        await killer_engine.dispose()
        await asyncio.sleep(0.1)
        async with DbSession(engine) as s:  # pinged at checkout, replaced
            assert await s.execute_scalar("SELECT CONNECTION_ID()") != first_id
    finally:
        await engine.dispose()
