"""occ_update, retry_transaction and insert_idempotent against the real MariaDB, plus
identifier validation and bind-name collisions (hazards D2, D3, D7, D11, D12)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConfigurationError,
    DatabaseError,
    DbSession,
    DeadlockError,
    DuplicateKeyError,
    InvalidIdentifierError,
    RetryExhaustedError,
    RollbackOnlyError,
    RowLock,
    VersionConflictError,
    insert_idempotent,
    occ_update,
    retry_transaction,
)
from safesync_async.db.identifiers import validate_identifier

from ..conftest import TableFactory
from ..support.backends import Backend

ACCOUNTS = (
    "CREATE TABLE {table} (id INT PRIMARY KEY, balance INT NOT NULL, "
    "version INT NOT NULL DEFAULT 0, id_value INT, ss_id_ INT, {q[select]} INT)"
)


async def _accounts(engine: AsyncEngine, make_table: TableFactory) -> str:
    table = await make_table(ACCOUNTS)
    async with DbSession(engine) as s:
        await s.execute(
            f"INSERT INTO {table} (id, balance, id_value, ss_id_) VALUES "
            "(1, 100, 2, 2), (2, 100, 1, 1)"
        )
    return table


async def test_occ_update_matches_version(engine: AsyncEngine, make_table: TableFactory) -> None:
    """occ_update changes the row and bumps the version when the version matches, returns 0
    (or raises when asked) when it does not, and counts an unchanged row as matched."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as s:
        assert await occ_update(s, table, "id", 1, "version", 0, {"balance": 100}) == 1
        assert await occ_update(s, table, "id", 1, "version", 0, {"balance": 5}) == 0
        with pytest.raises(VersionConflictError):
            await occ_update(
                s, table, "id", 1, "version", 0, {"balance": 5}, raise_on_conflict=True
            )
        assert await occ_update(s, table, "id", 1, "version", 1, {"balance": 90}) == 1
        row = await s.fetch_one(f"SELECT balance, version FROM {table} WHERE id = 1")
    assert row == {"balance": 90, "version": 2}


async def test_columns_named_like_parameters_update_the_right_row(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """Columns named id_value, ss_id_ (our own bind name) and the reserved word select are
    set without touching the WHERE clause: only row 1 changes (hazard D2)."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as s:
        updates = {"id_value": 77, "ss_id_": 78, "select": 79, "balance": sa.column("balance") + 1}
        assert await occ_update(s, table, "id", 1, "version", 0, updates) == 1
        rows = await s.fetch_all(
            f"SELECT id, balance, id_value, ss_id_, {backend.q('select')} FROM {table} ORDER BY id"
        )
    assert rows == [
        {"id": 1, "balance": 101, "id_value": 77, "ss_id_": 78, "select": 79},
        {"id": 2, "balance": 100, "id_value": 1, "ss_id_": 1, "select": None},
    ]


async def test_occ_update_rejects_bad_arguments(engine: AsyncEngine) -> None:
    """Empty updates, setting id/version directly and non-int versions are refused."""
    async with DbSession(engine) as s:
        with pytest.raises(ConfigurationError):
            await occ_update(s, "t", "id", 1, "version", 0, {})
        with pytest.raises(ConfigurationError):
            await occ_update(s, "t", "id", 1, "version", 0, {"version": 3})
        with pytest.raises(ConfigurationError):
            await occ_update(s, "t", "id", 1, "version", "0", {"a": 1})  # type: ignore[arg-type]


def _valid(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and name.isascii()
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c in "_$" for c in name)
    )


_BAD_NAME = st.text(min_size=0, max_size=80).filter(
    lambda n: not _valid(n) and not (n.count(".") == 1 and all(map(_valid, n.split("."))))
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=_BAD_NAME, where=st.sampled_from(["table", "column", "update", "version"]))
async def test_malformed_identifiers_rejected_before_any_sql(
    engine: AsyncEngine, bad: str, where: str
) -> None:
    """Any malformed table or column name (newlines, quotes, spaces, unicode, too long...)
    raises InvalidIdentifierError and no statement reaches the server (hazard D3)."""
    sent: list[str] = []

    def record(*args: object) -> None:
        sent.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with DbSession(engine, registry=None) as s:
            with pytest.raises(InvalidIdentifierError):
                if where == "table":
                    await RowLock(s, bad, {"id": 1}).acquire()
                elif where == "column":
                    await RowLock(s, "accounts", {bad: 1}).acquire()
                elif where == "update":
                    await occ_update(s, "accounts", "id", 1, "version", 0, {bad: 1})
                else:
                    await occ_update(s, "accounts", "id", 1, bad, 0, {"a": 1})
            assert not s.is_rollback_only
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert sent == []


def test_identifier_validation_is_a_full_match() -> None:
    """A trailing newline, a dot or a backtick is not accepted; reserved words and $ are."""
    for bad in ("acct\n", "acct;", "a`b", "a.b", "1abc", "", "x" * 65, "ÿ"):
        with pytest.raises(InvalidIdentifierError):
            validate_identifier(bad, "table")
    for good in ("order", "select", "_x", "a$b", "x" * 64):
        assert validate_identifier(good, "table") == good


async def test_insert_idempotent(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """insert_idempotent returns True then False for the same key without making the session
    rollback-only, keeps strict-mode errors as errors (no INSERT IGNORE coercion), and with
    key= treats a collision on another unique key as an error (hazard D11)."""
    table = await make_table(
        "CREATE TABLE {table} (id INT PRIMARY KEY, ref VARCHAR(5) NOT NULL, "
        "CONSTRAINT uq_ref UNIQUE (ref))"
    )
    sql = f"INSERT INTO {table} (id, ref) VALUES (:id, :ref)"
    async with DbSession(engine) as s:
        assert await insert_idempotent(s, sql, {"id": 1, "ref": "a"}) is True
        assert await insert_idempotent(s, sql, {"id": 1, "ref": "b"}) is False
        assert await insert_idempotent(s, sql, {"id": 2, "ref": "a"}, key="uq_ref") is False
        assert not s.is_rollback_only
    with pytest.raises(RollbackOnlyError):
        async with DbSession(engine) as s:
            await insert_idempotent(s, sql, {"id": 5, "ref": "e"})
            with pytest.raises(DuplicateKeyError) as info:
                await insert_idempotent(s, sql, {"id": 1, "ref": "c"}, key="uq_ref")
            assert info.value.constraint == ("PRIMARY" if backend.is_mysql else f"{table}_pkey")
            assert s.is_rollback_only
    async with DbSession(engine) as s:
        assert await s.fetch_all(f"SELECT id, ref FROM {table}") == [{"id": 1, "ref": "a"}]
    with pytest.raises(DatabaseError) as too_long:
        async with DbSession(engine) as s:
            await insert_idempotent(s, sql, {"id": 3, "ref": "toolongvalue"})
    assert backend.code(too_long.value) == backend.codes["too_long"]  # never truncated


async def test_insert_idempotent_under_concurrency(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """32 tasks inserting the same 10 keys: each key is inserted exactly once and every other
    attempt reports a duplicate."""
    table = await make_table("CREATE TABLE {table} (k INT PRIMARY KEY, who INT)")

    async def worker(n: int) -> int:
        inserted = 0
        for key in range(10):
            async with DbSession(engine) as s:
                sql = f"INSERT INTO {table} VALUES (:k, :w)"
                inserted += await insert_idempotent(s, sql, {"k": key, "w": n})
        return inserted

    results = await asyncio.gather(*(worker(n) for n in range(32)))
    assert sum(results) == 10
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT COUNT(*) FROM {table}") == 10


async def test_retry_transaction_retries_only_what_it_should(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """retry_transaction reruns version conflicts and retryable errors in fresh sessions, gives
    up with RetryExhaustedError after max_attempts, and lets other errors through at once."""
    table = await _accounts(engine, make_table)
    attempts: list[int] = []

    async def flaky(s: DbSession) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise VersionConflictError("first attempt loses")
        if len(attempts) == 2:
            raise DeadlockError("second attempt is a deadlock victim", errno=1213)
        await s.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
        return "ok"

    assert await retry_transaction(engine, flaky, base_delay=0.001) == "ok"
    assert len(attempts) == 3

    async def always_conflicts(s: DbSession) -> None:
        raise VersionConflictError("never")

    with pytest.raises(RetryExhaustedError) as info:
        await retry_transaction(engine, always_conflicts, max_attempts=4, base_delay=0.001)
    assert info.value.attempts == 4
    assert isinstance(info.value.__cause__, VersionConflictError)

    calls = 0

    async def fatal(s: DbSession) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retryable")

    with pytest.raises(KeyError):
        await retry_transaction(engine, fatal)
    assert calls == 1
    with pytest.raises(ConfigurationError):
        await retry_transaction(engine, fatal, max_attempts=0)


async def test_retry_transaction_respects_elapsed_cap(engine: AsyncEngine) -> None:
    """With a small max_elapsed, retrying stops before the cap is exceeded."""

    async def always_conflicts(s: DbSession) -> None:
        raise VersionConflictError("never")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryExhaustedError):
        await retry_transaction(
            engine, always_conflicts, max_attempts=1000, max_elapsed=0.3, base_delay=0.05
        )
    assert loop.time() - started < 1.0
