"""Regression tests for the paths where a session used to lose writes, merge keys or
misclassify failures silently, on MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    ConfigurationError,
    DatabaseDisconnectError,
    DatabaseUnavailableError,
    DbSession,
    DuplicateKeyError,
    Inbox,
    QueueMessage,
    RollbackOnlyError,
    TransactionOutcome,
    create_engine,
    lock_name,
)
from safesync_async._shield import run_to_completion

from ..conftest import TableFactory
from ..support.backends import Backend

ROWS = "CREATE TABLE {table} (id INT PRIMARY KEY, v INT NOT NULL)"
EXAMPLES_SQL = Path(__file__).resolve().parents[2] / "examples" / "sql"


async def _ids(engine: AsyncEngine, table: str) -> set[int]:
    async with DbSession(engine, registry=None) as s:
        return {row["id"] for row in await s.fetch_all(f"SELECT id FROM {table}")}


async def test_caught_statement_timeout_refuses_the_commit(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A block that catches the timeout of one of its statements and exits normally raises
    RollbackOnlyError naming the interruption, instead of returning with its writes gone."""
    table = await make_table(ROWS)
    session = DbSession(engine)
    with pytest.raises(RollbackOnlyError, match="interrupted") as raised:
        async with session as s:
            await s.execute(f"INSERT INTO {table} VALUES (1, 1)")
            try:
                async with asyncio.timeout(0.05):
                    await s.execute(backend.sleep_sql(2))
            except TimeoutError:
                pass
    assert isinstance(raised.value.__cause__, asyncio.CancelledError)
    assert session.outcome is TransactionOutcome.ROLLED_BACK
    assert await _ids(engine, table) == set()


async def test_caught_disconnect_refuses_the_commit(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """A block whose connection is killed by the server, and which catches the library's
    disconnect error and exits normally, raises instead of returning as if committed."""
    table = await make_table(ROWS)
    probe = backend.probe()
    try:
        with pytest.raises(RollbackOnlyError) as raised:
            async with DbSession(engine) as s:
                await s.execute(f"INSERT INTO {table} VALUES (1, 1)")
                own_id = int(await s.execute_scalar(backend.connection_id_sql))
                async with probe.connect() as killer:
                    await killer.exec_driver_sql(backend.kill_sql(own_id))
                try:
                    await s.execute(f"INSERT INTO {table} VALUES (2, 2)")
                except DatabaseDisconnectError:
                    pass
    finally:
        await probe.dispose()
    assert isinstance(raised.value.__cause__, DatabaseDisconnectError)
    assert await _ids(engine, table) == set()


async def test_caught_statement_error_refuses_the_commit(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """A swallowed failing statement (outside a savepoint) still refuses the commit, and
    the refusal carries the original error as its cause."""
    table = await make_table(ROWS)
    with pytest.raises(RollbackOnlyError) as raised:
        async with DbSession(engine) as s:
            await s.execute(f"INSERT INTO {table} VALUES (1, 1)")
            try:
                await s.execute(f"INSERT INTO {table} VALUES (1, 2)")
            except DuplicateKeyError:
                pass
    assert isinstance(raised.value.__cause__, DuplicateKeyError)
    assert await _ids(engine, table) == set()


@pytest.mark.parametrize(
    "keys",
    [
        [b"Order-1", b"order-1", b"k1", b"k1 ", b"cafe", "café".encode()],
        [b"\xff", b"\xfe", b"\xff\xfe", "ǅ".encode(), "Ǆ".encode(), b"a" * 300, b"a" * 301],
    ],
    ids=["case-pad-accent", "non-utf8-long"],
)
async def test_inbox_keys_compare_byte_exactly(
    engine: AsyncEngine, unique_name: Any, keys: list[bytes]
) -> None:
    """Distinct idempotency keys are distinct messages: each is recorded once (even when
    they differ only in case, trailing spaces, accents, or are not UTF-8 at all), and a
    repeat of each is recognised as a duplicate."""
    inbox = Inbox(unique_name("inbox"))
    await inbox.create_table(engine)
    try:
        await inbox.check_table(engine)
        for attempt in (1, 2):
            for index, key in enumerate(keys):
                message: QueueMessage[None] = QueueMessage(
                    id=f"1-{index}", stream="s", group="g", payload=None,
                    fields={b"data": b"null", b"idempotency_key": key},
                )  # fmt: skip
                async with DbSession(engine, registry=None) as s:
                    recorded = await inbox.record(s, "g", message)
                assert recorded is (attempt == 1), (attempt, key)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(inbox.table.drop)


async def test_inbox_empty_key_falls_back_to_the_entry_id(
    engine: AsyncEngine, unique_name: Any
) -> None:
    """An entry whose idempotency key is empty is keyed by its entry id: two such entries
    are two messages, not one."""
    inbox = Inbox(unique_name("inbox"))
    await inbox.create_table(engine)
    try:
        for entry_id in ("1-1", "1-2"):
            message: QueueMessage[None] = QueueMessage(
                id=entry_id, stream="s", group="g", payload=None,
                fields={b"data": b"null", b"idempotency_key": b""},
            )  # fmt: skip
            assert message.idempotency_key is None
            async with DbSession(engine, registry=None) as s:
                assert await inbox.record(s, "g", message)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(inbox.table.drop)


async def test_inbox_table_with_text_keys_is_refused(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """An inbox table whose key columns are text (the 0.1 layout) is refused by
    check_table with the migration to do, instead of silently merging keys."""
    table = await make_table(
        "CREATE TABLE {table} (stream VARCHAR(190) NOT NULL, consumer_group VARCHAR(190) "
        "NOT NULL, message_key VARCHAR(190) NOT NULL, message_id VARCHAR(64) NOT NULL, "
        "processed_at TIMESTAMP NOT NULL, PRIMARY KEY (stream, consumer_group, message_key))"
    )
    with pytest.raises(ConfigurationError, match="non-binary key columns"):
        await Inbox(table).check_table(engine)
    with pytest.raises(ConfigurationError, match="does not exist"):
        await Inbox(table + "_missing").check_table(engine)


async def test_read_only_transaction_is_an_outage(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """A write refused because the transaction is read-only (what a failover or a
    read-only server answers) raises DatabaseUnavailableError, not a plain DatabaseError."""
    table = await make_table(ROWS)
    with pytest.raises(DatabaseUnavailableError) as raised:
        async with DbSession(engine, isolation_level="READ COMMITTED") as s:
            await s.execute("SET TRANSACTION READ ONLY")
            await s.execute(f"INSERT INTO {table} VALUES (1, 1)")
    assert raised.value.errno == 1792 or raised.value.sqlstate == "25006"


async def test_connect_errors_name_the_phase_server_and_url(backend: Backend) -> None:
    """Failing to connect says so, names the server and the URL without its password, says
    what to check, and is an outage (not the statement's fault)."""
    url = backend.url.replace("/test", "/safesync_no_such_database")
    user_url = (
        url.replace("://", "://nobody:s3cret-pw@", 1).replace("root@", "").replace("postgres@", "")
    )
    for bad_url, hint in ((url, "does not exist"), (user_url, "")):
        engine = create_engine(bad_url, ping_after=None)
        try:
            with pytest.raises(DatabaseUnavailableError) as raised:
                async with DbSession(engine, registry=None):
                    pass
        finally:
            await engine.dispose()
        message = str(raised.value)
        assert message.startswith("could not connect to"), message
        assert "127.0.0.1" in message and "s3cret-pw" not in message
        assert hint in message


async def test_unreachable_server_is_a_disconnect() -> None:
    """A server that refuses connections gives DatabaseDisconnectError asking whether the
    server runs there."""
    engine = create_engine("mysql+asyncmy://root:pw@127.0.0.1:1/test", ping_after=None)
    try:
        with pytest.raises(DatabaseDisconnectError, match="could not connect to MySQL at"):
            async with DbSession(engine, registry=None):
                pass
    finally:
        await engine.dispose()


async def test_outcome_is_known_after_a_cancellation_storm(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """Sessions cancelled at random moments (many during their COMMIT) report an outcome
    that matches the database: every committed one is visible, no other one is."""
    table = await make_table(ROWS)
    rng = random.Random(7)
    sessions: dict[int, DbSession] = {}

    async def transfer(row: int) -> None:
        session = sessions[row] = DbSession(engine, registry=None)
        async with session as s:
            await s.execute(f"INSERT INTO {table} VALUES (:id, 1)", {"id": row})

    loop = asyncio.get_running_loop()
    for row in range(-20, 0):  # warm the pool up
        await transfer(row)
    window = 0.005  # cancellations land at random within this; adapted to hit the COMMITs
    tasks: dict[int, asyncio.Task[None]] = {}
    for wave in range(50):  # waves of 8 sessions
        rows = range(wave * 8, wave * 8 + 8)
        batch = [asyncio.create_task(transfer(row)) for row in rows]
        for task in batch:
            loop.call_later(rng.uniform(0, window), task.cancel)
        await asyncio.gather(*batch, return_exceptions=True)
        tasks.update(zip(rows, batch, strict=True))
        done = sum(sessions[row].outcome is TransactionOutcome.COMMITTED for row in rows)
        window *= 1.5 if done < 3 else 1 / 1.5 if done > 5 else 1
    sessions = {row: session for row, session in sessions.items() if row >= 0}
    committed = {r for r, s in sessions.items() if s.outcome is TransactionOutcome.COMMITTED}
    assert all(s.outcome is not TransactionOutcome.OPEN for s in sessions.values())
    assert await _ids(engine, table) - set(range(-20, 0)) == committed
    # The case that matters happened: cancelled tasks whose transaction had committed.
    cancelled_but_committed = [r for r in committed if tasks[r].cancelled()]
    print(f"{len(committed)} committed, {len(cancelled_but_committed)} of them cancelled")
    assert cancelled_but_committed


async def test_cleanup_failure_does_not_swallow_the_cancellation() -> None:
    """A task cancelled while its cleanup runs stops even if the cleanup then fails: the
    cancellation is re-raised with the cleanup's error as its cause, so the task does not
    go on (e.g. into another retry attempt)."""
    cleanup_started = asyncio.Event()
    went_on = False

    async def failing_cleanup() -> None:
        cleanup_started.set()
        await asyncio.sleep(0.05)
        raise ValueError("cleanup failed")

    async def worker() -> None:
        nonlocal went_on
        try:
            await run_to_completion(failing_cleanup())
        except ValueError:
            await asyncio.sleep(0.01)
            went_on = True

    task = asyncio.create_task(worker())
    await cleanup_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert isinstance(raised.value.__cause__, ValueError)
    assert not went_on


async def test_kill_of_a_stuck_session_does_not_need_a_pool_connection(
    backend: Backend,
) -> None:
    """With the pool exhausted and another task waiting for its connection, a timed-out
    statement is still killed on the server at once (from a connection outside the pool):
    the server is not taken for unreachable and the statement does not keep running."""
    engine = create_engine(backend.url, pool_size=1, max_overflow=0, pool_timeout=30)
    waiter_in = asyncio.Event()

    async def waiter() -> None:  # takes the pool's only connection as soon as it is free
        async with DbSession(engine, registry=None) as s:
            waiter_in.set()
            await s.execute("SELECT 1")
            await asyncio.sleep(3)

    try:
        session = DbSession(engine, registry=None)
        with pytest.raises(RollbackOnlyError):
            async with session as s:
                waiting = asyncio.create_task(waiter())
                await asyncio.sleep(0.05)
                try:
                    async with asyncio.timeout(0.2):
                        await s.execute(backend.sleep_sql(30))
                except TimeoutError:
                    pass
        await waiter_in.wait()
        assert not session.server_unreachable
        probe = backend.probe()
        try:
            async with probe.connect() as conn:
                sleeping = await conn.exec_driver_sql(_running_sleeps_sql(backend))
                assert sleeping.scalar() == 0
        finally:
            await probe.dispose()
        await waiting
    finally:
        await engine.dispose()


def _running_sleeps_sql(backend: Backend) -> str:
    if backend.is_mysql:
        return (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE INFO LIKE 'SELECT SLEEP(30%%'"
        )
    return (
        "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30%%' "
        "AND state = 'active' AND pid <> pg_backend_pid()"
    )


async def test_failed_savepoint_drops_its_deferred_writes(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """Writes deferred inside a savepoint that fails are dropped, not sent: the body's own
    exception propagates (not a failure of those writes) and the session commits what was
    done outside the savepoint."""
    table = await make_table(ROWS)
    async with DbSession(engine) as s:
        await s.execute(f"INSERT INTO {table} VALUES (1, 1)")
        with pytest.raises(LookupError):
            async with s.savepoint():
                s.defer(f"INSERT INTO {table} VALUES (1, 9)")  # would be a duplicate key
                s.defer(f"INSERT INTO {table} VALUES (2, 2)")
                raise LookupError("expected")
        s.defer(f"INSERT INTO {table} VALUES (3, 3)")
    assert await _ids(engine, table) == {1, 3}


@pytest.mark.parametrize(
    "sql",
    [
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET STATEMENT sql_mode = 'NO_BACKSLASH_ESCAPES' FOR UPDATE t SET v = 1",
        "UPDATE t SET v = 1; SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "UPDATE t SET v = 1 /*!; SET sql_mode = 'NO_BACKSLASH_ESCAPES' */",
        "UPDATE t SET v = 'a\\'; SET @x = 1; -- '",
        "SELECT 1",
        "CALL p()",
        "   ",
    ],
)
async def test_defer_takes_only_one_data_changing_statement(engine: AsyncEngine, sql: str) -> None:
    """defer() refuses statements that are not one INSERT/UPDATE/DELETE/REPLACE/MERGE, so a
    deferred statement can never change how the server parses the parameters of the
    deferred statements after it; the session stays usable."""
    async with DbSession(engine) as s:
        with pytest.raises(ConfigurationError, match="defer"):
            s.defer(sql)
        assert await s.execute_scalar("SELECT 1") == 1


async def test_defer_accepts_ordinary_writes(engine: AsyncEngine, make_table: TableFactory) -> None:
    """Ordinary writes with comments, quoted semicolons and a trailing semicolon defer."""
    table = await make_table(ROWS)
    async with DbSession(engine) as s:
        s.defer(f"-- a comment\nINSERT INTO {table} VALUES (1, 1)")
        s.defer(f"/* c */ insert into {table} (id, v) values (:id, :v);", {"id": 2, "v": 2})
        s.defer(f"UPDATE {table} SET v = 3 WHERE id = 2 AND 'x;y' <> ''")
    assert await _ids(engine, table) == {1, 2}


def test_huge_integer_lock_key_is_a_configuration_error() -> None:
    """An integer lock key too large to turn into text raises the library's
    ConfigurationError, not a plain ValueError."""
    with pytest.raises(ConfigurationError, match="too large"):
        lock_name(10**5000)


async def test_advisory_lock_is_released_after_a_refused_commit(
    engine: AsyncEngine, backend: Backend
) -> None:
    """A session that took a named lock and then had a statement interrupted releases the
    lock (the connection is discarded and its server session ended)."""
    key = f"refused-{random.random()}"
    with pytest.raises(RollbackOnlyError):
        async with DbSession(engine) as s:
            await AdvisoryLock(s, key).acquire()
            try:
                async with asyncio.timeout(0.05):
                    await s.execute(backend.sleep_sql(2))
            except TimeoutError:
                pass
    for _ in range(50):
        if await backend.other_connection_gets(key):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the named lock is still held")


async def test_inbox_migration_from_text_keys_keeps_old_rows(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """The documented migration (examples/sql/inbox_migrate_0_1.*.sql) turns a 0.1-layout
    inbox into one check_table accepts, and a row recorded before it still marks its
    message as processed."""
    table = await make_table(
        "CREATE TABLE {table} (stream VARCHAR(190) NOT NULL, consumer_group VARCHAR(190) "
        "NOT NULL, message_key VARCHAR(190) NOT NULL, message_id VARCHAR(64) NOT NULL, "
        "processed_at TIMESTAMP NOT NULL, PRIMARY KEY (stream, consumer_group, message_key))"
    )
    async with DbSession(engine, registry=None) as s:
        await s.execute(
            f"INSERT INTO {table} VALUES ('orders', 'g', 'key:Order-1', '1-0', CURRENT_TIMESTAMP)"
        )
    dialect = "mysql" if backend.is_mysql else "postgresql"
    migration = (EXAMPLES_SQL / f"inbox_migrate_0_1.{dialect}.sql").read_text()
    async with DbSession(engine, registry=None) as s:
        await s.execute(migration.replace("safesync_inbox", table).rstrip().rstrip(";"))
    inbox = Inbox(table)
    await inbox.check_table(engine)
    message: QueueMessage[None] = QueueMessage(
        id="2-0", stream="orders", group="g", payload=None,
        fields={b"data": b"null", b"idempotency_key": b"Order-1"},
    )  # fmt: skip
    async with DbSession(engine, registry=None) as s:
        assert await inbox.record(s, "g", message) is False  # processed before the migration
