"""The exception tree of safesync_async.

Every error the library raises on purpose derives from :class:`SafeSyncError`.
Driver errors (asyncmy, redis-py, SQLAlchemy) are translated at one boundary and
chained (``raise ... from exc``), so the original is always on ``__cause__``::

    SafeSyncError
    ├── ConfigurationError (also ValueError)      bad arguments, unsafe client settings
    │   └── InvalidIdentifierError                table/column name rejected before any SQL
    ├── SessionStateError                         session used twice, nested, concurrently, closed
    ├── DatabaseError                             a database operation failed (errno, sqlstate)
    │   ├── RetryableTransactionError             the transaction may succeed if run again
    │   │   ├── DeadlockError                     MySQL 1213, 3058; PostgreSQL 40P01
    │   │   ├── LockWaitTimeoutError (TimeoutError)  MySQL 1205; PostgreSQL 55P03
    │   │   └── SerializationError                MariaDB 1020; PostgreSQL 40001
    │   ├── LockNotAvailableError                 NOWAIT found the row locked
    │   ├── DuplicateKeyError                     unique constraint violated (1062, 23505)
    │   ├── StatementTimeoutError (TimeoutError)  server statement time limit reached
    │   ├── DatabaseUnavailableError              an outage: the server cannot serve now
    │   │   └── DatabaseDisconnectError           the connection was lost or never made
    │   ├── RollbackOnlyError                     commit refused after an earlier error
    │   └── CommitOutcomeUnknownError             COMMIT sent, result never received
    ├── MultipleRowsError                         fetch_one / RowLock matched more than one row
    ├── AdvisoryLockError                         named lock problems
    │   ├── LockTimeoutError (TimeoutError)       GET_LOCK returned 0: held elsewhere
    │   └── LockAcquireError                      GET_LOCK returned NULL: error or killed
    ├── VersionConflictError                      OCC update matched no row
    ├── RetryExhaustedError                       retry_transaction gave up
    └── QueueError                                Redis Streams problems
        ├── QueueUnavailableError                 Redis refuses for now (OOM, read-only, ...)
        │   └── QueueConnectionError              Redis unreachable / connection dropped
        ├── ConsumerGroupMissingError             the group (or its stream) is gone
        ├── MessageDecodeError                    an entry could not be decoded
        │   └── PayloadValidationError            its payload failed the model's validation
        ├── MessageEncodeError                    a payload could not be encoded
        ├── ReplicationError                      added, but too few replicas confirmed it
        └── UnsafeOperationError                  refused: would drop unacknowledged entries

``LockWaitTimeoutError``, ``StatementTimeoutError`` and ``LockTimeoutError`` also derive
from the builtin :class:`TimeoutError`, so ``except TimeoutError`` catches every wait
that ran out.
"""

from __future__ import annotations

__all__ = [
    "AdvisoryLockError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConsumerGroupMissingError",
    "DatabaseDisconnectError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeadlockError",
    "DuplicateKeyError",
    "InvalidIdentifierError",
    "LockAcquireError",
    "LockNotAvailableError",
    "LockTimeoutError",
    "LockWaitTimeoutError",
    "MessageDecodeError",
    "MessageEncodeError",
    "MultipleRowsError",
    "PayloadValidationError",
    "QueueConnectionError",
    "QueueError",
    "QueueUnavailableError",
    "ReplicationError",
    "RetryExhaustedError",
    "RetryableTransactionError",
    "RollbackOnlyError",
    "SafeSyncError",
    "SerializationError",
    "SessionStateError",
    "StatementTimeoutError",
    "UnsafeOperationError",
    "VersionConflictError",
]


class SafeSyncError(Exception):
    """Root of every error raised by safesync_async."""


class ConfigurationError(SafeSyncError, ValueError):
    """An argument or a client setting is invalid or unsafe."""


class InvalidIdentifierError(ConfigurationError):
    """A table or column name failed validation; no SQL was sent."""


class SessionStateError(SafeSyncError):
    """A DbSession was used in a way its lifecycle does not allow."""


class DatabaseError(SafeSyncError):
    """A database operation failed.

    ``errno`` is the server error number (MySQL/MariaDB) and ``sqlstate`` the
    SQLSTATE code when the driver reports one; both may be ``None`` for errors
    raised before the statement reached the server.
    """

    def __init__(
        self, message: str, *, errno: int | None = None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.errno = errno
        self.sqlstate = sqlstate


class RetryableTransactionError(DatabaseError):
    """The transaction failed in a way that running it again may fix.

    Retry in a *new* DbSession: see :func:`safesync_async.retry_transaction`.
    """


class DeadlockError(RetryableTransactionError):
    """The server chose this transaction as a deadlock victim and rolled it back."""


class LockWaitTimeoutError(RetryableTransactionError, TimeoutError):
    """A row lock was not granted within the lock wait timeout.

    On MySQL/MariaDB only the statement is rolled back; the session becomes
    rollback-only so the rest of the unit of work cannot be committed alone.
    """


class SerializationError(RetryableTransactionError):
    """The transaction read data that changed underneath it (snapshot conflict)."""


class LockNotAvailableError(DatabaseError):
    """``NOWAIT`` found the row locked by another transaction."""


class DuplicateKeyError(DatabaseError):
    """A unique or primary key constraint was violated.

    ``constraint`` names the violated key when the server reports it.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        sqlstate: str | None = None,
        constraint: str | None = None,
    ) -> None:
        super().__init__(message, errno=errno, sqlstate=sqlstate)
        self.constraint = constraint


class StatementTimeoutError(DatabaseError, TimeoutError):
    """The server stopped a statement that ran past its time limit."""


class DatabaseUnavailableError(DatabaseError):
    """The database cannot serve requests right now: an outage, not a fault of the
    statement or of the data. Read-only mode (a failover in progress, MySQL 1290 and
    1836, PostgreSQL 25006), too many connections (1040, 53300), a server shutting down
    (1053, 57P01-57P03) and lost connections all land here; see docs/errors.md for the
    full table. A queue consumer keeps the message pending without spending a delivery
    and backs off."""


class DatabaseDisconnectError(DatabaseUnavailableError):
    """The connection to the database was lost (or could not be made); it has been
    discarded."""


class RollbackOnlyError(DatabaseError):
    """The session saw an error earlier and can no longer commit.

    The earlier error is on ``__cause__``. Start a new DbSession, or wrap
    statements that are expected to fail in ``session.savepoint()``.
    """


class CommitOutcomeUnknownError(DatabaseError):
    """COMMIT was sent but its result never arrived: the transaction may or may
    not be durable. Do not blindly retry a non-idempotent unit of work."""


class MultipleRowsError(SafeSyncError):
    """A query that must match at most one row matched more."""


class AdvisoryLockError(SafeSyncError):
    """A named (advisory) lock could not be acquired or released.

    ``key`` is the caller's key and ``lock_name`` the name sent to the server.
    """

    def __init__(self, message: str, *, key: object, lock_name: str) -> None:
        super().__init__(message)
        self.key = key
        self.lock_name = lock_name


class LockTimeoutError(AdvisoryLockError, TimeoutError):
    """The named lock is held by another connection and was not granted in time."""


class LockAcquireError(AdvisoryLockError):
    """The server returned NULL for the lock request (an error, or the wait was killed)."""


class VersionConflictError(SafeSyncError):
    """An optimistic (OCC) update matched no row: the version moved on, or the row is gone."""


class RetryExhaustedError(SafeSyncError):
    """:func:`safesync_async.retry_transaction` ran out of attempts or time.

    ``attempts`` is how many attempts ran; the last error is on ``__cause__``.
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class QueueError(SafeSyncError):
    """A Redis Streams operation failed."""


class QueueUnavailableError(QueueError):
    """Redis cannot serve the command right now: an outage, not a fault of the command.
    Out of memory under a ``noeviction`` policy (OOM), a read-only replica, a master or
    cluster that is down or reconfiguring, a script running too long, and lost
    connections (:class:`QueueConnectionError`) all land here. The consumer backs off and
    retries."""


class QueueConnectionError(QueueUnavailableError):
    """Redis could not be reached or the connection dropped."""


class ConsumerGroupMissingError(QueueError):
    """The consumer group is gone (NOGROUP), or its stream was deleted, and the policy
    (``on_missing_group="fail"``) says not to recreate it."""


class MessageDecodeError(QueueError):
    """A stream entry could not be decoded into a message payload."""


class PayloadValidationError(MessageDecodeError):
    """A payload decoded but failed its model's validation (``JsonCodec(Model)``).

    ``errors`` lists what failed, as pydantic reports it (``loc``, ``msg``, ``type``).
    The consumer dead-letters such an entry at once (reason ``invalid``): retrying it
    cannot help.
    """

    def __init__(self, message: str, *, errors: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.errors = errors


class MessageEncodeError(QueueError):
    """A payload could not be encoded into stream entry fields."""


class ReplicationError(QueueError):
    """Entries were added to their stream, but fewer replicas than asked acknowledged them
    within the wait (``QueueProducer(wait_replicas=...)``), or the acknowledgement could
    not be told apart from another connection's (the stream's slot moved meanwhile).

    The entries exist on the master now; if it fails before a replica has them, a
    failover loses them. Publishing them again is safe when they carry idempotency keys
    (consumers with an inbox apply each key once). ``entry_ids`` are the ids added,
    ``acknowledged`` the fewest replicas that confirmed them (``None``: not known) and
    ``required`` the number asked for."""

    def __init__(
        self, message: str, *, entry_ids: list[str], acknowledged: int | None, required: int
    ) -> None:
        super().__init__(message)
        self.entry_ids = entry_ids
        self.acknowledged = acknowledged
        self.required = required


class UnsafeOperationError(QueueError):
    """Refused because it would drop entries not yet acknowledged, e.g.
    ``QueueProducer.trim(max_length, strict=True)`` when unacknowledged entries are in the
    way (without ``strict``, the trim stops short of them instead)."""


class PartitionLeaseLostError(QueueError):
    """A partitioned consumer no longer holds the lease of a partition it was consuming
    (it expired during a pause or a network partition, or another consumer took it): it
    stops consuming that partition; whatever it had not committed is the new owner's."""


class PartitionFencedError(PartitionLeaseLostError):
    """A transaction was refused because its partition has a newer owner: the epoch the
    handler's consumer acquired the partition with was superseded. Nothing it did is
    committed; the message is left to the new owner, and no delivery is spent."""
