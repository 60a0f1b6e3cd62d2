"""PostgreSQL 13+ through asyncpg (via SQLAlchemy's asyncpg dialect)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Dialect as SADialect

from ...errors import ConfigurationError, LockWaitTimeoutError, StatementTimeoutError
from ..lock_names import LockKey, lock_digest
from .base import AdvisoryOutcome, ClassifiedError, Dialect, DirectExecutor, ErrorKind

if TYPE_CHECKING:
    from ..session import DbSession

# SQLSTATE codes, one table (see docs/backends.md).
_SQLSTATE_KINDS: dict[str, ErrorKind] = {
    "40P01": ErrorKind.DEADLOCK,  # deadlock_detected
    "40001": ErrorKind.SERIALIZATION,  # serialization_failure
    "55P03": ErrorKind.LOCK_WAIT_TIMEOUT,  # lock_not_available: lock_timeout or NOWAIT
    "23505": ErrorKind.DUPLICATE_KEY,  # unique_violation
    "57014": ErrorKind.STATEMENT_TIMEOUT,  # query_canceled: statement_timeout or cancel
    "57P01": ErrorKind.DISCONNECT,  # admin_shutdown (terminated backend)
    "57P02": ErrorKind.DISCONNECT,  # crash_shutdown
    "57P03": ErrorKind.DISCONNECT,  # cannot_connect_now
}
_ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)


def advisory_key64(key: LockKey) -> int:
    """The signed 64-bit advisory lock key for ``key`` (same hash as the MySQL names)."""
    return int.from_bytes(lock_digest(key)[:8], "big", signed=True)


class PostgreSQLDialect(Dialect):
    """PostgreSQL: SQLSTATE table, transaction-scoped settings and advisory locks.

    Differences from MySQL that callers can see: every error aborts the transaction until
    it is rolled back (or rolled back to a savepoint), so expected failures always go
    through a savepoint; named locks are ``pg_advisory_xact_lock`` on a 64-bit key and are
    released by the server when the transaction ends.
    """

    label = "PostgreSQL"
    connect_timeout_argument = "timeout"

    def classify(self, driver_error: BaseException, *, nowait: bool = False) -> ClassifiedError:
        sqlstate = getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
        if not isinstance(sqlstate, str):
            return ClassifiedError(ErrorKind.OTHER, None, None, str(driver_error))
        kind = _SQLSTATE_KINDS.get(sqlstate)
        if kind is None:
            kind = ErrorKind.DISCONNECT if sqlstate.startswith("08") else ErrorKind.OTHER
        if nowait and kind is ErrorKind.LOCK_WAIT_TIMEOUT:
            kind = ErrorKind.LOCK_NOT_AVAILABLE
        original = getattr(driver_error, "orig", None) or driver_error.__cause__
        constraint = getattr(original, "constraint_name", None)
        return ClassifiedError(kind, None, sqlstate, str(driver_error), constraint)

    def aborts_transaction(self, kind: ErrorKind) -> bool:
        return kind is ErrorKind.DISCONNECT  # anything else a savepoint can undo

    def keeps_transaction_usable(self, kind: ErrorKind) -> bool:
        return False  # an error aborts the transaction: expected failures need savepoints

    def isolation_level_sql(self, level: str) -> str:
        normalized = level.replace("_", " ").upper()
        if normalized not in _ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation level {level!r}; use one of {sorted(_ISOLATION_LEVELS)}"
            )
        return f"SET TRANSACTION ISOLATION LEVEL {normalized}"

    def lock_timeout_sql(self, seconds: float) -> tuple[str, str | None]:
        # SET LOCAL ends with the transaction: nothing to restore.
        return f"SET LOCAL lock_timeout = '{max(1, math.ceil(seconds * 1000))}ms'", None

    def check_row_lock_options(
        self, sa_dialect: SADialect, *, nowait: bool, skip_locked: bool
    ) -> None:
        return None  # NOWAIT since 8.1, SKIP LOCKED since 9.5

    async def acquire_advisory_lock(
        self, session: DbSession, key: LockKey, name: str, wait: float
    ) -> AdvisoryOutcome:
        key64 = advisory_key64(key)
        tried = await session._execute("SELECT pg_try_advisory_xact_lock(:k)", {"k": key64})
        if tried.scalar():
            return AdvisoryOutcome.ACQUIRED
        if wait == 0:
            return AdvisoryOutcome.TIMEOUT
        previous = (await session._execute("SELECT current_setting('lock_timeout')")).scalar()
        try:
            async with session.savepoint():
                # lock_timeout bounds the wait on the server; restored in the same statement.
                await session._execute(
                    "SELECT set_config('lock_timeout', :wait, true), "
                    "pg_advisory_xact_lock(:k), set_config('lock_timeout', :previous, true)",
                    {"wait": f"{max(1, math.ceil(wait * 1000))}ms", "k": key64,
                     "previous": previous},
                )  # fmt: skip
        except LockWaitTimeoutError:
            return AdvisoryOutcome.TIMEOUT
        except StatementTimeoutError:  # the wait was cancelled (pg_cancel_backend, timeout)
            return AdvisoryOutcome.FAILED
        return AdvisoryOutcome.ACQUIRED

    def release_advisory_locks_sql(self) -> str | None:
        return None  # transaction-scoped advisory locks end with the transaction

    def server_session_id(self, driver_connection: object) -> int | None:
        get_pid = getattr(driver_connection, "get_server_pid", None)
        value = get_pid() if callable(get_pid) else None
        return value if isinstance(value, int) else None

    def kill_session_sql(self, session_id: int) -> str:
        return f"SELECT pg_terminate_backend({int(session_id)})"

    def is_unknown_session(self, info: ClassifiedError) -> bool:
        return False  # pg_terminate_backend returns false instead of failing

    def direct_executor(self, driver_connection: object) -> DirectExecutor | None:
        return None  # asyncpg statements go through SQLAlchemy

    def insert_skipping_duplicates(self, table: Any, values: dict[str, Any]) -> Any | None:
        # ON CONFLICT DO NOTHING: no error, so no savepoint round trips.
        return pg_insert(table).values(**values).on_conflict_do_nothing()
