"""Deferred writes: DbSession.defer() and flush() against the real servers. On MariaDB
consecutive deferred SQL texts share one round trip; on PostgreSQL they run one by one;
the semantics are the same on both."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    CommitOutcomeUnknownError,
    DatabaseError,
    DbSession,
    DuplicateKeyError,
    RollbackOnlyError,
    SessionStateError,
    TransactionOutcome,
    retry_transaction,
)
from safesync_async.db import _deferred as deferred_module
from safesync_async.db._drivers import AsyncmyExecutor

from ..conftest import TableFactory
from ..support.backends import MARIADB, Backend
from ..support.proxy import Action, proxied_engine

# Deferred writes travel with the COMMIT on MySQL/MariaDB only.
ONLY_MARIADB = pytest.mark.parametrize("backend", [MARIADB], ids=["mariadb"])
ACCOUNTS = "CREATE TABLE {table} (id INT PRIMARY KEY, balance INT NOT NULL)"


async def _accounts(engine: AsyncEngine, make_table: TableFactory, count: int = 3) -> str:
    table = await make_table(ACCOUNTS)
    async with DbSession(engine) as s:
        for i in range(1, count + 1):
            await s.execute(f"INSERT INTO {table} VALUES (:id, 100)", {"id": i})
    return table


async def _balances(engine: AsyncEngine, table: str) -> dict[int, int]:
    async with DbSession(engine) as s:
        rows = await s.fetch_all(f"SELECT id, balance FROM {table} ORDER BY id")
    return {r["id"]: r["balance"] for r in rows}


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(statements, with COMMIT) of each multi-statement round trip the MariaDB executor
    sends, and a separate COMMIT as (0, True)."""
    trips: list[tuple[int, bool]] = []
    original = AsyncmyExecutor.execute_rendered
    original_commit = AsyncmyExecutor.commit

    async def counting(self: AsyncmyExecutor, statements: Sequence[str], counts: list[int]) -> None:
        with_commit = bool(statements) and statements[-1] == "COMMIT"
        trips.append((len(statements) - with_commit, with_commit))
        await original(self, statements, counts)

    async def commit(self: AsyncmyExecutor) -> None:
        trips.append((0, True))
        await original_commit(self)

    monkeypatch.setattr(AsyncmyExecutor, "execute_rendered", counting)
    monkeypatch.setattr(AsyncmyExecutor, "commit", commit)
    return trips


async def test_deferred_writes_commit_together(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    round_trips: list[tuple[int, bool]],
) -> None:
    """Fifty-one deferred UPDATEs are applied at the commit, in order; on MariaDB they
    and the COMMIT take one round trip."""
    table = await _accounts(engine, make_table)
    round_trips.clear()
    async with DbSession(engine) as s:
        for i in range(50):
            s.defer(f"UPDATE {table} SET balance = balance + :d WHERE id = :id", {"d": i, "id": 1})
        s.defer(f"UPDATE {table} SET balance = balance * 2 WHERE id = :id", {"id": 2})
    assert round_trips == ([(51, True)] if backend.name == "mariadb" else [])
    assert await _balances(engine, table) == {1: 100 + sum(range(50)), 2: 200, 3: 100}


async def test_round_trips_are_bounded_and_keep_the_order(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    round_trips: list[tuple[int, bool]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQL text is grouped up to the size limit of a round trip; a SQLAlchemy construct
    runs on its own between the groups, in its place in the order (and, SQLAlchemy then
    holding the transaction, the COMMIT goes through SQLAlchemy, on its own)."""
    table = await _accounts(engine, make_table)
    monkeypatch.setattr(deferred_module, "_ROUND_TRIP_BYTES", 100)
    round_trips.clear()
    update = f"UPDATE {table} SET balance = balance * 2 + :d WHERE id = 1"
    async with DbSession(engine) as s:
        for d in range(5):
            s.defer(update, {"d": d})
        s.defer(sa.text(f"UPDATE {table} SET balance = balance * 10 WHERE id = 1"))
        s.defer(update, {"d": 5})
    expected = 100
    for d in range(5):
        expected = expected * 2 + d
    expected = (expected * 10) * 2 + 5
    trips = list(round_trips)
    assert (await _balances(engine, table))[1] == expected
    if backend.name == "mariadb":
        length = len(f"UPDATE {table} SET balance = balance * 2 + 0 WHERE id = 1")
        per_trip = -(-100 // length)  # a group closes once it reaches the limit
        sizes = [size for size, _ in trips]
        assert sum(sizes) == 6 and max(sizes) == per_trip and len(sizes) > 2
        assert not any(with_commit for _, with_commit in trips)


async def test_next_statement_sees_deferred_writes(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """A read after deferred writes runs after them, in the same transaction; flush()
    returns the rows each statement matched."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as s:
        s.defer(f"UPDATE {table} SET balance = 7 WHERE id = :id", {"id": 1})
        row = await s.fetch_one(f"SELECT balance FROM {table} WHERE id = 1")
        assert row == {"balance": 7}
        s.defer(f"UPDATE {table} SET balance = 8 WHERE id > :id", {"id": 1})
        s.defer(f"UPDATE {table} SET balance = 9 WHERE id = :id", {"id": 99})
        s.defer(sa.text(f"UPDATE {table} SET balance = 10 WHERE id = 3"))
        assert await s.flush() == [2, 0, 1]
        assert await s.flush() == []
    assert await _balances(engine, table) == {1: 7, 2: 8, 3: 10}


async def test_failing_deferred_statement_rolls_everything_back(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """The third of five deferred statements violates the primary key: the error comes out
    of the block's exit with the statement named, nothing of the session is committed,
    and the statements after it never run."""
    table = await _accounts(engine, make_table)
    with pytest.raises(DuplicateKeyError) as caught:
        async with DbSession(engine) as s:
            s.defer(f"UPDATE {table} SET balance = 0 WHERE id = 1")
            s.defer(f"INSERT INTO {table} VALUES (:id, 1)", {"id": 10})
            s.defer(f"INSERT INTO {table} VALUES (:id, 1)", {"id": 2})
            s.defer(f"INSERT INTO {table} VALUES (:id, 1)", {"id": 11})
            s.defer(f"UPDATE {table} SET balance = 0 WHERE id = 3")
    assert any("deferred statement 3 of 5" in note for note in caught.value.__notes__)
    assert await _balances(engine, table) == {1: 100, 2: 100, 3: 100}


async def test_failure_flushed_by_a_statement_makes_the_session_rollback_only(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """A deferred failure surfaces from the statement that flushed it; the session then
    refuses further work like after any failed statement."""
    table = await _accounts(engine, make_table)
    with pytest.raises(RollbackOnlyError):
        async with DbSession(engine) as s:
            s.defer(f"INSERT INTO {table} VALUES (1, 1)")
            with pytest.raises(DuplicateKeyError):
                await s.execute(f"UPDATE {table} SET balance = 0 WHERE id = 2")
            assert s.is_rollback_only
            with pytest.raises(RollbackOnlyError):
                s.defer(f"UPDATE {table} SET balance = 0 WHERE id = 3")
    assert await _balances(engine, table) == {1: 100, 2: 100, 3: 100}


async def test_deferred_failure_inside_a_savepoint_is_contained(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """Writes deferred before a savepoint are kept; a deferred write failing inside it
    undoes only the savepoint's work, and the session carries on."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as s:
        s.defer(f"UPDATE {table} SET balance = 1 WHERE id = 1")
        with pytest.raises(DuplicateKeyError):
            async with s.savepoint():
                s.defer(f"UPDATE {table} SET balance = 2 WHERE id = 2")
                s.defer(f"INSERT INTO {table} VALUES (3, 0)")
        assert not s.is_rollback_only
        s.defer(f"UPDATE {table} SET balance = 3 WHERE id = 3")
    assert await _balances(engine, table) == {1: 1, 2: 100, 3: 3}


async def test_deferred_writes_are_dropped_when_the_body_fails(
    engine: AsyncEngine, make_table: TableFactory, round_trips: list[tuple[int, bool]]
) -> None:
    """An exception in the block discards what was deferred without sending it."""
    table = await _accounts(engine, make_table)
    round_trips.clear()
    with pytest.raises(KeyError):
        async with DbSession(engine) as s:
            s.defer(f"UPDATE {table} SET balance = 0")
            raise KeyError("boom")
    assert round_trips == []
    assert set((await _balances(engine, table)).values()) == {100}


async def test_statement_text_edge_cases(engine: AsyncEngine, make_table: TableFactory) -> None:
    """Trailing semicolons, trailing comments and parameters holding separators and quotes
    cannot merge or split statements sharing a round trip."""
    table = await make_table(
        "CREATE TABLE {table} (id INT PRIMARY KEY, note VARCHAR(100) NOT NULL)"
    )
    tricky = "x'; DELETE FROM t; -- \\ \n;"
    async with DbSession(engine) as s:
        s.defer(f"INSERT INTO {table} VALUES (1, 'a');")
        s.defer(f"INSERT INTO {table} VALUES (2, 'b') -- second row")
        s.defer(f"INSERT INTO {table} VALUES (3, :note)", {"note": tricky})
        s.defer(f"INSERT INTO {table} VALUES (4, 'd')  ;  ")
    async with DbSession(engine) as s:
        rows = await s.fetch_all(f"SELECT id, note FROM {table} ORDER BY id")
    assert [(r["id"], r["note"]) for r in rows] == [(1, "a"), (2, "b"), (3, tricky), (4, "d")]


async def test_misuse_is_refused(
    engine: AsyncEngine,
    backend: Backend,
    make_table: TableFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raw connection access with writes pending, too many deferred statements, something
    that is not a statement, and (on the driver path) a missing parameter."""
    table = await _accounts(engine, make_table)
    monkeypatch.setattr(deferred_module, "MAX_DEFERRED", 3)
    async with DbSession(engine) as s:
        with pytest.raises(TypeError):
            s.defer(42)  # type: ignore[arg-type]
        for _ in range(3):
            s.defer(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
        with pytest.raises(SessionStateError, match="already deferred"):
            s.defer(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
        with pytest.raises(SessionStateError, match="flush"):
            _ = s.connection
        await s.flush()
        assert s.connection is not None
        if backend.name == "mariadb":
            with pytest.raises(DatabaseError, match="bind parameter"):
                s.defer(f"UPDATE {table} SET balance = :b WHERE id = 1", {})
    assert (await _balances(engine, table))[1] == 103
    with pytest.raises(SessionStateError):
        s.defer(f"UPDATE {table} SET balance = 0")


async def test_cancelled_while_deferred_writes_wait_on_a_lock(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """Cancelled while its deferred writes wait on a row lock as the block ends: nothing
    is committed, the connection is discarded, the waiting statement is killed on the
    server, and the lock holder is not disturbed. On MariaDB the writes travel with the
    COMMIT, so that round trip is the commit: it is not interrupted but bounded by
    cleanup_timeout, and then its outcome is unknown (the cancellation, which still
    propagates, names it as its cause and in session.outcome). On PostgreSQL they are
    flushed before the COMMIT, as statements, which the cancellation interrupts."""
    table = await _accounts(engine, make_table)
    async with DbSession(engine) as holder:
        await holder.execute(f"UPDATE {table} SET balance = 50 WHERE id = 1")
        baseline = engine.pool.checkedout()  # type: ignore[attr-defined]
        victim_session = DbSession(engine, cleanup_timeout=1.0)

        async def victim() -> None:
            async with victim_session as s:
                s.defer(f"UPDATE {table} SET balance = 0 WHERE id = 2")
                s.defer(f"UPDATE {table} SET balance = 0 WHERE id = 1")

        task = asyncio.create_task(victim())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
        if backend.name == "mariadb":
            assert isinstance(raised.value.__cause__, CommitOutcomeUnknownError)
            assert victim_session.outcome is TransactionOutcome.UNKNOWN
        else:
            assert victim_session.outcome is TransactionOutcome.ROLLED_BACK
        assert engine.pool.checkedout() == baseline  # type: ignore[attr-defined]
        for _ in range(100):
            if (await backend.pool_report(engine)).lock_waits == 0:
                break
            await asyncio.sleep(0.05)
        assert (await backend.pool_report(engine)).lock_waits == 0
    assert await _balances(engine, table) == {1: 50, 2: 100, 3: 100}


async def test_concurrent_deferred_transfers_conserve_money(
    engine: AsyncEngine, make_table: TableFactory
) -> None:
    """8 workers make 600 transfers between 50 accounts with deferred debit and credit
    (deadlocks retried by retry_transaction): every transfer applied exactly once and
    the total unchanged."""
    table = await _accounts(engine, make_table, count=50)
    table_log = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    rng = random.Random(7)
    transfers = [(n, *rng.sample(range(1, 51), 2), rng.randint(1, 30)) for n in range(600)]
    queue: asyncio.Queue[tuple[int, ...]] = asyncio.Queue()
    for transfer in transfers:
        queue.put_nowait(transfer)

    def transfer_work(
        n: int, source: int, target: int, amount: int
    ) -> Callable[[DbSession], Awaitable[None]]:
        async def work(s: DbSession) -> None:
            move = f"UPDATE {table} SET balance = balance + :d WHERE id = :id"
            s.defer(move, {"d": -amount, "id": source})
            s.defer(move, {"d": amount, "id": target})
            s.defer(f"INSERT INTO {table_log} VALUES (:n)", {"n": n})

        return work

    async def worker() -> None:
        while not queue.empty():
            work = transfer_work(*queue.get_nowait())
            await retry_transaction(engine, work, max_attempts=50, registry=None)

    await asyncio.gather(*(worker() for _ in range(8)))
    balances = await _balances(engine, table)
    assert sum(balances.values()) == 50 * 100
    expected = dict.fromkeys(range(1, 51), 100)
    for _, source, target, amount in transfers:
        expected[source] -= amount
        expected[target] += amount
    assert balances == expected
    async with DbSession(engine) as s:
        assert await s.execute_scalar(f"SELECT COUNT(*) FROM {table_log}") == 600


@ONLY_MARIADB
async def test_lost_reply_to_writes_sent_with_the_commit_is_outcome_unknown(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """MariaDB: the deferred writes and the COMMIT reach the server together and the reply
    is lost. The outcome is unknown (here everything committed), never reported as a
    plain failure, and the connection is not reused."""
    table = await _accounts(engine, make_table)
    async with proxied_engine(backend.url) as (proxy, proxied):
        proxy.add_trigger(b"\n;\nCOMMIT", Action.CUT_AFTER)
        with pytest.raises(CommitOutcomeUnknownError):
            async with DbSession(proxied) as s:
                lost = await s.execute_scalar(backend.connection_id_sql)
                s.defer(f"UPDATE {table} SET balance = 7 WHERE id = 1")
                s.defer(f"UPDATE {table} SET balance = 8 WHERE id = 2")
        async with DbSession(proxied) as s:
            assert await s.execute_scalar(backend.connection_id_sql) != lost
    assert await _balances(engine, table) == {1: 7, 2: 8, 3: 100}


@ONLY_MARIADB
async def test_frozen_round_trip_with_the_commit_is_bounded(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory
) -> None:
    """MariaDB: the round trip carrying deferred writes and the COMMIT never answers. It
    ends after cleanup_timeout with CommitOutcomeUnknownError (here nothing reached the
    server, so nothing committed), and no lock is left behind."""
    table = await _accounts(engine, make_table)
    async with proxied_engine(backend.url) as (proxy, proxied):
        proxy.add_trigger(b"\n;\nCOMMIT", Action.FREEZE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CommitOutcomeUnknownError):
            async with DbSession(proxied, cleanup_timeout=0.5) as s:
                await s.execute(f"UPDATE {table} SET balance = 9 WHERE id = 2")
                s.defer(f"UPDATE {table} SET balance = 9 WHERE id = 3")
        assert loop.time() - started < 5
        proxy.thaw()
    async with DbSession(engine, lock_timeout=2) as s:
        assert await s.execute(f"UPDATE {table} SET balance = balance WHERE id IN (2, 3)") == 2
    assert await _balances(engine, table) == {1: 100, 2: 100, 3: 100}
