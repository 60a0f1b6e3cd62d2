"""DbSession: one pooled connection, one transaction, safe cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import Executable
from sqlalchemy.util import greenlet_spawn

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
from .dialects import ClassifiedError, Dialect, DirectExecutor, ErrorKind, dialect_for
from .lease import ConnectionLease
from .rows import Rows

__all__ = ["DbSession", "Params", "Statement", "TransactionOutcome"]

_log = logging.getLogger("safesync_async.db.session")

Statement = str | Executable
Params = Mapping[str, Any] | None
_T = TypeVar("_T")

# Bound on killing, from another connection, a statement left running by an interruption.
_KILL_TIMEOUT = 2.0
#: Bound in seconds on each cleanup statement (COMMIT, ROLLBACK, lock release) by default.
DEFAULT_CLEANUP_TIMEOUT = 30.0
#: Most statements a session holds deferred; beyond, defer() asks for a flush().
MAX_DEFERRED = 10_000
# Most SQL text sent in one round trip when deferred statements are flushed.
_ROUND_TRIP_BYTES = 512 * 1024


class TransactionOutcome(enum.Enum):
    """How a :class:`DbSession`'s transaction ended, known even when the task was
    cancelled meanwhile (``session.outcome``)."""

    OPEN = "open"  #: not ended yet
    COMMITTED = "committed"  #: the COMMIT was confirmed by the server
    ROLLED_BACK = "rolled_back"  #: rolled back, or never committed (nothing persisted)
    UNKNOWN = "unknown"  #: COMMIT sent, no answer: it may or may not have persisted


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


@functools.lru_cache(maxsize=2048)
def _text(sql: str) -> sa.TextClause:
    return sa.text(sql)


@functools.lru_cache(maxsize=2048)
def _compiled_text(sql: str, dialect: SADialect) -> tuple[str, tuple[str, ...] | None]:
    """SQL text with ``:name`` parameters compiled for the driver: the query string and,
    for positional paramstyles, the parameter names in order (None: pass a dict)."""
    compiled = _text(sql).compile(dialect=dialect)
    names = tuple(compiled.positiontup) if compiled.positiontup is not None else None
    return compiled.string, names


class _Deferred:
    """A statement waiting for the next flush; ``rendered`` when it can share a round trip."""

    __slots__ = ("params", "rendered", "sql")

    def __init__(self, sql: Statement, params: Params, rendered: str | None) -> None:
        self.sql = sql
        self.params = params
        self.rendered = rendered


def _round_trips(pending: list[_Deferred]) -> Iterator[list[str] | _Deferred]:
    """Deferred statements as they are sent: consecutive rendered ones together (up to
    _ROUND_TRIP_BYTES of text), any other alone."""
    script: list[str] = []
    size = 0
    for item in pending:
        if script and (item.rendered is None or size >= _ROUND_TRIP_BYTES):
            yield script
            script, size = [], 0
        if item.rendered is None:
            yield item
        else:
            script.append(item.rendered)
            size += len(item.rendered)
    if script:
        yield script


def _name_failed_deferred(error: DatabaseError, pending: Sequence[_Deferred], done: int) -> None:
    """Note on ``error`` which deferred statement failed (after ``done`` had succeeded)."""
    failed = pending[min(done, len(pending) - 1)]
    error.add_note(f"raised by deferred statement {done + 1} of {len(pending)}: {failed.sql}")


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

    SQL text runs straight on the driver connection (compiled once per distinct
    text); SQLAlchemy constructs run through SQLAlchemy. Both share the transaction.
    Writes whose results are not needed can be :meth:`defer`-red: they are sent
    together, in one round trip where the driver allows it, before the next statement
    or the commit. A DbSession is single-use and is not safe to share between tasks.

    Args:
        engine: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (MySQL, MariaDB or
            PostgreSQL);
            :func:`safesync_async.create_engine` makes one tuned for sessions.
        isolation_level: isolation of this transaction only, e.g. ``"READ COMMITTED"``.
        lock_timeout: server-side row lock wait bound in seconds (MySQL rounds up to
            whole seconds). Restored before the connection returns to the pool.
        operation: a low-cardinality name for metrics, e.g. ``"transfer"``.
        cleanup_timeout: bound in seconds on each cleanup statement (COMMIT,
            ROLLBACK, lock release).
        registry: Prometheus registry; ``None`` disables metrics.
        lease: take the connection from a :class:`ConnectionLease` (and leave it there)
            instead of the pool, for tasks that run many short sessions in a row.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        isolation_level: str | None = None,
        lock_timeout: float | None = None,
        operation: str = "default",
        cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT,
        registry: RegistryArg = DEFAULT_REGISTRY,
        lease: ConnectionLease | None = None,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"DbSession needs a sqlalchemy AsyncEngine, got {type(engine).__name__}; "
                "create one with safesync_async.create_engine()"
            )
        _check_seconds("lock_timeout", lock_timeout, allow_none=True)
        _check_seconds("cleanup_timeout", cleanup_timeout, allow_none=False)
        if lease is not None and lease.engine is not engine:
            raise ConfigurationError("the ConnectionLease belongs to another engine")
        self._engine = engine
        self._lease = lease
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
        self._fairy: PoolProxiedConnection | None = None
        self._sa_conn: AsyncConnection | None = None
        self._direct: DirectExecutor | None = None
        self._direct_used = False
        self._server_session_id: int | None = None
        self._failure: DatabaseError | None = None
        self._deferred: list[_Deferred] = []
        self._transaction_lost = False
        self._interrupted = False
        self._broken = False
        self._busy = False
        self._holds_named_locks = False
        self._server_unreachable = False
        self._started = 0.0
        self._outcome = TransactionOutcome.OPEN

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
            # The pool's own checkout (events, liveness checks) without a SQLAlchemy
            # Connection: one is built only if a SQLAlchemy construct is executed.
            if self._lease is not None:
                self._fairy = await self._lease.checkout()
            else:
                self._fairy = await greenlet_spawn(self._engine.sync_engine.raw_connection)
        except Exception as exc:
            self._state = _State.CLOSED
            raise self._dialect.build_error(self._classify(exc)) from exc
        except BaseException:
            self._state = _State.CLOSED
            raise
        try:
            self._server_session_id, self._direct = driver_state(self._dialect, self._fairy)
            for sql in self._setup_sql:
                await self._execute(sql)
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
        carried: Sequence[_Deferred] = ()
        if exc is None and self._deferred and not self.is_rollback_only:
            if self._can_carry_with_commit():
                carried = self._deferred
            else:
                try:
                    await self.flush()  # like the body's own statements: interruptible
                except BaseException:
                    await run_to_completion(self._finish(body_failed=True))
                    raise
        await run_to_completion(self._finish(body_failed=exc is not None, carried=carried))

    # -- statements --------------------------------------------------------------

    async def execute(self, sql: Statement, params: Params = None) -> int:
        """Run a statement; return the number of rows it *matched* (not changed).

        SQLAlchemy's MySQL dialects set CLIENT_FOUND_ROWS, so an UPDATE that
        leaves a row unchanged still counts it.
        """
        return (await self._execute(sql, params)).rowcount

    async def fetch_one(self, sql: Statement, params: Params = None) -> dict[str, Any] | None:
        """Return the only row as a dict, ``None`` if there is none.

        Raises :class:`MultipleRowsError` if the query returns more than one row.
        """
        rows = (await self._execute(sql, params)).dicts(limit=2)
        if len(rows) > 1:
            raise MultipleRowsError(
                "fetch_one expected at most one row and got more; narrow the WHERE "
                "clause or use fetch_all"
            )
        return rows[0] if rows else None

    async def fetch_all(self, sql: Statement, params: Params = None) -> list[dict[str, Any]]:
        """Return every row as a list of dicts."""
        return (await self._execute(sql, params)).dicts()

    async def execute_scalar(self, sql: Statement, params: Params = None) -> Any:
        """Return the first column of the first row, or ``None`` if there is no row."""
        return (await self._execute(sql, params)).scalar()

    def defer(self, sql: Statement, params: Params = None) -> None:
        """Queue a write whose result is not needed now, to be sent with others.

        Deferred statements run, in the order they were deferred, before the next
        statement of the session (through any method), before a savepoint begins or
        ends, at :meth:`flush`, and before the commit. On MySQL and MariaDB (asyncmy),
        consecutive SQL texts share one round trip (a multi-statement query), and
        those still waiting at the end travel with the COMMIT, so a unit of work made
        of N independent writes costs one round trip instead of N + 1; elsewhere, and
        for SQLAlchemy constructs, they run one by one at those points. A round trip
        that carries the COMMIT *is* the commit: cancellation does not interrupt it,
        ``cleanup_timeout`` bounds it, and an answer that never comes raises
        :class:`CommitOutcomeUnknownError`.

        A deferred statement that fails raises *there*: from the statement that
        flushed it, or from the ``async with`` exit instead of committing. The session
        is then rollback-only as after any failed statement, and the statements
        deferred after the failing one are not run. On MySQL and MariaDB the
        parameters are bound at once (a missing one raises here). Give one statement
        per call.
        """
        self._usable()
        if len(self._deferred) >= MAX_DEFERRED:
            raise SessionStateError(
                f"{MAX_DEFERRED} statements are already deferred; await session.flush() "
                "before deferring more"
            )
        rendered = None
        direct = self._direct
        if direct is not None and isinstance(sql, str):
            query, args = self._driver_query(sql, params)
            rendered = direct.render(query, args)
        else:
            _executable(sql)  # reject what cannot be executed now, not at the flush
        self._deferred.append(_Deferred(sql, params, rendered))

    async def flush(self) -> list[int]:
        """Run the deferred statements now; the number of rows each one matched."""
        self._usable()
        pending, self._deferred = self._deferred, []
        counts: list[int] = []
        try:
            for group in _round_trips(pending):
                if isinstance(group, _Deferred):
                    counts.append(await self.execute(group.sql, group.params))
                else:
                    await self._run_rendered(group, counts)
        except DatabaseError as error:
            _name_failed_deferred(error, pending, len(counts))
            raise
        return counts

    @property
    def connection(self) -> AsyncConnection:
        """The underlying :class:`AsyncConnection`, for what the helpers do not cover.

        Statements run on it directly bypass the rollback-only bookkeeping; do not
        commit or roll back through it.
        """
        self._usable()
        if self._deferred:
            raise SessionStateError(
                "statements are deferred; await session.flush() before using "
                "session.connection, so that they run first"
            )
        return self._connection()

    @property
    def server_unreachable(self) -> bool:
        """True if, cleaning up after an interrupted statement, the server could not be
        reached even from a new connection: the failure was the database's, not the
        caller's (a queue consumer then keeps the message without spending a delivery)."""
        return self._server_unreachable

    @property
    def outcome(self) -> TransactionOutcome:
        """How the transaction ended: readable after the ``async with`` block, also when
        the task was cancelled during the COMMIT (which is completed, not abandoned)."""
        return self._outcome

    @property
    def is_rollback_only(self) -> bool:
        """True once a statement has failed outside a savepoint."""
        return self._failure is not None or self._interrupted or self._broken

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction for statements that are expected to fail.

        If the block raises, changes since the savepoint are undone, the session
        stays usable and the exception propagates. An error that ends the whole
        transaction on the server (a deadlock, a lost connection) still makes the
        session rollback-only.
        """
        nested = await self._guard(lambda: self._connection().begin_nested())
        try:
            yield
            await self.flush()  # writes deferred inside the savepoint belong to it
        except Exception:
            if self._transaction_lost or self._interrupted or self._broken:
                raise
            failure = self._failure
            self._failure = None
            try:
                await run_to_completion(self._guard(nested.rollback))
            except BaseException:
                self._failure = self._failure or failure
                raise
            raise
        else:
            await self._guard(nested.commit)

    # -- internals used by the primitives -----------------------------------------

    @property
    def dialect(self) -> Dialect:
        """The backend layer in use (internal API for the primitives)."""
        return self._dialect

    @property
    def sa_dialect(self) -> SADialect:
        return self._engine.dialect

    @property
    def db_system(self) -> str:
        """The database system name for tracing ("mariadb", "mysql", ...)."""
        dialect = self._engine.dialect
        return "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name

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
    ) -> Rows:
        """Run one statement with the session's error bookkeeping."""
        direct = self._direct
        if direct is not None and isinstance(sql, str):
            query, args = self._driver_query(sql, params)
            self._direct_used = True
            return await self._guard(
                lambda: direct.execute(query, args), nowait=nowait, tolerate=tolerate, native=True
            )
        statement = _executable(sql)

        async def through_sqlalchemy() -> Rows:
            conn = self._connection()
            result = await (conn.execute(statement, params) if params else conn.execute(statement))
            return Rows.from_result(result)

        return await self._guard(through_sqlalchemy, nowait=nowait, tolerate=tolerate)

    def _driver_query(self, sql: str, params: Params) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        """SQL text and parameters in the driver's own form."""
        query, names = _compiled_text(sql, self._engine.dialect)
        if names is None:
            return query, dict(params or {})
        try:
            return query, tuple([params[name] for name in names]) if names else ()  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise DatabaseError(f"missing value for a bind parameter of {sql!r}: {exc!r}") from None

    async def _run_rendered(self, script: list[str], counts: list[int]) -> None:
        direct = self._direct
        assert direct is not None
        self._direct_used = True
        await self._guard(lambda: direct.execute_rendered(script, counts), native=True)

    async def _guard(
        self,
        call: Callable[[], Awaitable[_T]],
        *,
        nowait: bool = False,
        tolerate: ErrorKind | None = None,
        native: bool = False,
    ) -> _T:
        """Run one database call: refuse it if the session cannot take it, classify
        failures, and record what they mean for the transaction and the connection.
        ``native`` says the call went to the driver directly rather than SQLAlchemy, so
        any exception it raises is a driver error. Deferred statements run first."""
        self._usable()
        if self._deferred:
            await self.flush()
        self._busy = True
        try:
            return await call()
        except Exception as exc:
            if not native and not isinstance(exc, sa_exc.SQLAlchemyError):
                raise
            raise self._failed(self._classify(exc, nowait=nowait), tolerate) from exc
        except BaseException:
            # Cancelled or timed out mid-statement: the reply may still be on the wire,
            # so the connection cannot be trusted.
            self._interrupted = True
            raise
        finally:
            self._busy = False

    def _classify(self, exc: Exception, *, nowait: bool = False) -> ClassifiedError:
        """Classify an error from SQLAlchemy or from the driver itself."""
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return self._dialect.classify_exception(exc, nowait=nowait)
        return self._dialect.classify_driver_exception(exc, nowait=nowait)

    def _failed(self, info: ClassifiedError, tolerate: ErrorKind | None) -> DatabaseError:
        error = self._dialect.build_error(info)
        if info.kind is ErrorKind.DISCONNECT:
            self._broken = True
        if info.kind is tolerate and self._dialect.keeps_transaction_usable(info.kind):
            return error
        self._fail(error)
        if self._dialect.aborts_transaction(info.kind):
            self._transaction_lost = True
        return error

    def _connection(self) -> AsyncConnection:
        """A SQLAlchemy connection over the session's pooled connection, made on first
        use (for calls already admitted by :meth:`_guard`)."""
        if self._sa_conn is None:
            assert self._fairy is not None
            self._sa_conn = AsyncConnection(
                self._engine, Connection(self._engine.sync_engine, connection=self._fairy)
            )
        return self._sa_conn

    def _usable(self) -> None:
        if self._state is not _State.ACTIVE or self._fairy is None:
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

    # -- cleanup -----------------------------------------------------------------

    async def _finish(self, *, body_failed: bool, carried: Sequence[_Deferred] = ()) -> None:
        """End the transaction, reset the connection, return it to the pool.

        Runs in its own task (see run_to_completion) so cancellation cannot cut it
        short. ``carried``: deferred statements sent in the COMMIT's round trip. Raises
        only for outcomes the caller must see: a refused or failed commit.
        """
        self._state = _State.CLOSING
        self._deferred = []  # sent with the COMMIT (``carried``), or dropped
        outcome = "rolled_back"
        try:
            if self._fairy is None:
                return
            if self._interrupted or self._broken or not self._connection_valid():
                await self._discard("interrupted" if self._interrupted else "disconnected")
            elif body_failed or self._failure is not None:
                await self._rollback()
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
                await self._commit(carried)
                outcome = "committed"
        except CommitOutcomeUnknownError:
            outcome = "commit_unknown"
            raise
        finally:
            self._outcome = _OUTCOMES.get(outcome, TransactionOutcome.ROLLED_BACK)
            try:
                if self._fairy is not None:
                    await self._reset_connection()
                    await self._release()
            finally:
                self._state = _State.CLOSED
                self._metrics.inc("transactions", self._operation, outcome)
                self._metrics.observe(
                    "transaction_seconds", time.perf_counter() - self._started, self._operation
                )

    def _connection_valid(self) -> bool:
        if self._sa_conn is not None and self._sa_conn.invalidated:
            return False
        return self._fairy is not None and self._fairy.is_valid

    async def _release(self) -> None:
        """Give the connection back to the pool (SQLAlchemy discards it if invalidated),
        or to the lease."""
        if self._lease is not None and self._fairy is not None:
            self._lease.server_unreachable = self._server_unreachable
            await self._lease.release(self._fairy, self._sa_conn)
        elif self._sa_conn is not None:
            await self._sa_conn.close()
        elif self._fairy is not None:
            await greenlet_spawn(self._fairy.close)

    async def _end_transaction(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK through whichever layer holds the transaction."""
        sa_conn = self._sa_conn
        if sa_conn is not None and sa_conn.in_transaction():
            await (sa_conn.commit() if commit else sa_conn.rollback())
        elif self._direct is not None and self._direct_used:
            await (self._direct.commit() if commit else self._direct.rollback())

    def _can_carry_with_commit(self) -> bool:
        """Whether the deferred statements can share the COMMIT's round trip: all SQL text
        on the driver path, within one round trip, SQLAlchemy not holding the transaction."""
        if self._direct is None or self._sa_conn is not None:
            return False
        trips = list(_round_trips(self._deferred))
        return len(trips) == 1 and isinstance(trips[0], list)

    async def _commit(self, carried: Sequence[_Deferred]) -> None:
        """COMMIT, preceded in the same round trip by the ``carried`` deferred statements:
        that round trip is then the commit, bounded and not interruptible like it."""
        counts: list[int] = []
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                if carried:
                    assert self._direct is not None
                    self._direct_used = True
                    script = [item.rendered for item in carried if item.rendered is not None]
                    await self._direct.execute_rendered(script, counts, then_commit=True)
                else:
                    await self._end_transaction(commit=True)
        except TimeoutError as exc:
            self._interrupted = True
            await self._discard("commit_unknown")
            raise CommitOutcomeUnknownError(
                f"COMMIT got no answer within {self._cleanup_timeout} s; the transaction "
                "may or may not have been committed"
            ) from exc
        except Exception as exc:
            info = self._classify(exc)
            if info.kind is ErrorKind.DISCONNECT or not self._connection_valid():
                self._broken = True
                await self._discard("commit_unknown")
                raise CommitOutcomeUnknownError(
                    "the connection was lost during COMMIT; the transaction may or may not "
                    f"have been committed ({info.server_message})",
                    errno=info.errno,
                    sqlstate=info.sqlstate,
                ) from exc
            await self._rollback()
            error = self._dialect.build_error(info)
            if len(counts) < len(carried):
                _name_failed_deferred(error, carried, len(counts))
            raise error from exc

    async def _rollback(self) -> None:
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                await self._end_transaction(commit=False)
        except Exception as exc:
            _log.warning("rollback failed, discarding the connection: %r", exc)
            self._interrupted = self._interrupted or isinstance(exc, TimeoutError)
            await self._discard("rollback_failed")

    async def _reset_connection(self) -> None:
        """Undo what the session changed on the connection, or discard it."""
        if not (self._holds_named_locks or self._restore_sql is not None):
            return
        if not self._connection_valid():
            return
        statements = []
        release = self._dialect.release_advisory_locks_sql()
        if self._holds_named_locks and release is not None:
            statements.append(release)
        if self._restore_sql is not None:
            statements.append(self._restore_sql)
        if not statements:
            return
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                for sql in statements:
                    if self._direct is not None:
                        self._direct_used = True
                        await self._direct.execute(sql, ())
                    else:
                        await self._connection().exec_driver_sql(sql)
                await self._end_transaction(commit=False)
        except Exception as exc:
            _log.warning("could not reset the connection, discarding it: %r", exc)
            self._interrupted = True
            await self._discard("reset_failed")

    async def _discard(self, reason: str) -> None:
        """Invalidate the connection; if a statement may still be running on the server
        (the session was interrupted), end its server session from another connection."""
        self._metrics.inc("invalidations", reason)
        if self._connection_valid():
            with contextlib.suppress(Exception):
                if self._sa_conn is not None:
                    await self._sa_conn.invalidate()
                else:
                    assert self._fairy is not None
                    await greenlet_spawn(self._fairy.invalidate)
        if self._interrupted and self._server_session_id is not None:
            await self._kill_server_session(self._server_session_id)

    async def _kill_server_session(self, session_id: int) -> None:
        """Best effort, bounded: a healthy server answers in milliseconds, and the server's
        own lock wait timeout bounds what an unkilled statement can hold. A server that
        cannot be reached even from a fresh connection is noted (``server_unreachable``)."""
        sql = self._dialect.kill_session_sql(session_id)
        try:
            async with (
                asyncio.timeout(min(self._cleanup_timeout, _KILL_TIMEOUT)),
                self._engine.connect() as side,
            ):
                await side.exec_driver_sql(sql)
        except sa_exc.SQLAlchemyError as exc:
            info = self._dialect.classify_exception(exc)
            if info.kind is ErrorKind.DISCONNECT:
                self._server_unreachable = True
            if not self._dialect.is_unknown_session(info):
                _log.warning("could not kill server session %s: %s", session_id, exc)
        except TimeoutError:
            self._server_unreachable = True
            _log.warning("the server did not answer a KILL of session %s", session_id)


_OUTCOMES = {
    "committed": TransactionOutcome.COMMITTED,
    "commit_unknown": TransactionOutcome.UNKNOWN,
}


def driver_state(
    dialect: Dialect, connection: PoolProxiedConnection | ConnectionPoolEntry
) -> tuple[int | None, DirectExecutor | None]:
    """Server session id and direct executor of a pooled DBAPI connection, built once and
    kept in its ``info`` (which lives exactly as long as the DBAPI connection)."""
    info = connection.info
    state: tuple[int | None, DirectExecutor | None] | None = info.get("safesync_driver_state")
    if state is None:
        driver = connection.driver_connection
        state = info["safesync_driver_state"] = (
            dialect.server_session_id(driver),
            dialect.direct_executor(driver),
        )
    return state


def _check_seconds(name: str, value: float | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if type(value) is float and 0 < value < math.inf:
        return  # the common case, checked cheaply: sessions are made per message
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
