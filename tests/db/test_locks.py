"""RowLock and AdvisoryLock against the real MariaDB: exclusion, NOWAIT / SKIP LOCKED,
release after the transaction on every exit path, and key-to-name mapping."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    ConfigurationError,
    DbSession,
    LockAcquireError,
    LockNotAvailableError,
    LockTimeoutError,
    MultipleRowsError,
    RollbackOnlyError,
    RowLock,
    lock_name,
)

from ..conftest import TableFactory
from ..support.backends import Backend

ORDERS = "CREATE TABLE {table} (id INT PRIMARY KEY, status VARCHAR(20), {q[order]} INT)"


async def _orders(engine: AsyncEngine, make_table: TableFactory) -> str:
    table = await make_table(ORDERS)
    async with DbSession(engine) as s:
        for i in (1, 2, 3):
            await s.execute(f"INSERT INTO {table} VALUES (:i, 'new', :i)", {"i": i})
    return table


async def test_row_lock_returns_row_and_excludes(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """RowLock returns the row as a dict (None if absent) and a second locker waits until the
    first transaction ends."""
    table = await _orders(engine, make_table)
    order: list[str] = []
    async with DbSession(engine) as s:
        row = await RowLock(s, table, {"id": 1}).acquire()
        assert row == {"id": 1, "status": "new", "order": 1}
        assert await RowLock(s, table, {"id": 42}).acquire() is None

        async def second() -> None:
            async with DbSession(engine) as s2:
                await RowLock(s2, table, {"id": 1}).acquire()
                order.append("second")

        task = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        order.append("first")
    await task
    assert order == ["first", "second"]


async def test_row_lock_nowait_and_skip_locked(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """With the row locked elsewhere, NOWAIT raises LockNotAvailableError (MariaDB's 1205 is
    mapped) and SKIP LOCKED returns None, both without waiting."""
    table = await _orders(engine, make_table)
    async with DbSession(engine) as holder:
        await RowLock(holder, table, {"id": 1}).acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LockNotAvailableError):
            async with DbSession(engine) as s:
                async with s.savepoint():
                    await RowLock(s, table, {"id": 1}, nowait=True).acquire()
                assert await RowLock(s, table, {"id": 2}, nowait=True).acquire() is not None
                raise LockNotAvailableError("propagate to check the block ran")
        async with DbSession(engine) as s:
            assert await RowLock(s, table, {"id": 1}, skip_locked=True).acquire() is None
            assert await RowLock(s, table, {"id": 3}, skip_locked=True).acquire() is not None
        assert loop.time() - started < 2


async def test_row_lock_reserved_words_table_object_and_columns(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """Reserved-word columns are quoted, a SQLAlchemy Table is accepted, columns= narrows the
    row and a where clause matching several rows raises MultipleRowsError."""
    table = await _orders(engine, make_table)
    meta = sa.MetaData()
    tbl = sa.Table(table, meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("status"))
    async with DbSession(engine) as s:
        assert await RowLock(s, table, {"order": 2}, columns=["id", "order"]).acquire() == {
            "id": 2,
            "order": 2,
        }
        assert await RowLock(s, tbl, {"id": 3}, columns=["status"]).acquire() == {"status": "new"}
        with pytest.raises(MultipleRowsError):
            await RowLock(s, table, {"status": "new"}).acquire()


async def test_row_lock_rejects_bad_arguments(engine: AsyncEngine, backend: Backend) -> None:
    """Empty where, both NOWAIT and SKIP LOCKED, and options the server lacks are rejected
    before any SQL is sent (every supported PostgreSQL has both options; MariaDB before
    10.6 lacks SKIP LOCKED)."""
    async with DbSession(engine) as s:
        with pytest.raises(ConfigurationError):
            RowLock(s, "orders", {})
        with pytest.raises(ConfigurationError):
            RowLock(s, "orders", {"id": 1}, nowait=True, skip_locked=True)
        if backend.is_mysql:
            old = s.sa_dialect.server_version_info
            try:
                s.sa_dialect.server_version_info = (10, 5, 9)
                with pytest.raises(ConfigurationError, match=r"SKIP LOCKED needs MariaDB 10\.6"):
                    await RowLock(s, "orders", {"id": 1}, skip_locked=True).acquire()
            finally:
                s.sa_dialect.server_version_info = old
        assert not s.is_rollback_only


@pytest.mark.parametrize("exit_path", ["commit", "exception", "cancel"])
async def test_advisory_lock_released_when_session_ends(
    engine: AsyncEngine, backend: Backend, exit_path: str
) -> None:
    """After a session holding an AdvisoryLock ends (commit, exception or cancellation),
    another connection acquires the same key at once (hazard D1/D6)."""
    key = f"user:{exit_path}:{id(engine)}"
    entered = asyncio.Event()

    async def hold() -> None:
        async with DbSession(engine) as s, AdvisoryLock(s, key, timeout=1):
            assert await backend.other_connection_gets(key) is False
            entered.set()
            if exit_path == "exception":
                raise RuntimeError("handler failed")
            if exit_path == "cancel":
                await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await entered.wait()
    if exit_path == "cancel":
        task.cancel()
    expectation: contextlib.AbstractContextManager[object] = (
        contextlib.nullcontext()
        if exit_path == "commit"
        else pytest.raises((RuntimeError, asyncio.CancelledError))
    )
    with expectation:
        await task
    assert await backend.other_connection_gets(key) is True
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_advisory_lock_timeout_and_reentry(engine: AsyncEngine, backend: Backend) -> None:
    """A key held elsewhere times out with LockTimeoutError after about the timeout (on
    PostgreSQL the session is then rollback-only, like after any PostgreSQL error); the
    holder may take it again; timeout=0 tries once without an error; bad timeouts are
    rejected."""
    key = f"report:{id(engine)}"
    async with DbSession(engine) as holder:
        await AdvisoryLock(holder, key).acquire()
        await AdvisoryLock(holder, key).acquire()  # re-entrant on the same connection
        loop = asyncio.get_running_loop()
        async with DbSession(engine) as other:
            with pytest.raises(LockTimeoutError):
                await AdvisoryLock(other, key, timeout=0).acquire()
            assert not other.is_rollback_only
        waited = DbSession(engine)
        with contextlib.suppress(RollbackOnlyError):
            async with waited as other:
                started = loop.time()
                with pytest.raises(LockTimeoutError) as info:
                    await AdvisoryLock(other, key, timeout=0.5).acquire()
                assert 0.4 < loop.time() - started < 3
                assert isinstance(info.value, TimeoutError)
                assert info.value.key == key and info.value.lock_name == lock_name(key)
                assert "not acquired within 0.5 s" in str(info.value)
                assert other.is_rollback_only is (not backend.is_mysql)
    assert await backend.other_connection_gets(key) is True
    async with DbSession(engine) as s:
        for bad in (-1, float("nan"), float("inf"), "1", True):
            with pytest.raises(ConfigurationError):
                AdvisoryLock(s, key, timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            AdvisoryLock(s, 1.5)  # type: ignore[arg-type]


async def test_killed_lock_wait_is_an_error(engine: AsyncEngine, backend: Backend) -> None:
    """A named-lock wait cancelled on the server (MySQL: GET_LOCK returns NULL; PostgreSQL:
    the statement is cancelled, which aborts the transaction) raises LockAcquireError,
    not a timeout."""
    key = f"killed:{id(engine)}"
    async with DbSession(engine) as holder:
        await AdvisoryLock(holder, key).acquire()
        waiter = DbSession(engine)
        with contextlib.suppress(RollbackOnlyError):
            async with waiter:
                waiter_id = await waiter.execute_scalar(backend.connection_id_sql)

                async def kill_soon() -> None:
                    await asyncio.sleep(0.3)
                    async with DbSession(engine) as killer:
                        await killer.execute(backend.cancel_statement_sql(waiter_id))

                killer_task = asyncio.create_task(kill_soon())
                with pytest.raises(LockAcquireError):
                    await AdvisoryLock(waiter, key, timeout=20).acquire()
                await killer_task
                assert waiter.is_rollback_only is (not backend.is_mysql)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), st.integers()))
def test_lock_names_are_short_ascii_and_deterministic(key: str | bytes | int) -> None:
    """Any key maps to the same ASCII name of at most 64 characters every time."""
    name = lock_name(key)
    assert name == lock_name(key)
    assert len(name) <= 64
    assert name.isascii() and "\0" not in name


def test_lock_names_distinguish_tricky_keys() -> None:
    """Case variants, NUL-separated, long shared-prefix and unicode keys get distinct names,
    even compared case-insensitively as MySQL does."""
    keys: list[str | bytes | int] = [
        "User:7",
        "user:7",
        "USER:7",
        "a\0b",
        "a\0c",
        "x" * 300 + "1",
        "x" * 300 + "2",
        "ключ",
        "ΚΛΕΙΔΙ",
        "κλειδι",
        "",
        b"\xff\xfe",
        12345678901234567890,
    ]
    names = [lock_name(k).lower() for k in keys]
    assert len(set(names)) == len(keys)
    assert lock_name(b"user:7") == lock_name("user:7")  # same bytes, same lock


async def test_tricky_keys_exclude_only_themselves(engine: AsyncEngine, backend: Backend) -> None:
    """Holding one key blocks exactly that key: its case and NUL variants stay free."""
    base = f"Acct\0{id(engine)}"
    variants = [base.upper(), base.lower(), base.replace("\0", "\0x")]
    async with DbSession(engine) as s:
        await AdvisoryLock(s, base, timeout=0).acquire()
        assert await backend.other_connection_gets(base) is False
        for variant in variants:
            assert variant != base
            assert await backend.other_connection_gets(variant) is True


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements of every round trip the driver fast path sends (a multi-statement
    round trip is one entry, its statements joined by ' + ')."""
    from safesync_async.db._drivers import AsyncmyExecutor, AsyncpgExecutor

    trips: list[str] = []
    for executor in (AsyncmyExecutor, AsyncpgExecutor):
        execute, rendered = executor.execute, executor.execute_rendered
        commit, rollback = executor.commit, executor.rollback

        def wrap_execute(original: Any) -> Any:
            async def wrapped(self: Any, query: str, args: Any) -> Any:
                trips.append(query.split("(")[0].strip())
                return await original(self, query, args)

            return wrapped

        def wrap_rendered(original: Any) -> Any:
            async def wrapped(self: Any, statements: Any, counts: Any) -> Any:
                trips.append(" + ".join(s.split("(")[0].strip() for s in statements))
                return await original(self, statements, counts)

            return wrapped

        def wrap_end(original: Any, name: str) -> Any:
            async def wrapped(self: Any) -> Any:
                trips.append(name)
                return await original(self)

            return wrapped

        monkeypatch.setattr(executor, "execute", wrap_execute(execute))
        monkeypatch.setattr(executor, "execute_rendered", wrap_rendered(rendered))
        monkeypatch.setattr(executor, "commit", wrap_end(commit, "COMMIT"))
        monkeypatch.setattr(executor, "rollback", wrap_end(rollback, "ROLLBACK"))
    return trips


async def test_advisory_lock_release_shares_the_commit_round_trip(
    engine: AsyncEngine, backend: Backend, round_trips: list[str]
) -> None:
    """A session that takes a named lock and commits sends the lock request, its own
    statements and one round trip for COMMIT and the release (MySQL/MariaDB: COMMIT +
    RELEASE_ALL_LOCKS together; PostgreSQL releases with the transaction): no separate
    release or ROLLBACK round trip, and the lock is free afterwards."""
    key = f"one-trip-{uuid.uuid4().hex}"
    async with DbSession(engine) as s:
        await AdvisoryLock(s, key, timeout=1).acquire()
        await s.execute("SELECT 1")
    if backend.is_mysql:
        assert round_trips == ["SELECT GET_LOCK", "SELECT 1", "COMMIT + SELECT RELEASE_ALL_LOCKS"]
    else:  # the bounded wait, in one statement
        assert round_trips == ["SELECT set_config", "SELECT 1", "COMMIT"]
    assert await backend.other_connection_gets(key)
    round_trips.clear()
    with pytest.raises(LookupError):
        async with DbSession(engine) as s:
            await AdvisoryLock(s, key, timeout=1).acquire()
            raise LookupError
    if backend.is_mysql:
        assert round_trips == ["SELECT GET_LOCK", "ROLLBACK + SELECT RELEASE_ALL_LOCKS"]
    assert await backend.other_connection_gets(key)
