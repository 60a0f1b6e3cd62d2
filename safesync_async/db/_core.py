"""The transaction behind a DbSession: its states, its failure bookkeeping, and the one
decision that matters at the end: commit everything the block did, or raise.

:class:`TransactionCore` is also the library's internal interface to a session: the
primitives (locks, OCC, idempotent insert, inbox, outbox) run their statements through
``session.core`` so that every statement gets the same error bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._shield import run_to_completion
from ..errors import DatabaseError, DatabaseUnavailableError, RollbackOnlyError, SessionStateError
from ..metrics import Metrics
from ._connection import Connector, PooledConnection, SessionConnection
from ._deferred import DeferredQueue, DeferredWrite, name_failed_write, round_trips
from ._ending import TransactionEnd
from ._rows import Rows
from ._state import TransactionOutcome, TransactionState
from ._statements import Params, Statement, check_deferrable, describe, driver_query, executable
from .dialects import ClassifiedError, Dialect, ErrorKind
from .lease import ConnectionLease

__all__ = ["TransactionCore", "TransactionOutcome"]

_T = TypeVar("_T")


class _Phase(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


class TransactionCore:
    """One connection and one transaction, with the rule that keeps writes from being
    lost silently: a block that ends without an exception either commits everything it
    executed or the exit raises. Once a statement failed (outside a savepoint), was
    interrupted (cancelled, timed out) or lost its connection, the commit is refused with
    :class:`RollbackOnlyError` naming why.

    Not safe to share between tasks. Created by :class:`DbSession`; the attributes and
    methods without a leading underscore form the interface the primitives use.
    """

    __slots__ = (
        "_busy",
        "_cleanup_timeout",
        "_conn",
        "_connector",
        "_deferred",
        "_lease",
        "_phase",
        "_restore_sql",
        "_setup_sql",
        "_started",
        "_state",
        "dialect",
        "engine",
        "metrics",
        "operation",
        "sa_dialect",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        dialect: Dialect,
        *,
        setup_sql: Sequence[str],
        restore_sql: str | None,
        operation: str,
        cleanup_timeout: float,
        metrics: Metrics,
        lease: ConnectionLease | None,
        connector: Connector = PooledConnection.checkout,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.sa_dialect: SADialect = engine.dialect
        self.operation = operation
        self.metrics = metrics
        self._lease = lease
        self._connector = connector
        self._setup_sql = setup_sql
        self._restore_sql = restore_sql
        self._cleanup_timeout = cleanup_timeout
        self._phase = _Phase.NEW
        self._state = TransactionState()
        self._conn: SessionConnection | None = None
        self._deferred = DeferredQueue()
        self._busy = False
        self._started = 0.0

    # -- for the primitives -------------------------------------------------------------

    @property
    def db_system(self) -> str:
        """The database system name for tracing ("mariadb", "mysql", "postgresql")."""
        return "mariadb" if getattr(self.sa_dialect, "is_mariadb", False) else self.sa_dialect.name

    def fail(self, error: DatabaseError) -> None:
        """Make the session rollback-only because of ``error`` (the first one is kept)."""
        self._state.fail(error)

    def note_named_lock(self) -> None:
        """A named lock that outlives the transaction may be held: release it at the end."""
        self._state.named_locks = True

    @property
    def rollback_only(self) -> bool:
        return self._state.rollback_only

    @property
    def outcome(self) -> TransactionOutcome:
        """How the transaction ended (OPEN until then)."""
        return self._state.outcome

    @property
    def server_unreachable(self) -> bool:
        """Whether, cleaning up after an interrupted statement, the server could not be
        reached even from a new connection (the database failed, not the caller)."""
        return self._state.server_unreachable

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Check a connection out (or take the lease's) and run the setup statements."""
        if self._phase is not _Phase.NEW:
            raise SessionStateError(
                "this DbSession was already entered; create a new DbSession for each "
                "transaction (sessions cannot be nested or reused)"
            )
        self._phase = _Phase.ACTIVE
        self._started = time.perf_counter()
        try:
            self._conn = await self._connector(self.engine, self._lease)
        except Exception as exc:
            self._phase = _Phase.CLOSED
            self._state.outcome = TransactionOutcome.ROLLED_BACK
            raise self._connect_error(exc) from exc
        except BaseException:
            self._phase = _Phase.CLOSED
            self._state.outcome = TransactionOutcome.ROLLED_BACK
            raise
        try:
            for sql in self._setup_sql:
                await self.run(sql)
        except BaseException:
            await run_to_completion(self._finish(body_failed=True))
            raise

    async def close(self, body_error: BaseException | None) -> None:
        """End the transaction: commit after a clean block, roll back after an exception;
        raise if a clean block cannot be committed. Cleanup runs to completion even when
        the task is cancelled; the cancellation is re-raised after it, with a note saying
        how the transaction ended."""
        if self._phase is not _Phase.ACTIVE:
            return
        carried: list[DeferredWrite] = []
        if body_error is None and self._deferred and not self._state.rollback_only:
            if self._can_carry_with_commit():
                carried = self._deferred.take()
            else:
                try:
                    await self._flush_deferred()  # like the body's own statements
                except BaseException:
                    await run_to_completion(self._finish(body_failed=True))
                    raise
        try:
            await run_to_completion(
                self._finish(body_failed=body_error is not None, carried=carried)
            )
        except asyncio.CancelledError as cancelled:
            if body_error is None:
                cancelled.add_note(
                    "the DbSession's transaction ended before this cancellation took effect: "
                    f"session.outcome is {self.outcome.name}"
                )
            raise

    # -- statements ----------------------------------------------------------------------

    async def run(
        self,
        sql: Statement,
        params: Params = None,
        *,
        nowait: bool = False,
        tolerate: ErrorKind | None = None,
    ) -> Rows:
        """Run one statement with the session's bookkeeping; SQL text on the driver path
        where there is one. ``nowait``: the statement used NOWAIT; ``tolerate``: an error
        kind that, where the server keeps the transaction usable, does not make the
        session rollback-only (it is raised all the same)."""
        conn = self._conn
        executor = conn.executor if conn is not None else None
        if executor is not None and isinstance(sql, str):
            # The driver path, inlined (it is the per-message path): what _guard does.
            assert conn is not None
            query, args = driver_query(sql, params, self.sa_dialect)
            self._check_usable()
            if self._deferred:
                await self._flush_deferred()
            conn.direct_used = True
            self._busy = True
            try:
                return await executor.execute(query, args)
            except Exception as exc:
                raise self._native_failure(exc, nowait, tolerate) from exc
            except BaseException as exc:
                self._state.interrupt(exc, sql)
                raise
            finally:
                self._busy = False
        statement = executable(sql)

        async def through_sqlalchemy() -> Rows:
            assert self._conn is not None
            connection = self._conn.sqlalchemy()
            result = await (
                connection.execute(statement, params) if params else connection.execute(statement)
            )
            return Rows.from_result(result)

        return await self._guard(through_sqlalchemy, sql, nowait, tolerate, native=False)

    def defer(self, sql: Statement, params: Params) -> None:
        """Queue one data-changing statement for the next flush."""
        self._check_usable()
        check_deferrable(sql, hash_comments=self.dialect.hash_comments)
        assert self._conn is not None
        executor = self._conn.executor
        rendered = None
        if executor is not None and isinstance(sql, str):
            rendered = executor.render(*driver_query(sql, params, self.sa_dialect))
        self._deferred.add(DeferredWrite(sql, params, rendered))

    async def flush(self) -> list[int]:
        """Run the deferred statements now; the number of rows each one matched."""
        self._check_usable()
        return await self._flush_deferred()

    def sqlalchemy_connection(self) -> AsyncConnection:
        """The SQLAlchemy connection of the session (the escape hatch)."""
        self._check_usable()
        if self._deferred:
            raise SessionStateError(
                "statements are deferred; await session.flush() before using "
                "session.connection, so that they run first"
            )
        assert self._conn is not None
        return self._conn.sqlalchemy()

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: if the block raises, what it did is undone (writes it
        deferred are dropped, not sent) and the session stays usable, unless the error
        ended the whole transaction on the server."""
        nested = await self._guard(
            lambda: self._active().begin_savepoint(), "SAVEPOINT", False, None, native=False
        )
        mark = self._deferred.mark()
        try:
            yield
            await self.flush()  # writes deferred inside the savepoint belong to it
        except Exception:
            self._deferred.drop_since(mark)
            state = self._state
            if state.transaction_lost or state.interruption is not None or state.broken:
                raise
            failure, state.failure = state.failure, None
            try:
                await run_to_completion(
                    self._guard(nested.rollback, "ROLLBACK TO SAVEPOINT", False, None, False)
                )
            except BaseException:
                state.failure = state.failure or failure
                raise
            raise
        else:
            await self._guard(nested.commit, "RELEASE SAVEPOINT", False, None, native=False)

    # -- the guard -------------------------------------------------------------------------

    async def _guard(
        self,
        call: Callable[[], Awaitable[_T]],
        statement: Statement,
        nowait: bool,
        tolerate: ErrorKind | None,
        native: bool,
    ) -> _T:
        """Run one database call: refuse it if the session cannot take it, send the
        deferred writes first, and record what a failure means for the transaction and
        the connection. ``native``: the call went to the driver, so any exception it
        raises is a driver error."""
        self._check_usable()
        if self._deferred:
            await self._flush_deferred()
        self._busy = True
        try:
            return await call()
        except Exception as exc:
            if native:
                raise self._native_failure(exc, nowait, tolerate) from exc
            if isinstance(exc, sa_exc.SQLAlchemyError):
                raise self._failed(self._classify(exc, nowait=nowait), tolerate) from exc
            self.fail(DatabaseError(f"{describe(statement)!r} raised {exc!r}"))
            raise
        except BaseException as exc:
            # Cancelled or timed out mid-statement: the reply may still be on the wire and
            # the statement may still run on the server: the connection cannot be trusted.
            self._state.interrupt(exc, statement)
            raise
        finally:
            self._busy = False

    def _check_usable(self) -> None:
        if self._phase is not _Phase.ACTIVE or self._conn is None:
            raise SessionStateError(
                "DbSession is not active; use it inside 'async with DbSession(engine) as s'"
            )
        if self._busy:
            raise SessionStateError(
                "DbSession is already running a statement; a session is not safe to "
                "share between tasks, give each task its own DbSession"
            )
        state = self._state
        if state.interruption is not None:
            raise SessionStateError(
                f"a statement of this DbSession was interrupted ({state.interrupted_statement}); "
                "its connection is discarded and nothing will be committed: start a new "
                "DbSession"
            )
        if state.failure is not None:
            raise RollbackOnlyError(
                f"DbSession is rollback-only after an earlier error ({state.failure}); "
                "start a new DbSession, or use session.savepoint() for expected failures",
                errno=state.failure.errno,
                sqlstate=state.failure.sqlstate,
            ) from state.failure

    def _classify(self, exc: BaseException, *, nowait: bool = False) -> ClassifiedError:
        """Classify an error from SQLAlchemy or from the driver itself."""
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return self.dialect.classify_exception(exc, nowait=nowait)
        return self.dialect.classify_driver_exception(exc, nowait=nowait)

    def _native_failure(
        self, exc: Exception, nowait: bool, tolerate: ErrorKind | None
    ) -> DatabaseError:
        """The library error for an exception the driver raised (the connection counts as
        lost when the driver reports it closed, whatever the error said)."""
        info = self._classify(exc, nowait=nowait)
        executor = self._conn.executor if self._conn is not None else None
        if executor is not None and executor.is_closed():
            info = dataclasses.replace(info, kind=ErrorKind.DISCONNECT)
        return self._failed(info, tolerate)

    def _failed(self, info: ClassifiedError, tolerate: ErrorKind | None) -> DatabaseError:
        error = self.dialect.build_error(info)
        if info.kind is ErrorKind.DISCONNECT:
            self._state.broken = True
        if info.kind is tolerate and self.dialect.keeps_transaction_usable(info.kind):
            return error
        self._state.fail(error)
        if self.dialect.aborts_transaction(info.kind):
            self._state.transaction_lost = True
        return error

    def _active(self) -> SessionConnection:
        """The connection, for calls already admitted by _check_usable."""
        assert self._conn is not None
        return self._conn

    def _connect_error(self, exc: Exception) -> DatabaseError:
        if isinstance(exc, sa_exc.TimeoutError):  # the pool's own limit, not the server
            return DatabaseUnavailableError(
                f"no connection of the engine's pool became free in time ({exc}); raise "
                "pool_size / max_overflow, or run fewer sessions at once"
            )
        url = self.engine.url.render_as_string(hide_password=True)
        return self.dialect.build_connect_error(self._classify(exc), url)

    # -- deferred writes ---------------------------------------------------------------------

    async def _flush_deferred(self) -> list[int]:
        pending = self._deferred.take()
        counts: list[int] = []
        try:
            for trip in round_trips(pending):
                if isinstance(trip, DeferredWrite):
                    counts.append((await self.run(trip.sql, trip.params)).rowcount)
                else:
                    await self._run_rendered(trip, counts)
        except DatabaseError as error:
            name_failed_write(error, pending, len(counts))
            raise
        return counts

    async def _run_rendered(self, script: list[str], counts: list[int]) -> None:
        conn = self._conn
        assert conn is not None
        executor = conn.executor
        assert executor is not None
        conn.direct_used = True
        await self._guard(
            lambda: executor.execute_rendered(script, counts), script[0], False, None, True
        )

    def _can_carry_with_commit(self) -> bool:
        """Whether the deferred writes can share the COMMIT's round trip: all SQL text on
        the driver path, within one round trip, SQLAlchemy not holding the transaction."""
        conn = self._conn
        return (
            conn is not None
            and conn.executor is not None
            and conn.sqlalchemy_connection is None
            and self._deferred.fits_one_trip()
        )

    # -- the end ---------------------------------------------------------------------------

    async def _finish(self, *, body_failed: bool, carried: Sequence[DeferredWrite] = ()) -> None:
        """End the transaction and give the connection back. Runs in its own task (see
        run_to_completion)."""
        self._phase = _Phase.CLOSING
        self._deferred.take()  # sent with the COMMIT (``carried``), or dropped
        try:
            if self._conn is None:
                return
            ending = TransactionEnd(
                self._conn,
                self._state,
                self.dialect,
                cleanup_timeout=self._cleanup_timeout,
                restore_sql=self._restore_sql,
                lease=self._lease,
                metrics=self.metrics,
                operation=self.operation,
                started=self._started,
            )
            await ending.finish(body_failed=body_failed, carried=carried)
        finally:
            self._phase = _Phase.CLOSED
