"""A fake driver connection for the session's state machine: no server, no sleeps.

The fake server keeps committed rows and each connection's open transaction, with
MySQL's semantics for the errors it is told to raise: a duplicate key or a read-only
refusal undoes the statement, a deadlock the whole transaction, a lost connection
everything not committed. Statements are SQL text the session sends as is:

* ``INSERT INTO t VALUES (n)`` writes row ``n``;
* a ``/*fail:ERRNO*/`` comment makes it fail with that MySQL error number;
* a ``/*slow*/`` comment makes it apply and then never answer (until cancelled);
* ``SELECT 1`` answers at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from safesync_async.db._connection import KillOutcome, SessionConnection
from safesync_async.db._rows import Rows
from safesync_async.db.dialects import Dialect
from safesync_async.db.lease import ConnectionLease

_WRITE = re.compile(r"INSERT INTO t VALUES \((\d+)\)")
_FAIL = re.compile(r"/\*fail:(\d+)\*/")
# What each scripted error does to the transaction on MySQL.
_STATEMENT_ONLY = {1062, 1290}
_WHOLE_TRANSACTION = {1213}
_CONNECTION = {2013}
MESSAGES = {
    1062: "Duplicate entry '1' for key 'PRIMARY'",
    1290: "The MariaDB server is running with the --read-only option",
    1213: "Deadlock found when trying to get lock",
    2013: "Lost connection to server during query",
}


class FakeDriverError(Exception):
    """Raised like a MySQL driver error: ``args = (errno, message)``."""


def engine() -> AsyncEngine:
    """An engine for its SQL dialect only: nothing ever connects through it."""
    return create_async_engine("mysql+asyncmy://fake@127.0.0.1:1/fake")


class FakeServer:
    """Committed rows, and how the next COMMIT behaves (``commit_mode``): ``"ok"``,
    ``"error"`` (refused, nothing kept), ``"lost_before"`` / ``"lost_after"`` (the
    connection drops before / after the commit is applied), ``"hang"`` (never answers),
    ``"gate"`` (waits for ``gate`` to be set, then commits)."""

    def __init__(self) -> None:
        self.committed: set[int] = set()
        self.commit_mode = "ok"
        self.commit_started = asyncio.Event()
        self.gate = asyncio.Event()
        self.connections: list[FakeConnection] = []
        self.kills = 0

    async def connector(self, engine: AsyncEngine, lease: ConnectionLease | None) -> FakeConnection:
        connection = FakeConnection(self)
        self.connections.append(connection)
        return connection


class FakeExecutor:
    """The driver fast path of one fake connection."""

    multi_statements = True

    def __init__(self, connection: FakeConnection) -> None:
        self._connection = connection

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows:
        count = await self._connection.apply(query)
        return Rows(count, ("1",), [(1,)]) if query.startswith("SELECT") else Rows(count, (), ())

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        return query

    async def execute_rendered(self, statements: Sequence[str], counts: list[int]) -> None:
        for statement in statements:
            if statement == "COMMIT":
                await self.commit()
                counts.append(0)
            elif statement == "ROLLBACK":
                await self.rollback()
                counts.append(0)
            else:
                counts.append(await self._connection.apply(statement))

    async def commit(self) -> None:
        await self._connection.commit()

    async def rollback(self) -> None:
        self._connection.pending.clear()

    def in_transaction(self) -> bool | None:
        return bool(self._connection.pending)

    def is_closed(self) -> bool:
        return not self._connection.is_valid

    def terminate(self) -> None:
        self._connection.is_valid = False


class FakeSavepoint:
    def __init__(self, connection: FakeConnection) -> None:
        self._connection = connection
        self._mark = len(connection.pending)

    async def commit(self) -> None:
        pass

    async def rollback(self) -> None:
        del self._connection.pending[self._mark :]


class FakeConnection(SessionConnection):
    """One fake connection: its open transaction's rows in ``pending``."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.executor = FakeExecutor(self)
        self.session_id = len(server.connections) + 1
        self.direct_used = False
        self.pending: list[int] = []
        self.is_valid = True
        self.released = False
        self.reset_statements: list[str] = []

    async def apply(self, query: str) -> int:
        if not self.is_valid:
            raise FakeDriverError(2006, "MySQL server has gone away")
        failure = _FAIL.search(query)
        if failure is not None:
            self._fail(int(failure.group(1)))
        found = _WRITE.search(query)
        if found is not None:
            self.pending.append(int(found.group(1)))
        if "/*slow*/" in query:
            await asyncio.Future()  # applied, and the answer never comes
        return 1 if found is not None else 0

    def _fail(self, errno: int) -> None:
        if errno in _WHOLE_TRANSACTION:
            self.pending.clear()
        elif errno in _CONNECTION:
            self.pending.clear()
            self.is_valid = False
        elif errno not in _STATEMENT_ONLY:
            raise AssertionError(f"no scripted behaviour for errno {errno}")
        raise FakeDriverError(errno, MESSAGES[errno])

    async def commit(self) -> None:
        server = self.server
        mode = server.commit_mode
        server.commit_started.set()
        if mode == "hang":
            await asyncio.Future()
        if mode == "gate":
            await server.gate.wait()
        if mode == "lost_before":
            self.pending.clear()
            self.is_valid = False
            raise FakeDriverError(2013, MESSAGES[2013])
        if mode == "error":
            self.pending.clear()
            raise FakeDriverError(1180, "Got error during COMMIT")
        server.committed.update(self.pending)
        self.pending.clear()
        if mode == "lost_after":
            self.is_valid = False
            raise FakeDriverError(2013, MESSAGES[2013])

    # -- SessionConnection -------------------------------------------------------------

    @property
    def sqlalchemy_connection(self) -> AsyncConnection | None:
        return None

    def sqlalchemy(self) -> AsyncConnection:
        raise AssertionError("the fake connection runs SQL text only")

    @property
    def valid(self) -> bool:
        return self.is_valid

    async def end_transaction(self, *, commit: bool) -> None:
        if not self.direct_used:
            return
        await (self.executor.commit() if commit else self.executor.rollback())

    async def begin_savepoint(self) -> FakeSavepoint:
        return FakeSavepoint(self)

    async def run_plain(self, statements: Sequence[str]) -> None:
        self.reset_statements.extend(statements)
        self.pending.clear()

    async def invalidate(self) -> None:
        self.is_valid = False
        self.pending.clear()  # the server rolls back what the closed connection held

    async def release(self, lease: ConnectionLease | None) -> None:
        assert not self.released, "released twice"
        self.released = True

    async def kill_server_session(self, dialect: Dialect, bound: float) -> str:
        self.server.kills += 1
        return KillOutcome.DONE
