"""DbSession against the real MariaDB: transaction boundaries, results, rollback-only,
savepoints, settings that must not leak, and misuse errors."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safesync_async import (
    ConfigurationError,
    DatabaseError,
    DbSession,
    DuplicateKeyError,
    LockWaitTimeoutError,
    MultipleRowsError,
    RollbackOnlyError,
    SessionStateError,
)
from safesync_async.errors import SafeSyncError

from ..conftest import TableFactory
from ..support.backends import Backend

ACCOUNTS = "CREATE TABLE {table} (id INT PRIMARY KEY, balance INT NOT NULL, note VARCHAR(20))"


async def _seed(engine: AsyncEngine, table: str, rows: int = 3) -> None:
    async with DbSession(engine) as s:
        for i in range(1, rows + 1):
            await s.execute(f"INSERT INTO {table} VALUES (:id, 100, NULL)", {"id": i})


async def _balances(engine: AsyncEngine, table: str) -> dict[int, int]:
    async with DbSession(engine) as s:
        rows = await s.fetch_all(f"SELECT id, balance FROM {table} ORDER BY id")
    return {r["id"]: r["balance"] for r in rows}


async def test_clean_exit_commits(engine: AsyncEngine, make_table: TableFactory) -> None:
    """Writes made in a session that exits normally are visible to later sessions."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    assert await _balances(engine, table) == {1: 100, 2: 100, 3: 100}


async def test_exception_rolls_back(engine: AsyncEngine, make_table: TableFactory) -> None:
    """An exception leaving the block rolls back every write of the session and propagates."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    with pytest.raises(KeyError):
        async with DbSession(engine) as s:
            await s.execute(f"UPDATE {table} SET balance = 0")
            raise KeyError("boom")
    assert set((await _balances(engine, table)).values()) == {100}


async def test_result_helpers(engine: AsyncEngine, make_table: TableFactory) -> None:
    """execute returns matched rows (even unchanged ones), fetch_one/fetch_all/execute_scalar
    return plain dicts and values, parameters are optional and Core statements work."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    async with DbSession(engine) as s:
        assert await s.execute(f"UPDATE {table} SET balance = 100") == 3  # unchanged but matched
        assert await s.fetch_one(f"SELECT * FROM {table} WHERE id = :id", {"id": 2}) == {
            "id": 2,
            "balance": 100,
            "note": None,
        }
        assert await s.fetch_one(f"SELECT * FROM {table} WHERE id = 99") is None
        assert [r["id"] for r in await s.fetch_all(f"SELECT id FROM {table} ORDER BY id")] == [
            1,
            2,
            3,
        ]
        assert await s.execute_scalar(f"SELECT SUM(balance) FROM {table}") == 300
        assert await s.execute_scalar(f"SELECT id FROM {table} WHERE id = 99") is None
        core = sa.table(table, sa.column("id"), sa.column("balance"))
        assert await s.execute(sa.update(core).where(core.c.id == 1).values(balance=50)) == 1
        assert await s.execute_scalar(sa.select(core.c.balance).where(core.c.id == 1)) == 50
        with pytest.raises(MultipleRowsError):
            await s.fetch_one(f"SELECT * FROM {table}")


async def test_error_makes_session_rollback_only(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """After a swallowed database error, further statements and the commit are refused and
    nothing of the session persists."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    with pytest.raises(RollbackOnlyError) as info:
        async with DbSession(engine) as s:
            await s.execute(f"UPDATE {table} SET balance = 0 WHERE id = 1")
            with pytest.raises(DuplicateKeyError):
                await s.execute(f"INSERT INTO {table} VALUES (1, 1, NULL)")
            assert s.is_rollback_only
            with pytest.raises(RollbackOnlyError):
                await s.execute("SELECT 1")
    assert isinstance(info.value.__cause__, DuplicateKeyError)
    assert (await _balances(engine, table))[1] == 100


async def test_swallowed_lock_wait_timeout_cannot_commit(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A lock wait timeout (MySQL 1205, PostgreSQL 55P03) swallowed inside a session: the
    commit is refused and the session's earlier write is not persisted (hazard D4)."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    async with DbSession(engine) as holder:
        await holder.execute(f"UPDATE {table} SET balance = 1 WHERE id = 2")
        with pytest.raises(RollbackOnlyError):
            async with DbSession(engine, lock_timeout=1) as s:
                await s.execute(f"UPDATE {table} SET note = 'half' WHERE id = 1")
                with pytest.raises(LockWaitTimeoutError) as timeout:
                    await s.execute(f"UPDATE {table} SET note = 'half' WHERE id = 2")
                assert backend.code(timeout.value) == backend.codes["lock_wait_timeout"]
                assert isinstance(timeout.value, TimeoutError)
        await holder.execute(f"UPDATE {table} SET balance = 100 WHERE id = 2")
    async with DbSession(engine) as s:
        assert await s.fetch_all(f"SELECT id FROM {table} WHERE note IS NOT NULL") == []


async def test_savepoint_contains_expected_failure(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """An error inside savepoint() undoes only the savepoint's work; the session goes on
    and commits the rest."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)
    async with DbSession(engine) as s:
        await s.execute(f"UPDATE {table} SET balance = 1 WHERE id = 1")
        with pytest.raises(DuplicateKeyError):
            async with s.savepoint():
                await s.execute(f"UPDATE {table} SET balance = 2 WHERE id = 2")
                await s.execute(f"INSERT INTO {table} VALUES (3, 0, NULL)")
        assert not s.is_rollback_only
        with pytest.raises(ValueError, match="app"):
            async with s.savepoint():
                await s.execute(f"UPDATE {table} SET balance = 3 WHERE id = 3")
                raise ValueError("app")
        async with s.savepoint():
            await s.execute(f"UPDATE {table} SET note = 'kept' WHERE id = 3")
    assert await _balances(engine, table) == {1: 1, 2: 100, 3: 100}
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT note FROM {table} WHERE id = 3") == "kept"


async def test_lock_timeout_and_isolation_do_not_leak(backend: Backend) -> None:
    """The lock wait timeout and isolation level of a session are back to the server
    defaults for the next borrower of the same pooled connection (hazard D10): MySQL's
    session variable is restored, PostgreSQL's SET LOCAL ends with the transaction."""
    engine = create_async_engine(backend.url, pool_size=1, max_overflow=0)
    isolation = (
        "SELECT @@SESSION.tx_isolation"
        if backend.is_mysql
        else "SELECT current_setting('default_transaction_isolation')"
    )
    try:
        async with DbSession(engine) as s:
            default_timeout = await s.execute_scalar(backend.lock_timeout_query())
            default_iso = await s.execute_scalar(isolation)
        async with DbSession(engine, lock_timeout=3, isolation_level="READ COMMITTED") as s:
            assert str(await s.execute_scalar(backend.lock_timeout_query())) in ("3", "3s")
            # the isolation level applies to this transaction only
            assert await s.execute_scalar(isolation) == default_iso
        with pytest.raises(RuntimeError):
            async with DbSession(engine, lock_timeout=7) as s:
                raise RuntimeError("body failed")
        async with DbSession(engine) as s:
            assert await s.execute_scalar(backend.lock_timeout_query()) == default_timeout
    finally:
        await engine.dispose()


async def test_isolation_level_applies_to_the_transaction(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """READ COMMITTED sees a concurrent commit within the transaction; REPEATABLE READ
    does not (MariaDB's default is REPEATABLE READ, PostgreSQL's READ COMMITTED)."""
    table = await make_table(ACCOUNTS)
    await _seed(engine, table)

    async def second_read(isolation: str | None) -> int:
        async with DbSession(engine, isolation_level=isolation) as s:
            await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 1")
            async with DbSession(engine) as writer:
                await writer.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
            value = await s.execute_scalar(f"SELECT balance FROM {table} WHERE id = 1")
            assert isinstance(value, int)
            return value

    assert await second_read("REPEATABLE READ") == 100
    assert await second_read("READ COMMITTED") == 102


async def test_misuse_is_reported(engine: AsyncEngine, backend: Backend) -> None:
    """Entering a session twice, nesting it, using it outside its block or from two tasks at
    once, and bad arguments raise clear errors."""
    session = DbSession(engine)
    with pytest.raises(SessionStateError):
        await session.execute("SELECT 1")
    async with session:
        with pytest.raises(SessionStateError, match="already entered"):
            async with session:
                pass
        results = await asyncio.gather(
            session.execute_scalar(backend.sleep_sql(0.2)),
            session.execute_scalar("SELECT 1"),
            return_exceptions=True,
        )
        assert isinstance(results[1], SessionStateError)
    with pytest.raises(SessionStateError):
        await session.execute("SELECT 1")
    with pytest.raises(SessionStateError):
        async with session:
            pass
    for bad in (0, -1, float("nan"), float("inf"), "3"):
        with pytest.raises(ConfigurationError):
            DbSession(engine, lock_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        DbSession(engine, isolation_level="SNAPSHOTTY")
    with pytest.raises(ConfigurationError):
        DbSession("not an engine")  # type: ignore[arg-type]
    async with DbSession(engine) as s:
        with pytest.raises(TypeError):
            await s.execute(42)  # type: ignore[arg-type]


async def test_sql_error_is_translated(engine: AsyncEngine, backend: Backend) -> None:
    """A failing statement raises a DatabaseError carrying the server's code (errno or
    SQLSTATE), chained to the driver error."""
    with pytest.raises(RollbackOnlyError):
        async with DbSession(engine) as s:
            with pytest.raises(DatabaseError) as info:
                await s.execute("SELECT * FROM no_such_table_here")
    assert backend.code(info.value) == backend.codes["no_such_table"]
    assert isinstance(info.value, SafeSyncError)
    assert info.value.__cause__ is not None


async def test_empty_session_returns_connection(engine: AsyncEngine, backend: Backend) -> None:
    """A session with no statement commits nothing and hands its connection back."""
    async with DbSession(engine):
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    report = await backend.pool_report(engine)
    assert report.checked_out == 0
    assert report.open_transactions == 0
