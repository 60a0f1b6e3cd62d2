"""What a database backend must provide: error classes, SQL fragments, capabilities.

The primitives (session, locks, OCC, idempotent insert) only talk to a
:class:`Dialect`; every error number and every piece of server-specific SQL lives
in one subclass per backend.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect as SADialect

from ... import errors
from ...errors import ConfigurationError
from ..lock_names import LockKey


class AdvisoryOutcome(enum.Enum):
    """What a named-lock request came to."""

    ACQUIRED = "acquired"
    TIMEOUT = "timeout"  # held elsewhere for the whole wait
    FAILED = "failed"  # the server reported an error or the wait was killed


class ErrorKind(enum.Enum):
    """How the library reacts to a database error, independent of the backend."""

    DEADLOCK = "deadlock"
    LOCK_WAIT_TIMEOUT = "lock_wait_timeout"
    SERIALIZATION = "serialization"
    LOCK_NOT_AVAILABLE = "lock_not_available"
    DUPLICATE_KEY = "duplicate_key"
    STATEMENT_TIMEOUT = "statement_timeout"
    UNAVAILABLE = "unavailable"  # an outage: read-only, too many connections, shutting down
    DISCONNECT = "disconnect"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ClassifiedError:
    """A driver error reduced to what the library needs to know about it."""

    kind: ErrorKind
    errno: int | None
    sqlstate: str | None
    server_message: str
    constraint: str | None = None


_ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)

_ERROR_CLASSES: dict[ErrorKind, type[errors.DatabaseError]] = {
    ErrorKind.DEADLOCK: errors.DeadlockError,
    ErrorKind.LOCK_WAIT_TIMEOUT: errors.LockWaitTimeoutError,
    ErrorKind.SERIALIZATION: errors.SerializationError,
    ErrorKind.LOCK_NOT_AVAILABLE: errors.LockNotAvailableError,
    ErrorKind.DUPLICATE_KEY: errors.DuplicateKeyError,
    ErrorKind.STATEMENT_TIMEOUT: errors.StatementTimeoutError,
    ErrorKind.UNAVAILABLE: errors.DatabaseUnavailableError,
    ErrorKind.DISCONNECT: errors.DatabaseDisconnectError,
    ErrorKind.OTHER: errors.DatabaseError,
}

_ADVICE: dict[ErrorKind, str] = {
    ErrorKind.DEADLOCK: "the transaction was rolled back; run it again in a new DbSession",
    ErrorKind.LOCK_WAIT_TIMEOUT: (
        "a row lock was not granted in time; the session is now rollback-only, "
        "run the unit of work again in a new DbSession"
    ),
    ErrorKind.SERIALIZATION: (
        "the data changed since this transaction read it; run it again in a new DbSession"
    ),
    ErrorKind.LOCK_NOT_AVAILABLE: "the row is locked by another transaction (NOWAIT)",
    ErrorKind.DUPLICATE_KEY: "a row with the same unique key already exists",
    ErrorKind.STATEMENT_TIMEOUT: "the server stopped the statement at its time limit",
    ErrorKind.UNAVAILABLE: (
        "the database cannot serve this now (read-only, out of connections or resources, "
        "or shutting down); try again later"
    ),
    ErrorKind.DISCONNECT: "the database connection was lost or could not be made",
    ErrorKind.OTHER: "the statement failed",
}


@dataclass(frozen=True, slots=True)
class AdvisoryLockSql:
    """How a backend takes a named lock, as one SQL statement (run by the locking module).

    ``answers`` says how the statement reports the outcome: ``True``, its result is
    1/true when granted, 0/false when the lock was held elsewhere for the whole wait, NULL
    when the server reported an error or the wait was killed; ``False``, it waits on the
    server and either returns (granted) or fails with a lock-wait-timeout error (the lock
    was held elsewhere for the whole wait) or a statement-timeout error (the wait was
    killed). ``outlives_transaction``: the lock stays with the connection after
    COMMIT/ROLLBACK and must be released explicitly before the connection returns to the
    pool.
    """

    statement: str
    params: dict[str, Any]
    answers: bool
    outlives_transaction: bool


class Dialect(abc.ABC):
    """Backend-specific behaviour behind the primitives.

    Implementations are stateless; server facts (version, flavour) are read from the
    SQLAlchemy dialect of the connection in use.
    """

    #: Short backend name used in messages ("MySQL", "PostgreSQL").
    label: str
    #: The driver's connect() argument bounding connection time, if it has one.
    connect_timeout_argument: str | None = None
    #: Whether ``#`` starts a comment in this server's SQL.
    hash_comments: bool = False

    @abc.abstractmethod
    def classify(self, driver_error: BaseException, *, nowait: bool = False) -> ClassifiedError:
        """Reduce a driver exception to an :class:`ErrorKind` and its codes.

        ``nowait`` says the statement used ``NOWAIT``, which some servers report
        with their lock-wait-timeout code.
        """

    @abc.abstractmethod
    def aborts_transaction(self, kind: ErrorKind) -> bool:
        """True when an error of this kind ends the whole transaction on the server,
        so a savepoint cannot contain it."""

    @abc.abstractmethod
    def keeps_transaction_usable(self, kind: ErrorKind) -> bool:
        """True when only the failed statement is undone and the transaction can go on
        without a savepoint (MySQL's statement-level rollback; never on PostgreSQL)."""

    def isolation_level_sql(self, level: str) -> str:
        """SQL that sets the isolation level of the next transaction only."""
        normalized = level.replace("_", " ").upper() if isinstance(level, str) else level
        if normalized not in _ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation level {level!r}; use one of {sorted(_ISOLATION_LEVELS)}"
            )
        return f"SET TRANSACTION ISOLATION LEVEL {normalized}"

    @abc.abstractmethod
    def lock_timeout_sql(self, seconds: float) -> tuple[str, str | None]:
        """(set, restore) statements for the transaction's lock wait timeout; restore is
        None when the setting ends with the transaction by itself."""

    @abc.abstractmethod
    def check_row_lock_options(
        self, sa_dialect: SADialect, *, nowait: bool, skip_locked: bool
    ) -> None:
        """Raise ConfigurationError if the server cannot do NOWAIT / SKIP LOCKED."""

    def row_lock_clause(self, *, nowait: bool, skip_locked: bool) -> str:
        """The locking clause ending a ``SELECT`` that locks the rows it returns."""
        if nowait:
            return " FOR UPDATE NOWAIT"
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"

    @abc.abstractmethod
    def advisory_lock_sql(self, key: LockKey, name: str, wait: float) -> AdvisoryLockSql:
        """How to take the named lock for ``key`` (``name`` is its hashed ASCII name),
        waiting at most ``wait`` seconds on the server."""

    @abc.abstractmethod
    def release_advisory_locks_sql(self) -> str | None:
        """SQL releasing every named lock the connection holds after the transaction,
        or None when the server releases them at transaction end."""

    @abc.abstractmethod
    def kill_session_sql(self, session_id: int) -> str:
        """SQL, run from another connection, that ends the given server session."""

    def insert_skipping_duplicates_sql(self, insert_sql: str) -> str | None:
        """``insert_sql`` (a single-row INSERT) made to do nothing (row count 0) when the
        row's unique key already exists, or None where the only such form is unsafe
        (MySQL's INSERT IGNORE also hides truncation); callers then catch the duplicate
        error instead."""
        return None

    @abc.abstractmethod
    def is_unknown_session(self, info: ClassifiedError) -> bool:
        """True when a kill failed only because the server session had already ended."""

    def classify_exception(self, exc: BaseException, *, nowait: bool = False) -> ClassifiedError:
        """Classify an exception raised by SQLAlchemy (wrapping a driver error or not)."""
        driver_error = getattr(exc, "orig", None)
        if not isinstance(driver_error, BaseException):
            return ClassifiedError(ErrorKind.OTHER, None, None, str(exc))
        info = self.classify(driver_error, nowait=nowait)
        if getattr(exc, "connection_invalidated", False) and info.kind is not ErrorKind.DISCONNECT:
            return ClassifiedError(
                ErrorKind.DISCONNECT, info.errno, info.sqlstate, info.server_message
            )
        return info

    def classify_driver_exception(
        self, exc: BaseException, *, nowait: bool = False
    ) -> ClassifiedError:
        """Classify an exception raised by the driver itself (the direct path): a broken
        socket is a disconnect, anything else goes through :meth:`classify`."""
        if isinstance(exc, TimeoutError):
            return ClassifiedError(ErrorKind.DISCONNECT, None, None, "no answer in time")
        if isinstance(exc, OSError | EOFError):
            return ClassifiedError(ErrorKind.DISCONNECT, None, None, repr(exc))
        return self.classify(exc, nowait=nowait)

    def connect_hint(self, info: ClassifiedError) -> str:
        """What to check when connecting failed with ``info`` ("" when nothing specific)."""
        if info.kind is ErrorKind.DISCONNECT:
            return "is the server running and reachable at that address?"
        return ""

    def build_connect_error(self, info: ClassifiedError, url: str) -> errors.DatabaseError:
        """The library exception for a failure to connect to ``url`` (password hidden).

        Whatever the server said, failing to connect is never the statement's or the
        message's fault: it is a :class:`DatabaseUnavailableError` (a
        :class:`DatabaseDisconnectError` when the server could not be reached at all).
        """
        code = _code(self.label, info)
        hint = self.connect_hint(info)
        message = f"could not connect to {self.label} at {url} ({code}: {info.server_message})"
        if hint:
            message = f"{message}; {hint}"
        kind: type[errors.DatabaseUnavailableError] = errors.DatabaseUnavailableError
        if info.kind is ErrorKind.DISCONNECT:
            kind = errors.DatabaseDisconnectError
        return kind(message, errno=info.errno, sqlstate=info.sqlstate)

    def build_error(self, info: ClassifiedError) -> errors.DatabaseError:
        """The library exception for a classified error (returned, not raised)."""
        message = f"{_ADVICE[info.kind]} ({_code(self.label, info)}: {info.server_message})"
        if info.kind is ErrorKind.DUPLICATE_KEY:
            return errors.DuplicateKeyError(
                message, errno=info.errno, sqlstate=info.sqlstate, constraint=info.constraint
            )
        return _ERROR_CLASSES[info.kind](message, errno=info.errno, sqlstate=info.sqlstate)


def _code(label: str, info: ClassifiedError) -> str:
    code = f"{label} error {info.errno}" if info.errno is not None else label
    if info.sqlstate is not None:
        code = f"{code}, SQLSTATE {info.sqlstate}"
    return code
