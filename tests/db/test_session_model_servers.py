"""A model-based test of DbSession against the real MariaDB and PostgreSQL (hypothesis
stateful testing): each step runs one random block (writes, deferred writes, flushes,
savepoints that succeed or fail, duplicate-key failures, statement timeouts, a
server-side KILL of the session's own connection, named locks, the whole block cancelled
mid-statement, the body raising), caught or not.

The model is the set of rows committed so far. After every block: a block that returned
normally has every write it made (outside failed savepoints) visible and its outcome is
COMMITTED; one that raised has none of them visible unless its outcome says COMMITTED;
afterwards no connection is checked out, none holds an open transaction or a named lock.

``SAFESYNC_MODEL_EXAMPLES`` sets how many programs run per backend (12 by default;
``nox -s faults`` runs more).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from safesync_async import (
    AdvisoryLock,
    DatabaseDisconnectError,
    DatabaseError,
    DbSession,
    TransactionOutcome,
    create_engine,
)

from ..support.backends import BACKENDS, Backend

EXAMPLES = int(os.environ.get("SAFESYNC_MODEL_EXAMPLES", "12"))
pytestmark = pytest.mark.model
TABLE = "CREATE TABLE {table} (id INT PRIMARY KEY)"


@dataclass(frozen=True)
class Op:
    kind: str  # write | defer | flush | duplicate | timeout | kill | lock | savepoint
    caught: bool = True
    body: tuple[Op, ...] = ()
    savepoint_raises: bool = False


ENDINGS = ["clean", "clean", "raise", "cancel"]


def _ops(depth: int) -> st.SearchStrategy[Op]:
    simple = st.one_of(
        st.sampled_from([Op("write"), Op("defer"), Op("flush"), Op("lock")]),
        st.builds(Op, kind=st.sampled_from(["duplicate", "timeout", "kill"]), caught=st.booleans()),
    )
    if depth == 0:
        return simple
    nested = st.builds(
        Op,
        kind=st.just("savepoint"),
        body=st.lists(_ops(depth - 1), max_size=3).map(tuple),
        savepoint_raises=st.booleans(),
    )
    return st.one_of(simple, simple, nested)


class Expected(Exception):
    """Raised by the block (or a savepoint block) on purpose."""


@dataclass
class Block:
    """What one block did, as the model sees it."""

    backend: Backend
    table: str
    next_row: int
    expected: list[int] = field(default_factory=list)
    doomed: bool = False
    lock_keys: list[str] = field(default_factory=list)

    def row(self) -> int:
        self.next_row += 1
        return self.next_row


class SessionModel(RuleBasedStateMachine):
    """The machine; subclasses pin the backend."""

    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.engine = create_engine(self.backend.url, pool_size=2, max_overflow=2)
        self.probe = self.backend.probe()
        self.table = f"model_{uuid.uuid4().hex[:12]}"
        self.committed: set[int] = {0}
        self.next_row = 0
        self.lock_keys: list[str] = []
        self.runner.run(self._setup())

    async def _setup(self) -> None:
        async with DbSession(self.engine, registry=None) as s:
            await s.execute(TABLE.format(table=self.table))
        async with DbSession(self.engine, registry=None) as s:
            await s.execute(f"INSERT INTO {self.table} VALUES (0)")

    def teardown(self) -> None:
        async def drop() -> None:
            async with DbSession(self.engine, registry=None) as s:
                await s.execute(f"DROP TABLE IF EXISTS {self.table}")
            await self.engine.dispose()
            await self.probe.dispose()

        try:
            self.runner.run(drop())
        finally:
            self.runner.close()

    @rule(
        ops=st.lists(_ops(1), max_size=6),
        ending=st.sampled_from(ENDINGS),
    )
    def run_block(self, ops: list[Op], ending: str) -> None:
        self.runner.run(self._block(ops, ending))

    async def _block(self, ops: Sequence[Op], ending: str) -> None:
        block = Block(self.backend, self.table, self.next_row)
        session = DbSession(self.engine, registry=None, cleanup_timeout=5)

        async def body() -> None:
            async with session as s:
                await self._body(s, ops, block, in_savepoint=False)
                if ending == "raise":
                    raise Expected
                if ending == "cancel":
                    await s.execute(self.backend.sleep_sql(5))

        task = asyncio.create_task(body())
        if ending == "cancel":
            await asyncio.wait([task], timeout=0.3)
            task.cancel()
        error: BaseException | None = None
        try:
            await task
        except AssertionError:
            raise
        except BaseException as exc:
            error = exc
        self.next_row = block.next_row + 1
        self.lock_keys.extend(block.lock_keys)
        if error is None:
            assert not block.doomed, "a block that caught its own failure returned normally"
            assert session.outcome is TransactionOutcome.COMMITTED
        if session.outcome is TransactionOutcome.COMMITTED:
            self.committed.update(block.expected)
        else:
            assert session.outcome is TransactionOutcome.ROLLED_BACK, session.outcome

    async def _body(
        self, s: DbSession, ops: Sequence[Op], block: Block, in_savepoint: bool
    ) -> None:
        table = self.table
        for op in ops:
            if op.kind == "write":
                row = block.row()
                await s.execute(f"INSERT INTO {table} VALUES (:id)", {"id": row})
                block.expected.append(row)
            elif op.kind == "defer":
                row = block.row()
                s.defer(f"INSERT INTO {table} VALUES (:id)", {"id": row})
                block.expected.append(row)
            elif op.kind == "flush":
                await s.flush()
            elif op.kind == "lock":
                key = f"model-{uuid.uuid4().hex}"
                block.lock_keys.append(key)
                await AdvisoryLock(s, key, timeout=1).acquire()
            elif op.kind == "duplicate":
                try:
                    await s.execute(f"INSERT INTO {table} VALUES (0)")
                except DatabaseError:
                    if not op.caught:
                        raise
                    block.doomed = block.doomed or not in_savepoint
            elif op.kind == "timeout":
                try:
                    async with asyncio.timeout(0.02):
                        await s.execute(self.backend.sleep_sql(2))
                except TimeoutError:
                    if not op.caught:
                        raise
                    block.doomed = True
            elif op.kind == "kill":
                await self._kill_own_connection(s)
                try:
                    await s.execute("SELECT 1")
                except DatabaseDisconnectError:
                    if not op.caught:
                        raise
                    block.doomed = True
            else:
                await self._savepoint(s, op, block)

    async def _savepoint(self, s: DbSession, op: Op, block: Block) -> None:
        mark = len(block.expected)
        body_done = False
        try:
            async with s.savepoint():
                await self._body(s, op.body, block, in_savepoint=True)
                body_done = True
                if op.savepoint_raises:
                    raise Expected
        except Expected:
            del block.expected[mark:]
        except (DatabaseError, TimeoutError) as exc:
            if body_done and op.savepoint_raises:
                raise AssertionError(f"{exc!r} replaced the block's own error") from exc
            del block.expected[mark:]
            if isinstance(exc, DatabaseDisconnectError) or not isinstance(exc, DatabaseError):
                block.doomed = True

    async def _kill_own_connection(self, s: DbSession) -> None:
        own_id = int(await s.execute_scalar(self.backend.connection_id_sql))
        async with self.probe.connect() as conn:
            await conn.exec_driver_sql(self.backend.kill_sql(own_id))
        await asyncio.sleep(0.05)  # the server closes the socket

    @invariant()
    def database_matches_the_model(self) -> None:
        async def rows() -> set[int]:
            async with DbSession(self.engine, registry=None) as s:
                return {r["id"] for r in await s.fetch_all(f"SELECT id FROM {self.table}")}

        assert self.runner.run(rows()) == self.committed

    @invariant()
    def nothing_left_behind(self) -> None:
        report = self.runner.run(self.backend.pool_report(self.engine, tuple(self.lock_keys)))
        assert report.checked_out == 0
        assert report.open_transactions == 0
        assert report.held_locks == ()


_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class MariaDBSessionModel(SessionModel):
    backend = BACKENDS["mariadb"]


class PostgreSQLSessionModel(SessionModel):
    backend = BACKENDS["postgresql"]


# Each program takes up to a second or two on a busy machine: the suite's 120 s per test
# is too little for the long runs of nox -s faults.
_TIME_LIMIT = pytest.mark.timeout(max(120, EXAMPLES * 4))
TestMariaDBSessionModel = _TIME_LIMIT(MariaDBSessionModel.TestCase)
TestMariaDBSessionModel.settings = _SETTINGS
TestPostgreSQLSessionModel = _TIME_LIMIT(PostgreSQLSessionModel.TestCase)
TestPostgreSQLSessionModel.settings = _SETTINGS
