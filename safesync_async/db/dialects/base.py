"""What a database backend must provide: error classes, SQL fragments, capabilities.

The primitives (session, locks, OCC, idempotent insert) only talk to a
:class:`Dialect`; every error number and every piece of server-specific SQL lives
in one subclass per backend.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Dialect as SADialect

from ... import errors
from ..lock_names import LockKey
from ..rows import Rows

if TYPE_CHECKING:
    from ..session import DbSession


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


_ERROR_CLASSES: dict[ErrorKind, type[errors.DatabaseError]] = {
    ErrorKind.DEADLOCK: errors.DeadlockError,
    ErrorKind.LOCK_WAIT_TIMEOUT: errors.LockWaitTimeoutError,
    ErrorKind.SERIALIZATION: errors.SerializationError,
    ErrorKind.LOCK_NOT_AVAILABLE: errors.LockNotAvailableError,
    ErrorKind.DUPLICATE_KEY: errors.DuplicateKeyError,
    ErrorKind.STATEMENT_TIMEOUT: errors.StatementTimeoutError,
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
    ErrorKind.DISCONNECT: "the database connection was lost or could not be made",
    ErrorKind.OTHER: "the statement failed",
}


class DirectExecutor(Protocol):
    """Runs SQL straight on the driver's native async connection, skipping SQLAlchemy's
    per-statement machinery on the hot path. The connection still comes from, and goes
    back to, the engine's pool."""

    async def execute(self, query: str, args: Sequence[Any] | dict[str, Any]) -> Rows: ...

    def render(self, query: str, args: Sequence[Any] | dict[str, Any]) -> str | None:
        """The statement with its parameters inlined exactly as the driver would send it,
        or None if the connection cannot run several statements in one round trip."""
        ...

    async def execute_rendered(
        self, statements: Sequence[str], counts: list[int], *, then_commit: bool = False
    ) -> None:
        """Send rendered statements in one round trip (followed by COMMIT if
        ``then_commit``); append each statement's matched row count to ``counts`` as its
        result arrives. The server stops at the first failing statement, whose error is
        raised: ``len(counts)`` is then its index."""
        ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    def in_transaction(self) -> bool | None:
        """Whether the server reports an open transaction (None: unknown)."""
        ...


class Dialect(abc.ABC):
    """Backend-specific behaviour behind the primitives.

    Implementations are stateless; server facts (version, flavour) are read from the
    SQLAlchemy dialect of the connection in use.
    """

    #: Short backend name used in messages ("MySQL", "PostgreSQL").
    label: str
    #: The driver's connect() argument bounding connection time, if it has one.
    connect_timeout_argument: str | None = None

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

    @abc.abstractmethod
    def isolation_level_sql(self, level: str) -> str:
        """SQL that sets the isolation level of the next transaction only."""

    @abc.abstractmethod
    def lock_timeout_sql(self, seconds: float) -> tuple[str, str | None]:
        """(set, restore) statements for the transaction's lock wait timeout; restore is
        None when the setting ends with the transaction by itself."""

    @abc.abstractmethod
    def check_row_lock_options(
        self, sa_dialect: SADialect, *, nowait: bool, skip_locked: bool
    ) -> None:
        """Raise ConfigurationError if the server cannot do NOWAIT / SKIP LOCKED."""

    @abc.abstractmethod
    async def acquire_advisory_lock(
        self, session: DbSession, key: LockKey, name: str, wait: float
    ) -> AdvisoryOutcome:
        """Take the named lock for ``key`` in the session, waiting at most ``wait``
        seconds on the server; it must be released when the transaction ends."""

    @abc.abstractmethod
    def release_advisory_locks_sql(self) -> str | None:
        """SQL releasing every named lock the connection holds after the transaction,
        or None when the server releases them at transaction end."""

    @abc.abstractmethod
    def server_session_id(self, driver_connection: object) -> int | None:
        """The server's id for this connection, used to kill a statement left running."""

    @abc.abstractmethod
    def kill_session_sql(self, session_id: int) -> str:
        """SQL, run from another connection, that ends the given server session."""

    def insert_skipping_duplicates(self, table: Any, values: dict[str, Any]) -> Any | None:
        """A single-row INSERT that does nothing (row count 0) when the row's unique key
        already exists, or None where the only such construct is unsafe (MySQL's
        INSERT IGNORE also hides truncation); callers then catch the duplicate error."""
        return None

    @abc.abstractmethod
    def direct_executor(self, driver_connection: object) -> DirectExecutor | None:
        """A fast executor for this driver connection, or None to use SQLAlchemy."""

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
        if isinstance(exc, OSError | EOFError):
            return ClassifiedError(ErrorKind.DISCONNECT, None, None, repr(exc))
        return self.classify(exc, nowait=nowait)

    def build_error(self, info: ClassifiedError) -> errors.DatabaseError:
        """The library exception for a classified error (returned, not raised)."""
        code = f"{self.label} error {info.errno}" if info.errno is not None else self.label
        if info.sqlstate is not None:
            code = f"{code}, SQLSTATE {info.sqlstate}"
        message = f"{_ADVICE[info.kind]} ({code}: {info.server_message})"
        if info.kind is ErrorKind.DUPLICATE_KEY:
            return errors.DuplicateKeyError(
                message, errno=info.errno, sqlstate=info.sqlstate, constraint=info.constraint
            )
        return _ERROR_CLASSES[info.kind](message, errno=info.errno, sqlstate=info.sqlstate)
