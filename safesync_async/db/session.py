"""DbSession: one pooled connection, one transaction, safe cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from .._shield import run_to_completion
from ..errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    DatabaseError,
    MultipleRowsError,
    RollbackOnlyError,
    SessionStateError,
)
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from .dialects import ClassifiedError, Dialect, ErrorKind, dialect_for

__all__ = ["DbSession", "Params", "Statement"]

_log = logging.getLogger("safesync_async.db.session")

Statement = str | Executable
Params = Mapping[str, Any] | None
_T = TypeVar("_T")


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


@functools.lru_cache(maxsize=1024)
def _text(sql: str) -> sa.TextClause:
    return sa.text(sql)


def _executable(statement: Statement) -> Executable:
    if isinstance(statement, str):
        return _text(statement)
    if isinstance(statement, Executable):
        return statement
    raise TypeError(f"expected SQL text or a SQLAlchemy executable, not {type(statement).__name__}")


class DbSession:
    """One connection and one transaction, as an async context manager.

    ``async with DbSession(engine) as session:`` checks a connection out of the
    engine's pool and begins a transaction. A clean exit commits; an exception
    rolls back and propagates. Either way the connection goes back to the pool
    with no transaction, no named lock and no changed session setting; if its
    state cannot be vouched for, it is invalidated (closed) instead.

    Guarantees:

    * **Rollback-only after any database error.** Once a statement fails, the
      session refuses further statements and the commit (``RollbackOnlyError``),
      so swallowing, say, a lock wait timeout cannot persist half a unit of work.
      Use :meth:`savepoint` around statements that are *expected* to fail.
    * **Cancellation-safe.** Cleanup (rollback, commit, lock release, restoring
      settings, return to the pool) runs to completion even if the task is
      cancelled, then the cancellation propagates. A statement interrupted by
      cancellation leaves the connection invalidated, and its server session is
      killed from another connection so it cannot keep holding locks.
    * **Commit outcome.** If COMMIT was sent and no answer arrived (disconnect or
      ``cleanup_timeout``), :class:`CommitOutcomeUnknownError` is raised.

    A DbSession is single-use and is not safe to share between tasks.

    Args:
        engine: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (MySQL or MariaDB).
        isolation_level: isolation of this transaction only, e.g. ``"READ COMMITTED"``.
        lock_timeout: server-side row lock wait bound in seconds (MySQL rounds up to
            whole seconds). Restored before the connection returns to the pool.
        operation: a low-cardinality name for metrics, e.g. ``"transfer"``.
        cleanup_timeout: bound in seconds on each cleanup statement (COMMIT,
            ROLLBACK, lock release).
        registry: Prometheus registry; ``None`` disables metrics.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        isolation_level: str | None = None,
        lock_timeout: float | None = None,
        operation: str = "default",
        cleanup_timeout: float = 30.0,
        registry: RegistryArg = DEFAULT_REGISTRY,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"DbSession needs a sqlalchemy AsyncEngine, got {type(engine).__name__}; "
                "create one with sqlalchemy.ext.asyncio.create_async_engine()"
            )
        _check_seconds("lock_timeout", lock_timeout, allow_none=True)
        _check_seconds("cleanup_timeout", cleanup_timeout, allow_none=False)
        self._engine = engine
        self._dialect: Dialect = dialect_for(engine.dialect)
        self._setup_sql: list[str] = []
        self._restore_sql: str | None = None
        if isolation_level is not None:
            self._setup_sql.append(self._dialect.isolation_level_sql(isolation_level))
        if lock_timeout is not None:
            set_sql, self._restore_sql = self._dialect.lock_timeout_sql(lock_timeout)
            self._setup_sql.append(set_sql)
        self._operation = operation
        self._cleanup_timeout = cleanup_timeout
        self._metrics = metrics_for(registry)
        self._state = _State.NEW
        self._conn: AsyncConnection | None = None
        self._server_session_id: int | None = None
        self._failure: DatabaseError | None = None
        self._transaction_lost = False
        self._interrupted = False
        self._busy = False
        self._holds_named_locks = False
        self._started = 0.0

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> DbSession:
        if self._state is not _State.NEW:
            raise SessionStateError(
                "this DbSession was already entered; create a new DbSession for each "
                "transaction (sessions cannot be nested or reused)"
            )
        self._state = _State.ACTIVE
        self._started = time.perf_counter()
        try:
            self._conn = await self._engine.connect()
        except sa_exc.SQLAlchemyError as exc:
            self._state = _State.CLOSED
            raise self._dialect.build_error(self._dialect.classify_exception(exc)) from exc
        except BaseException:
            self._state = _State.CLOSED
            raise
        try:
            raw = await self._conn.get_raw_connection()
            self._server_session_id = self._dialect.server_session_id(raw.driver_connection)
            for sql in self._setup_sql:
                await self._run(lambda c, s=sql: c.exec_driver_sql(s))  # type: ignore[misc]
        except BaseException:
            await run_to_completion(self._finish(body_failed=True))
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not _State.ACTIVE:
            return
        await run_to_completion(self._finish(body_failed=exc is not None))

    # -- statements --------------------------------------------------------------

    async def execute(self, sql: Statement, params: Params = None) -> int:
        """Run a statement; return the number of rows it *matched* (not changed).

        SQLAlchemy's MySQL dialects set CLIENT_FOUND_ROWS, so an UPDATE that
        leaves a row unchanged still counts it.
        """
        result = await self._execute(sql, params)
        count = result.rowcount
        result.close()
        return count

    async def fetch_one(self, sql: Statement, params: Params = None) -> dict[str, Any] | None:
        """Return the only row as a dict, ``None`` if there is none.

        Raises :class:`MultipleRowsError` if the query returns more than one row.
        """
        result = await self._execute(sql, params)
        rows = result.mappings().fetchmany(2)
        result.close()
        if len(rows) > 1:
            raise MultipleRowsError(
                "fetch_one expected at most one row and got more; narrow the WHERE "
                "clause or use fetch_all"
            )
        return dict(rows[0]) if rows else None

    async def fetch_all(self, sql: Statement, params: Params = None) -> list[dict[str, Any]]:
        """Return every row as a list of dicts."""
        result = await self._execute(sql, params)
        return [dict(row) for row in result.mappings().all()]

    async def execute_scalar(self, sql: Statement, params: Params = None) -> Any:
        """Return the first column of the first row, or ``None`` if there is no row."""
        result = await self._execute(sql, params)
        return result.scalar()

    @property
    def connection(self) -> AsyncConnection:
        """The underlying :class:`AsyncConnection`, for what the helpers do not cover.

        Statements run on it directly bypass the rollback-only bookkeeping; do not
        commit or roll back through it.
        """
        return self._usable()

    @property
    def is_rollback_only(self) -> bool:
        """True once a statement has failed outside a savepoint."""
        return self._failure is not None or self._interrupted

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction for statements that are expected to fail.

        If the block raises, changes since the savepoint are undone, the session
        stays usable and the exception propagates. An error that ends the whole
        transaction on the server (a deadlock, a lost connection) still makes the
        session rollback-only.
        """
        nested = await self._run(lambda c: c.begin_nested())
        try:
            yield
        except Exception:
            if self._transaction_lost or self._interrupted:
                raise
            failure = self._failure
            self._failure = None
            try:
                await run_to_completion(self._run(lambda c: nested.rollback()))
            except BaseException:
                self._failure = self._failure or failure
                raise
            raise
        else:
            await self._run(lambda c: nested.commit())

    # -- internals used by the primitives -----------------------------------------

    @property
    def dialect(self) -> Dialect:
        """The backend layer in use (internal API for the primitives)."""
        return self._dialect

    @property
    def sa_dialect(self) -> sa.engine.Dialect:
        return self._engine.dialect

    def _note_named_lock(self) -> None:
        self._holds_named_locks = True

    def _fail(self, error: DatabaseError) -> None:
        """Make the session rollback-only because of ``error``."""
        if self._failure is None:
            self._failure = error

    async def _execute(
        self,
        sql: Statement,
        params: Params = None,
        *,
        nowait: bool = False,
        tolerate: ErrorKind | None = None,
    ) -> CursorResult[Any]:
        statement = _executable(sql)
        if params is None:
            return await self._run(lambda c: c.execute(statement), nowait=nowait, tolerate=tolerate)
        return await self._run(
            lambda c: c.execute(statement, params), nowait=nowait, tolerate=tolerate
        )

    async def _run(
        self,
        call: Callable[[AsyncConnection], Awaitable[_T]],
        *,
        nowait: bool = False,
        tolerate: ErrorKind | None = None,
    ) -> _T:
        """Run one database call with the session's error bookkeeping."""
        conn = self._usable()
        self._busy = True
        try:
            return await call(conn)
        except sa_exc.SQLAlchemyError as exc:
            info = self._dialect.classify_exception(exc, nowait=nowait)
            error = self._dialect.build_error(info)
            self._record_failure(info, error, tolerate)
            raise error from exc
        except BaseException:
            # Cancelled or timed out mid-statement: the reply may still be on the
            # wire, so the connection cannot be trusted (SQLAlchemy invalidates it).
            self._interrupted = True
            raise
        finally:
            self._busy = False

    def _record_failure(
        self, info: ClassifiedError, error: DatabaseError, tolerate: ErrorKind | None
    ) -> None:
        if info.kind is tolerate and self._dialect.keeps_transaction_usable(info.kind):
            return
        self._fail(error)
        if self._dialect.aborts_transaction(info.kind):
            self._transaction_lost = True

    def _usable(self) -> AsyncConnection:
        if self._state is not _State.ACTIVE or self._conn is None:
            raise SessionStateError(
                "DbSession is not active; use it inside 'async with DbSession(engine) as s'"
            )
        if self._busy:
            raise SessionStateError(
                "DbSession is already running a statement; a session is not safe to "
                "share between tasks, give each task its own DbSession"
            )
        if self._interrupted:
            raise SessionStateError(
                "a statement of this DbSession was interrupted (cancelled or timed out); "
                "the connection is discarded, start a new DbSession"
            )
        if self._failure is not None:
            raise RollbackOnlyError(
                f"DbSession is rollback-only after an earlier error ({self._failure}); "
                "start a new DbSession, or use session.savepoint() for expected failures",
                errno=self._failure.errno,
                sqlstate=self._failure.sqlstate,
            ) from self._failure
        return self._conn

    # -- cleanup -----------------------------------------------------------------

    async def _finish(self, *, body_failed: bool) -> None:
        """End the transaction, reset the connection, return it to the pool.

        Runs in its own task (see run_to_completion) so cancellation cannot cut it
        short. Raises only for outcomes the caller must see: a refused or failed
        commit.
        """
        self._state = _State.CLOSING
        conn = self._conn
        outcome = "rolled_back"
        try:
            if conn is None:
                return
            if self._interrupted or conn.invalidated:
                await self._discard(conn, "interrupted" if self._interrupted else "disconnected")
            elif body_failed or self._failure is not None:
                await self._rollback(conn)
                if not body_failed:
                    assert self._failure is not None
                    raise RollbackOnlyError(
                        f"commit refused: the session is rollback-only after an earlier "
                        f"error ({self._failure}); nothing was committed",
                        errno=self._failure.errno,
                        sqlstate=self._failure.sqlstate,
                    ) from self._failure
            else:
                outcome = "commit_failed"
                await self._commit(conn)
                outcome = "committed"
        except CommitOutcomeUnknownError:
            outcome = "commit_unknown"
            raise
        finally:
            try:
                if conn is not None:
                    await self._reset_connection(conn)
                    await conn.close()
            finally:
                self._state = _State.CLOSED
                self._metrics.inc("transactions", self._operation, outcome)
                self._metrics.observe(
                    "transaction_seconds", time.perf_counter() - self._started, self._operation
                )

    async def _commit(self, conn: AsyncConnection) -> None:
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                await conn.commit()
        except TimeoutError as exc:
            await self._discard(conn, "commit_unknown", kill=True)
            raise CommitOutcomeUnknownError(
                f"COMMIT got no answer within {self._cleanup_timeout} s; the transaction "
                "may or may not have been committed"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            info = self._dialect.classify_exception(exc)
            if info.kind is ErrorKind.DISCONNECT or conn.invalidated:
                await self._discard(conn, "commit_unknown")
                raise CommitOutcomeUnknownError(
                    "the connection was lost during COMMIT; the transaction may or may not "
                    f"have been committed ({info.server_message})",
                    errno=info.errno,
                    sqlstate=info.sqlstate,
                ) from exc
            await self._rollback(conn)
            raise self._dialect.build_error(info) from exc

    async def _rollback(self, conn: AsyncConnection) -> None:
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                await conn.rollback()
        except (sa_exc.SQLAlchemyError, TimeoutError) as exc:
            _log.warning("rollback failed, discarding the connection: %s", exc)
            await self._discard(conn, "rollback_failed", kill=isinstance(exc, TimeoutError))

    async def _reset_connection(self, conn: AsyncConnection) -> None:
        """Undo what the session changed on the connection, or discard it."""
        if conn.invalidated:
            return
        statements = []
        if self._holds_named_locks:
            statements.append(self._dialect.release_advisory_locks_sql())
        if self._restore_sql is not None:
            statements.append(self._restore_sql)
        if not statements:
            return
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                for sql in statements:
                    await conn.exec_driver_sql(sql)
                await conn.rollback()
        except (sa_exc.SQLAlchemyError, TimeoutError) as exc:
            _log.warning("could not reset the connection, discarding it: %s", exc)
            await self._discard(conn, "reset_failed", kill=True)

    async def _discard(self, conn: AsyncConnection, reason: str, *, kill: bool = False) -> None:
        """Invalidate the connection; end its server session if it may still be busy."""
        self._metrics.inc("invalidations", reason)
        if not conn.invalidated:
            with contextlib.suppress(Exception):
                await conn.invalidate()
        if (kill or self._interrupted) and self._server_session_id is not None:
            await self._kill_server_session(self._server_session_id)

    async def _kill_server_session(self, session_id: int) -> None:
        sql = self._dialect.kill_session_sql(session_id)
        try:
            async with asyncio.timeout(self._cleanup_timeout), self._engine.connect() as side:
                await side.exec_driver_sql(sql)
        except sa_exc.SQLAlchemyError as exc:
            info = self._dialect.classify_exception(exc)
            if not self._dialect.is_unknown_session(info):
                _log.warning("could not kill server session %s: %s", session_id, exc)
        except TimeoutError:
            _log.warning("killing server session %s timed out", session_id)


def _check_seconds(name: str, value: float | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
