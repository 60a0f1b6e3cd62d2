"""Unit tests of the MySQL/MariaDB dialect layer: error classification by errno (including
MySQL 8 codes the machine's MariaDB cannot produce), SQL fragments and capability checks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from safesync_async import (
    ConfigurationError,
    DatabaseDisconnectError,
    DatabaseError,
    DeadlockError,
    DuplicateKeyError,
    LockNotAvailableError,
    LockWaitTimeoutError,
    RetryableTransactionError,
    SerializationError,
    StatementTimeoutError,
)
from safesync_async.db.dialects import ErrorKind, dialect_for
from safesync_async.db.dialects.mysql import MySQLDialect

DIALECT = MySQLDialect()


class FakeDriverError(Exception):
    """Shaped like asyncmy / PyMySQL errors: args = (errno, message)."""


def _wrapped(errno: int, message: str, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    error = sa_exc.OperationalError("SELECT 1", {}, FakeDriverError(errno, message))
    error.connection_invalidated = invalidated
    return error


@pytest.mark.parametrize(
    ("errno", "expected", "retryable"),
    [
        (1213, DeadlockError, True),
        (3058, DeadlockError, True),  # MySQL user-level lock deadlock
        (1205, LockWaitTimeoutError, True),
        (1020, SerializationError, True),  # MariaDB innodb_snapshot_isolation
        (3572, LockNotAvailableError, False),  # MySQL NOWAIT
        (1062, DuplicateKeyError, False),
        (1586, DuplicateKeyError, False),
        (1969, StatementTimeoutError, False),  # MariaDB max_statement_time
        (3024, StatementTimeoutError, False),  # MySQL max_execution_time
        (2013, DatabaseDisconnectError, False),
        (4031, DatabaseDisconnectError, False),  # MySQL 8 client interaction timeout
        (1927, DatabaseDisconnectError, False),  # MariaDB connection killed
        (1146, DatabaseError, False),
    ],
)
def test_errno_classification(errno: int, expected: type[Exception], retryable: bool) -> None:
    """Each server errno maps to exactly the documented exception class."""
    error = DIALECT.build_error(DIALECT.classify_exception(_wrapped(errno, "server says no")))
    assert type(error) is expected
    assert error.errno == errno
    assert isinstance(error, RetryableTransactionError) is retryable
    assert f"MySQL error {errno}" in str(error)


def test_nowait_lock_wait_timeout_is_lock_not_available() -> None:
    """MariaDB reports a NOWAIT failure as 1205; under nowait it is LockNotAvailable."""
    info = DIALECT.classify_exception(_wrapped(1205, "Lock wait timeout exceeded"), nowait=True)
    assert info.kind is ErrorKind.LOCK_NOT_AVAILABLE


def test_invalidated_connection_is_a_disconnect() -> None:
    """Whatever the errno, an error that invalidated the connection is a disconnect."""
    info = DIALECT.classify_exception(_wrapped(1146, "x", invalidated=True))
    assert info.kind is ErrorKind.DISCONNECT


def test_non_driver_errors_are_other() -> None:
    """SQLAlchemy errors without a driver error (e.g. a missing bind value) are plain
    DatabaseErrors without errno."""
    info = DIALECT.classify_exception(sa_exc.InvalidRequestError("missing parameter"))
    assert info.kind is ErrorKind.OTHER and info.errno is None


@pytest.mark.parametrize(
    ("message", "constraint"),
    [
        ("Duplicate entry '1' for key 'PRIMARY'", "PRIMARY"),  # MariaDB
        ("Duplicate entry 'a' for key 'orders.uq_ref'", "uq_ref"),  # MySQL 8 prefixes the table
        ("Duplicate entry", None),
    ],
)
def test_duplicate_key_names_the_constraint(message: str, constraint: str | None) -> None:
    """The violated key is reported for both servers' message formats."""
    error = DIALECT.build_error(DIALECT.classify_exception(_wrapped(1062, message)))
    assert isinstance(error, DuplicateKeyError)
    assert error.constraint == constraint


def test_transaction_scope_of_errors() -> None:
    """Deadlocks, snapshot conflicts and disconnects end the transaction; duplicate keys and
    lock timeouts undo only the statement."""
    assert DIALECT.aborts_transaction(ErrorKind.DEADLOCK)
    assert DIALECT.aborts_transaction(ErrorKind.SERIALIZATION)
    assert not DIALECT.aborts_transaction(ErrorKind.LOCK_WAIT_TIMEOUT)
    assert DIALECT.keeps_transaction_usable(ErrorKind.DUPLICATE_KEY)
    assert not DIALECT.keeps_transaction_usable(ErrorKind.DEADLOCK)


def test_sql_fragments() -> None:
    """Isolation applies to the next transaction only; the lock wait timeout is whole seconds,
    at least 1, saved and restored."""
    assert DIALECT.isolation_level_sql("read_committed") == (
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
    )
    with pytest.raises(ConfigurationError):
        DIALECT.isolation_level_sql("SNAPSHOT")
    set_sql, restore_sql = DIALECT.lock_timeout_sql(0.2)
    assert set_sql.endswith("SESSION innodb_lock_wait_timeout = 1")
    assert restore_sql is not None
    assert "@safesync_saved_lock_wait_timeout" in restore_sql
    assert DIALECT.lock_timeout_sql(2.5)[0].endswith("= 3")
    assert DIALECT.kill_session_sql(42) == "KILL CONNECTION 42"


def _sa_dialect(version: tuple[int, ...], mariadb: bool) -> Any:
    return SimpleNamespace(name="mysql", server_version_info=version, is_mariadb=mariadb)


@pytest.mark.parametrize(
    ("version", "mariadb", "nowait_ok", "skip_ok"),
    [
        ((8, 0, 0), False, False, False),
        ((8, 0, 1), False, True, True),
        ((8, 4, 2), False, True, True),
        ((10, 2, 40), True, False, False),
        ((10, 3, 0), True, True, False),
        ((10, 6, 0), True, True, True),
        ((10, 11, 9), True, True, True),
    ],
)
def test_row_lock_capabilities(
    version: tuple[int, ...], mariadb: bool, nowait_ok: bool, skip_ok: bool
) -> None:
    """NOWAIT / SKIP LOCKED are refused up front on servers that lack them."""
    sa_dialect = _sa_dialect(version, mariadb)
    for option, ok in (("nowait", nowait_ok), ("skip_locked", skip_ok)):
        kwargs = {"nowait": option == "nowait", "skip_locked": option == "skip_locked"}
        if ok:
            DIALECT.check_row_lock_options(sa_dialect, **kwargs)
        else:
            with pytest.raises(ConfigurationError):
                DIALECT.check_row_lock_options(sa_dialect, **kwargs)


def test_unsupported_backend_is_a_clear_error() -> None:
    """An engine for a backend without a dialect module is refused with the supported list."""
    with pytest.raises(ConfigurationError, match="not supported"):
        dialect_for(SimpleNamespace(name="oracle"))  # type: ignore[arg-type]
