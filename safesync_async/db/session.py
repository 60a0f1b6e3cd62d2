"""DbSession: one pooled connection, one transaction, safe cleanup."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._validation import check_seconds
from ..errors import ConfigurationError, MultipleRowsError
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from ._core import TransactionCore
from ._deferred import MAX_DEFERRED
from ._state import TransactionOutcome
from ._statements import Params, Statement
from .dialects import Dialect, dialect_for
from .lease import ConnectionLease

__all__ = [
    "DEFAULT_CLEANUP_TIMEOUT",
    "MAX_DEFERRED",
    "DbSession",
    "Params",
    "SessionFactory",
    "Statement",
    "TransactionOutcome",
]

#: Bound in seconds on each cleanup statement (COMMIT, ROLLBACK, lock release) by default.
DEFAULT_CLEANUP_TIMEOUT = 30.0


class DbSession:
    """One connection and one transaction, as an async context manager.

    ``async with DbSession(engine) as session:`` checks a connection out of the
    engine's pool and begins a transaction. A clean exit commits; an exception
    rolls back and propagates. Either way the connection goes back to the pool
    with no transaction, no named lock and no changed session setting; if its
    state cannot be vouched for, it is invalidated (closed) instead.

    Guarantees:

    * **All or an exception.** A block that ends without an exception has everything
      it executed committed when ``async with`` returns, or the exit raises. After a
      statement failed (outside a savepoint), was interrupted (cancelled or timed out,
      even if the block caught that) or lost its connection, the commit is refused with
      :class:`RollbackOnlyError` naming why, so swallowing, say, a lock wait timeout
      or a :class:`DatabaseDisconnectError` can never persist half a unit of work, or
      silently none of it. Use :meth:`savepoint` around statements that are *expected*
      to fail.
    * **Cancellation-safe.** Cleanup (rollback, commit, lock release, restoring
      settings, return to the pool) runs to completion even if the task is
      cancelled, then the cancellation propagates, with a note giving the outcome.
      A statement interrupted by cancellation leaves the connection invalidated, and
      its server session is killed from a connection outside the pool, so it cannot
      keep holding locks even when the pool is exhausted.
    * **Known outcome.** :attr:`outcome` says how the transaction ended, also after a
      cancellation arrived during the COMMIT. If COMMIT was sent and no answer arrived
      (disconnect or ``cleanup_timeout``), :class:`CommitOutcomeUnknownError` is raised
      and ``outcome`` is ``UNKNOWN``.

    SQL text runs straight on the driver connection (compiled once per distinct
    text); SQLAlchemy constructs run through SQLAlchemy. Both share the transaction.
    Writes whose results are not needed can be :meth:`defer`-red: they are sent
    together, in one round trip where the driver allows it, before the next statement
    or the commit. A DbSession is single-use and is not safe to share between tasks.

    Args:
        engine: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (MySQL, MariaDB or
            PostgreSQL); :func:`safesync_async.create_engine` makes one tuned for sessions.
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

    __slots__ = ("_core",)

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
        check_seconds("lock_timeout", lock_timeout, allow_none=True)
        checked_cleanup = check_seconds("cleanup_timeout", cleanup_timeout)
        assert checked_cleanup is not None
        if lease is not None and lease.engine is not engine:
            raise ConfigurationError("the ConnectionLease belongs to another engine")
        dialect = dialect_for(engine.dialect)
        setup_sql: list[str] = []
        restore_sql = None
        if isolation_level is not None:
            setup_sql.append(dialect.isolation_level_sql(isolation_level))
        if lock_timeout is not None:
            set_sql, restore_sql = dialect.lock_timeout_sql(lock_timeout)
            setup_sql.append(set_sql)
        self._core = TransactionCore(
            engine,
            dialect,
            setup_sql=setup_sql,
            restore_sql=restore_sql,
            operation=operation,
            cleanup_timeout=checked_cleanup,
            metrics=metrics_for(registry),
            lease=lease,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> DbSession:
        await self._core.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._core.close(exc)

    # -- statements --------------------------------------------------------------

    async def execute(self, sql: Statement, params: Params = None) -> int:
        """Run a statement; return the number of rows it *matched* (not changed).

        SQLAlchemy's MySQL dialects set CLIENT_FOUND_ROWS, so an UPDATE that
        leaves a row unchanged still counts it.
        """
        return (await self._core.run(sql, params)).rowcount

    async def fetch_one(self, sql: Statement, params: Params = None) -> dict[str, Any] | None:
        """Return the only row as a dict, ``None`` if there is none.

        Raises :class:`MultipleRowsError` if the query returns more than one row.
        """
        rows = (await self._core.run(sql, params)).dicts(limit=2)
        if len(rows) > 1:
            raise MultipleRowsError(
                "fetch_one expected at most one row and got more; narrow the WHERE "
                "clause or use fetch_all"
            )
        return rows[0] if rows else None

    async def fetch_all(self, sql: Statement, params: Params = None) -> list[dict[str, Any]]:
        """Return every row as a list of dicts."""
        return (await self._core.run(sql, params)).dicts()

    async def execute_scalar(self, sql: Statement, params: Params = None) -> Any:
        """Return the first column of the first row, or ``None`` if there is no row."""
        return (await self._core.run(sql, params)).scalar()

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

        Only one INSERT, UPDATE, DELETE, REPLACE or MERGE statement (or one starting
        with WITH) per call is accepted, without ``;``, executable comments or
        backslashes in string literals: a deferred statement must not change how the
        server reads the ones after it (``SET sql_mode = ...`` would), because their
        parameters are bound now. Anything else raises :class:`ConfigurationError`.

        A deferred statement that fails raises *there*: from the statement that
        flushed it, or from the ``async with`` exit instead of committing. The session
        is then rollback-only as after any failed statement, and the statements
        deferred after the failing one are not run. Writes deferred inside a
        :meth:`savepoint` that rolls back are dropped, never sent. On MySQL and MariaDB
        the parameters are bound at once (a missing one raises here).
        """
        self._core.defer(sql, params)

    async def flush(self) -> list[int]:
        """Run the deferred statements now; the number of rows each one matched."""
        return await self._core.flush()

    @property
    def connection(self) -> AsyncConnection:
        """The underlying :class:`AsyncConnection`, for what the helpers do not cover.

        Statements run on it directly bypass the rollback-only bookkeeping; do not
        commit or roll back through it.
        """
        return self._core.sqlalchemy_connection()

    def savepoint(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A nested transaction for statements that are expected to fail.

        If the block raises, changes since the savepoint are undone (writes deferred
        inside it are dropped, not sent), the session stays usable and the exception
        propagates. An error that ends the whole transaction on the server (a
        deadlock, a lost connection) or an interrupted statement still makes the
        session rollback-only.
        """
        return self._core.savepoint()

    # -- state -------------------------------------------------------------------

    @property
    def outcome(self) -> TransactionOutcome:
        """How the transaction ended: ``OPEN`` until the ``async with`` block exits, then
        ``COMMITTED``, ``ROLLED_BACK`` or ``UNKNOWN`` (COMMIT sent, no answer). Also
        correct when the task was cancelled during the COMMIT, which is completed rather
        than abandoned: the cancellation then carries a note with the outcome."""
        return self._core.outcome

    @property
    def is_rollback_only(self) -> bool:
        """True once a statement has failed outside a savepoint, was interrupted, or lost
        the connection: the session can no longer commit."""
        return self._core.rollback_only

    @property
    def server_unreachable(self) -> bool:
        """True if, cleaning up after an interrupted statement, the server could not be
        reached even from a new connection: the failure was the database's, not the
        caller's (a queue consumer then keeps the message without spending a delivery)."""
        return self._core.server_unreachable

    # -- the library's interface to the session --------------------------------------------

    @property
    def core(self) -> TransactionCore:
        """The session's transaction, as the library's primitives use it (locks, OCC,
        idempotent inserts, inbox, outbox). Application code should not need it."""
        return self._core

    @property
    def dialect(self) -> Dialect:
        """The backend layer in use."""
        return self._core.dialect

    @property
    def sa_dialect(self) -> SADialect:
        """The SQLAlchemy dialect of the engine."""
        return self._core.sa_dialect

    @property
    def db_system(self) -> str:
        """The database system name for tracing ("mariadb", "mysql", "postgresql")."""
        return self._core.db_system


class SessionFactory:
    """Sessions with the same settings, checked once: for the queue consumer, which makes
    one per message. ``new(lease)`` is ``DbSession(engine, operation=..., registry=...,
    cleanup_timeout=..., lease=lease)`` without re-validating the arguments."""

    __slots__ = ("_cleanup_timeout", "_dialect", "_engine", "_metrics", "_operation")

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        operation: str,
        registry: RegistryArg = DEFAULT_REGISTRY,
        cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT,
    ) -> None:
        DbSession(engine, operation=operation, registry=registry, cleanup_timeout=cleanup_timeout)
        self._engine = engine
        self._dialect = dialect_for(engine.dialect)
        self._operation = operation
        self._metrics = metrics_for(registry)
        self._cleanup_timeout = float(cleanup_timeout)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def new(self, lease: ConnectionLease | None = None) -> DbSession:
        if lease is not None and lease.engine is not self._engine:
            raise ConfigurationError("the ConnectionLease belongs to another engine")
        session = DbSession.__new__(DbSession)
        session._core = TransactionCore(
            self._engine,
            self._dialect,
            setup_sql=(),
            restore_sql=None,
            operation=self._operation,
            cleanup_timeout=self._cleanup_timeout,
            metrics=self._metrics,
            lease=lease,
        )
        return session
