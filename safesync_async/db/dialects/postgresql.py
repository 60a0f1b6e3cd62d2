"""PostgreSQL 13+ through asyncpg (via SQLAlchemy's asyncpg dialect)."""

from __future__ import annotations

import math

from sqlalchemy.engine import Dialect as SADialect

from ..lock_names import LockKey, lock_digest
from .base import AdvisoryLockSql, ClassifiedError, Dialect, ErrorKind

# SQLSTATE codes, one table (see docs/backends.md).
_SQLSTATE_KINDS: dict[str, ErrorKind] = {
    "40P01": ErrorKind.DEADLOCK,  # deadlock_detected
    "40001": ErrorKind.SERIALIZATION,  # serialization_failure
    "55P03": ErrorKind.LOCK_WAIT_TIMEOUT,  # lock_not_available: lock_timeout or NOWAIT
    "23505": ErrorKind.DUPLICATE_KEY,  # unique_violation
    "57014": ErrorKind.STATEMENT_TIMEOUT,  # query_canceled: statement_timeout or cancel
    # Outages: the server cannot take this now, whatever the statement (docs/errors.md).
    "25006": ErrorKind.UNAVAILABLE,  # read_only_sql_transaction (a standby, a failover)
    "53000": ErrorKind.UNAVAILABLE,  # insufficient_resources
    "53100": ErrorKind.UNAVAILABLE,  # disk_full
    "53200": ErrorKind.UNAVAILABLE,  # out_of_memory
    "53300": ErrorKind.UNAVAILABLE,  # too_many_connections
    "53400": ErrorKind.UNAVAILABLE,  # configuration_limit_exceeded
    "58030": ErrorKind.UNAVAILABLE,  # io_error
    "57P01": ErrorKind.DISCONNECT,  # admin_shutdown (terminated backend)
    "57P02": ErrorKind.DISCONNECT,  # crash_shutdown
    "57P03": ErrorKind.DISCONNECT,  # cannot_connect_now (starting up, shutting down)
    "57P05": ErrorKind.DISCONNECT,  # idle_session_timeout
}
# What to check when connecting failed.
_CONNECT_HINTS: dict[str, str] = {
    "28P01": "check the user name and password in the URL",
    "28000": "the server refused this user from this host: check pg_hba.conf and the URL",
    "3D000": "the database does not exist: create it or fix the name in the URL",
    "53300": "the server has no connection left (max_connections)",
    "57P03": "the server is starting up or shutting down",
}
# Waits on the named lock with lock_timeout set for this statement only: the FROM item
# (kept from being flattened by OFFSET 0) reads the previous value first, and the select
# list, evaluated left to right, sets the bound, waits, and restores it.
_ADVISORY_WAIT = (
    "SELECT set_config('lock_timeout', :wait, true), pg_advisory_xact_lock(:k), "
    "set_config('lock_timeout', previous.setting, true) "
    "FROM (SELECT current_setting('lock_timeout') AS setting OFFSET 0) AS previous"
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
        constraint = None
        for source in (driver_error, getattr(driver_error, "orig", None), driver_error.__cause__):
            constraint = constraint or getattr(source, "constraint_name", None)
        return ClassifiedError(kind, None, sqlstate, str(driver_error), constraint)

    def aborts_transaction(self, kind: ErrorKind) -> bool:
        return kind is ErrorKind.DISCONNECT  # anything else a savepoint can undo

    def keeps_transaction_usable(self, kind: ErrorKind) -> bool:
        return False  # an error aborts the transaction: expected failures need savepoints

    def lock_timeout_sql(self, seconds: float) -> tuple[str, str | None]:
        # SET LOCAL ends with the transaction: nothing to restore.
        return f"SET LOCAL lock_timeout = '{max(1, math.ceil(seconds * 1000))}ms'", None

    def check_row_lock_options(
        self, sa_dialect: SADialect, *, nowait: bool, skip_locked: bool
    ) -> None:
        return None  # NOWAIT since 8.1, SKIP LOCKED since 9.5

    def advisory_lock_sql(self, key: LockKey, name: str, wait: float) -> AdvisoryLockSql:
        # One round trip either way: a try when there is no wait; else the wait itself,
        # bounded on the server (a timeout is an error, so the transaction is aborted).
        key64 = advisory_key64(key)
        if wait == 0:
            return AdvisoryLockSql(
                statement="SELECT pg_try_advisory_xact_lock(:k)",
                params={"k": key64},
                answers=True,
                outlives_transaction=False,
            )
        return AdvisoryLockSql(
            statement=_ADVISORY_WAIT,
            params={"wait": f"{max(1, math.ceil(wait * 1000))}ms", "k": key64},
            answers=False,
            outlives_transaction=False,
        )

    def release_advisory_locks_sql(self) -> str | None:
        return None  # transaction-scoped advisory locks end with the transaction

    def kill_session_sql(self, session_id: int) -> str:
        return f"SELECT pg_terminate_backend({int(session_id)})"

    def is_unknown_session(self, info: ClassifiedError) -> bool:
        return False  # pg_terminate_backend returns false instead of failing

    def connect_hint(self, info: ClassifiedError) -> str:
        found = _CONNECT_HINTS.get(info.sqlstate or "")
        return found if found is not None else super().connect_hint(info)

    def insert_skipping_duplicates_sql(self, insert_sql: str) -> str | None:
        # ON CONFLICT DO NOTHING: no error, so no savepoint round trips.
        return f"{insert_sql} ON CONFLICT DO NOTHING"
