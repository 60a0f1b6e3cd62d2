"""Cancellation and connection faults: cleanup completes, the pool stays clean, nothing is
left running on the server, and an unknown commit outcome is reported as such."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    CommitOutcomeUnknownError,
    DatabaseDisconnectError,
    DbSession,
    RowLock,
)

from ..conftest import TableFactory
from ..support.backends import Backend
from ..support.proxy import Action, proxied_engine

ACCOUNTS = "CREATE TABLE {table} (id INT PRIMARY KEY, balance INT NOT NULL)"


async def _accounts(engine: AsyncEngine, make_table: TableFactory) -> str:
    table = await make_table(ACCOUNTS)
    async with DbSession(engine) as s:
        await s.execute(f"INSERT INTO {table} VALUES (1, 100), (2, 100)")
    return table


async def _wait_until_no_lock_waits(engine: AsyncEngine, backend: Backend, within: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        report = await backend.pool_report(engine)
        if report.lock_waits == 0:
            return loop.time() - started
        assert loop.time() - started < within, (
            "a cancelled statement is still waiting on the server"
        )
        await asyncio.sleep(0.05)


async def test_cancel_during_blocked_for_update(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A task cancelled while blocked in SELECT ... FOR UPDATE: its connection is discarded,
    the server statement is killed at once (no orphan lock wait, hazard D5), and no pooled
    connection keeps a transaction."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as holder:
        await RowLock(holder, table, {"id": 1}).acquire()
        baseline = engine.pool.checkedout()  # type: ignore[attr-defined]

        async def victim() -> None:
            async with DbSession(engine) as s:
                await s.execute(f"UPDATE {table} SET balance = 0 WHERE id = 2")
                await RowLock(s, table, {"id": 1}).acquire()

        task = asyncio.create_task(victim())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.pool.checkedout() == baseline  # type: ignore[attr-defined]
        assert await _wait_until_no_lock_waits(engine, backend, within=2.0) < 2.0
    report = await backend.pool_report(engine)
    assert report.checked_out == 0
    assert report.open_transactions == 0
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 2") == 100


async def test_cancel_during_named_lock_wait(engine: AsyncEngine, backend: Backend) -> None:
    """A task cancelled while waiting in GET_LOCK: the pool is back to baseline, the waiter's
    server session is gone, and once the holder ends the key is free for anyone."""
    key = f"cancel-wait:{id(engine)}"
    async with DbSession(engine) as holder:
        await AdvisoryLock(holder, key).acquire()
        baseline = engine.pool.checkedout()  # type: ignore[attr-defined]

        async def waiter() -> None:
            async with DbSession(engine) as s:
                await AdvisoryLock(s, key, timeout=30).acquire()

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.pool.checkedout() == baseline  # type: ignore[attr-defined]
    report = await backend.pool_report(engine, (key,))
    assert report.checked_out == 0
    assert report.open_transactions == 0
    assert report.held_locks == ()


async def test_cancel_between_statements(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A task cancelled between statements: its writes are rolled back, its named lock is
    released and its lock timeout restored before the connection is reused."""
    table = await _accounts(engine, make_table)
    key = f"between:{id(engine)}"
    entered = asyncio.Event()

    async def worker() -> None:
        async with DbSession(engine, lock_timeout=5) as s:
            await AdvisoryLock(s, key).acquire()
            await s.execute(f"UPDATE {table} SET balance = 0 WHERE id = 1")
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(worker())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    report = await backend.pool_report(engine, (key,))
    assert report.checked_out == 0
    assert report.idle_connections >= 1  # the connection was cleaned, not discarded
    assert report.open_transactions == 0
    assert report.held_locks == ()
    assert set(report.lock_wait_timeouts) == {backend.default_lock_timeout}
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 1") == 100


async def test_timeout_around_session_is_a_cancellation(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """asyncio.timeout() around a blocked session raises TimeoutError to the caller after the
    cleanup, with the pool clean."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as holder:
        await RowLock(holder, table, {"id": 1}).acquire()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3), DbSession(engine) as s:
                await RowLock(s, table, {"id": 1}).acquire()
    report = await backend.pool_report(engine)
    assert (report.checked_out, report.open_transactions, report.lock_waits) == (0, 0, 0)


async def test_connection_lost_during_commit_is_outcome_unknown(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """COMMIT reaches the server but the reply is lost: CommitOutcomeUnknownError is raised
    (here the commit did happen), and the connection is not returned to the pool."""
    table = await _accounts(engine, make_table)
    async with proxied_engine(backend.url) as (proxy, proxied):
        proxy.add_trigger(backend.commit_packet, Action.CUT_AFTER)
        with pytest.raises(CommitOutcomeUnknownError):
            async with DbSession(proxied) as s:
                lost = await s.execute_scalar(backend.connection_id_sql)
                await s.execute(f"UPDATE {table} SET balance = 7 WHERE id = 1")
        async with DbSession(proxied) as s:
            assert await s.execute_scalar(backend.connection_id_sql) != lost
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 1") == 7


async def test_frozen_commit_is_bounded_and_killed(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A COMMIT that never answers ends after cleanup_timeout with CommitOutcomeUnknownError;
    the server session is killed, so its row locks do not linger."""
    table = await _accounts(engine, make_table)
    async with proxied_engine(backend.url) as (proxy, proxied):
        proxy.add_trigger(backend.commit_packet, Action.FREEZE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CommitOutcomeUnknownError):
            async with DbSession(proxied, cleanup_timeout=0.5) as s:
                await s.execute(f"UPDATE {table} SET balance = 9 WHERE id = 2")
        assert loop.time() - started < 5
        proxy.thaw()
    async with DbSession(engine, lock_timeout=2) as s:
        assert await s.execute(f"UPDATE {table} SET balance = balance WHERE id = 2") == 1
        assert await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 2") == 100


async def test_connection_reset_mid_transaction(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A connection dropped mid-transaction raises DatabaseDisconnectError, nothing of the
    transaction persists, and the next session on the same engine works."""
    table = await _accounts(engine, make_table)
    async with proxied_engine(backend.url) as (proxy, proxied):
        with pytest.raises(DatabaseDisconnectError):
            async with DbSession(proxied) as s:
                await s.execute(f"UPDATE {table} SET balance = 1 WHERE id = 1")
                proxy.reset()
                await s.execute(f"UPDATE {table} SET balance = 1 WHERE id = 2")
        async with DbSession(proxied) as s:
            assert await s.execute_scalar(f"SELECT SUM(balance) FROM {table}") == 200
