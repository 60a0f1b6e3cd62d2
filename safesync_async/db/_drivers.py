"""Driver adapters: statements straight on the driver's native connection, skipping
SQLAlchemy's per-statement machinery on the hot path. The connection still comes from,
and goes back to, the engine's pool; these only know the driver, never the session."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from ._rows import Rows

__all__ = ["DriverExecutor", "DriverState", "driver_state"]


class DriverExecutor(Protocol):
    """Statements on one native driver connection, within its current transaction."""

    #: Whether several statements can be sent in one round trip (see execute_rendered).
    multi_statements: bool

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows: ...

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        """The statement with its parameters inlined exactly as the driver would send it,
        or None if the connection cannot run several statements in one round trip."""
        ...

    async def execute_rendered(self, statements: Sequence[str], counts: list[int]) -> None:
        """Send rendered statements (parameters inlined, or none) in one round trip;
        append each statement's matched row count to ``counts`` as its result arrives.
        The server stops at the first failing statement, whose error is raised:
        ``len(counts)`` is then its index."""
        ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    def in_transaction(self) -> bool | None:
        """Whether the server reports an open transaction (None: unknown)."""
        ...

    def is_closed(self) -> bool:
        """Whether the connection is known to be closed (after an error: it was lost)."""
        ...

    def terminate(self) -> None:
        """Close the connection's socket at once, without a goodbye to the server (which
        may not answer)."""
        ...


@dataclass(frozen=True, slots=True)
class DriverState:
    """What the library keeps about one DBAPI connection for as long as it lives."""

    #: The server's id for the connection (MySQL thread id, PostgreSQL backend pid), used
    #: to end a statement left running from another connection; None if unknown.
    session_id: int | None
    #: The fast path for SQL text, or None to go through SQLAlchemy.
    executor: DriverExecutor | None


_STATE_KEY = "safesync_driver_state"


def driver_state(connection: PoolProxiedConnection | ConnectionPoolEntry) -> DriverState:
    """The :class:`DriverState` of a pooled DBAPI connection, built once and kept in its
    ``info`` (which lives exactly as long as the DBAPI connection)."""
    info = connection.info
    state: DriverState | None = info.get(_STATE_KEY)
    if state is None:
        state = info[_STATE_KEY] = _inspect(
            connection.dbapi_connection, connection.driver_connection
        )
    return state


def _inspect(adapter: object, driver: object) -> DriverState:
    """``adapter``: SQLAlchemy's DBAPI adaptation of the driver connection ``driver``."""
    module = type(driver).__module__
    if module.startswith("asyncmy"):
        thread_id = getattr(driver, "thread_id", None)
        session_id = thread_id() if callable(thread_id) else None
        return DriverState(_int_or_none(session_id), AsyncmyExecutor(driver))
    if module.startswith("asyncpg"):
        get_pid = getattr(driver, "get_server_pid", None)
        session_id = _int_or_none(get_pid() if callable(get_pid) else None)
        return DriverState(session_id, AsyncpgExecutor.for_adapter(adapter, driver))
    return DriverState(None, None)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_SERVER_STATUS_IN_TRANS = 1
_CLIENT_MULTI_STATEMENTS = 1 << 16
# Rendered statements are separated by a line of their own, so that a statement ending
# in a "-- comment" cannot swallow the separator.
_STATEMENT_SEPARATOR = "\n;\n"
_ENDINGS = frozenset({"COMMIT", "ROLLBACK"})


class AsyncmyExecutor:
    """Statements on a native asyncmy connection (one buffered cursor, format paramstyle)."""

    __slots__ = ("_connection", "_cursor", "_ended", "multi_statements")

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._cursor = connection.cursor()
        # True once a COMMIT or ROLLBACK was the last thing sent: asyncmy keeps the
        # status flags of the first result of a multi-statement round trip, so after
        # "UPDATE ...; COMMIT" its server_status still reports a transaction open.
        self._ended = False
        flags = getattr(connection, "_client_flag", 0)
        self.multi_statements = isinstance(flags, int) and bool(flags & _CLIENT_MULTI_STATEMENTS)

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows:
        cursor = self._cursor
        self._ended = False
        await cursor.execute(query, args)
        description = cursor.description
        if not description:
            return Rows(cursor.rowcount, (), (), (cursor.lastrowid,) if cursor.lastrowid else None)
        rows = await cursor.fetchall()
        return Rows(cursor.rowcount, tuple(column[0] for column in description), rows)

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        if not self.multi_statements:
            return None
        rendered: str = self._cursor.mogrify(query, args)
        return rendered.rstrip().rstrip(";")

    async def execute_rendered(self, statements: Sequence[str], counts: list[int]) -> None:
        cursor = self._cursor
        self._ended = False
        await cursor.execute(_STATEMENT_SEPARATOR.join(statements))
        counts.append(cursor.rowcount)
        while await cursor.nextset():
            counts.append(cursor.rowcount)
        # Statements after a COMMIT or ROLLBACK here only reset the connection (they open
        # no transaction: no table is read).
        self._ended = any(sql in _ENDINGS for sql in statements)

    async def commit(self) -> None:
        self._ended = False
        await self._connection.commit()
        self._ended = True

    async def rollback(self) -> None:
        self._ended = False
        await self._connection.rollback()
        self._ended = True

    def in_transaction(self) -> bool | None:
        if self._ended:
            return False
        status = getattr(self._connection, "server_status", None)
        return bool(status & _SERVER_STATUS_IN_TRANS) if isinstance(status, int) else None

    def is_closed(self) -> bool:
        return False  # asyncmy reports a lost connection with its own error numbers

    def terminate(self) -> None:
        self._connection.close()  # closes the transport, sends nothing


_STATUS_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|MERGE|INSERT \d+) (\d+)")
_PREPARED_STATEMENTS = 256  # kept per connection, least recently used dropped first


class AsyncpgExecutor:
    """Statements on a native asyncpg connection, as prepared statements kept per
    connection. The transaction is the one SQLAlchemy's adaptation of the connection
    tracks (begun the way it begins one, with its isolation settings), so SQLAlchemy
    constructs, savepoints and the pool's reset share it."""

    __slots__ = ("_adapter", "_connection", "_statements")

    multi_statements = False

    def __init__(self, adapter: Any, connection: Any) -> None:
        self._adapter = adapter
        self._connection = connection
        self._statements: collections.OrderedDict[str, Any] = collections.OrderedDict()

    @classmethod
    def for_adapter(cls, adapter: Any, connection: Any) -> AsyncpgExecutor | None:
        """An executor, or None if this SQLAlchemy version adapts asyncpg differently (the
        session then goes through SQLAlchemy, slower but equivalent)."""
        if not (hasattr(adapter, "_transaction") and hasattr(adapter, "_start_transaction")):
            return None
        return cls(adapter, connection)

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows:
        adapter = self._adapter
        if adapter._transaction is None:
            await adapter._start_transaction()
        statement = self._statements.get(query)
        if statement is None:
            statement = await self._connection.prepare(query)
            self._statements[query] = statement
            if len(self._statements) > _PREPARED_STATEMENTS:
                self._statements.popitem(last=False)
        else:
            self._statements.move_to_end(query)
        try:
            rows = await statement.fetch(*args)
        except Exception:
            self._statements.pop(query, None)  # e.g. its plan was invalidated
            raise
        found = _STATUS_COUNT.match(statement.get_statusmsg() or "")
        count = int(found.group(1)) if found else -1
        attributes = statement.get_attributes()
        if not attributes:
            return Rows(count, (), ())
        return Rows(count, tuple(a.name for a in attributes), [tuple(r) for r in rows])

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        return None  # parameters are bound by the server: no multi-statement round trips

    async def execute_rendered(self, statements: Sequence[str], counts: list[int]) -> None:
        raise NotImplementedError("asyncpg statements are never rendered")

    async def commit(self) -> None:
        await self._end("commit")

    async def rollback(self) -> None:
        await self._end("rollback")

    async def _end(self, how: str) -> None:
        adapter = self._adapter
        transaction = adapter._transaction
        if transaction is None:
            return
        try:
            await getattr(transaction, how)()
        finally:
            adapter._transaction = None

    def in_transaction(self) -> bool | None:
        return bool(self._connection.is_in_transaction())

    def is_closed(self) -> bool:
        return bool(self._connection.is_closed())

    def terminate(self) -> None:
        self._connection.terminate()
