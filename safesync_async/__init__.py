"""safesync_async: safe concurrent MySQL/MariaDB writes and reliable Redis Streams consumers.

Everything public is importable from here; module paths that mirror the
synchronous seed library (``safesync_async.db.session``...) work too.
"""

from __future__ import annotations

import logging

from .db import (
    AdvisoryLock,
    DbSession,
    RowLock,
    insert_idempotent,
    lock_name,
    occ_update,
    retry_transaction,
)
from .errors import (
    AdvisoryLockError,
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConsumerGroupMissingError,
    DatabaseDisconnectError,
    DatabaseError,
    DeadlockError,
    DuplicateKeyError,
    InvalidIdentifierError,
    LockAcquireError,
    LockNotAvailableError,
    LockTimeoutError,
    LockWaitTimeoutError,
    MessageDecodeError,
    MessageTooLargeError,
    MultipleRowsError,
    QueueConnectionError,
    QueueError,
    RetryableTransactionError,
    RetryExhaustedError,
    RollbackOnlyError,
    SafeSyncError,
    SerializationError,
    SessionStateError,
    StatementTimeoutError,
    UnsafeTrimError,
    VersionConflictError,
)
from .metrics import DEFAULT_REGISTRY

__version__ = "0.1.0"

logging.getLogger("safesync_async").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_REGISTRY",
    "AdvisoryLock",
    "AdvisoryLockError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConsumerGroupMissingError",
    "DatabaseDisconnectError",
    "DatabaseError",
    "DbSession",
    "DeadlockError",
    "DuplicateKeyError",
    "InvalidIdentifierError",
    "LockAcquireError",
    "LockNotAvailableError",
    "LockTimeoutError",
    "LockWaitTimeoutError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "MultipleRowsError",
    "QueueConnectionError",
    "QueueError",
    "RetryExhaustedError",
    "RetryableTransactionError",
    "RollbackOnlyError",
    "RowLock",
    "SafeSyncError",
    "SerializationError",
    "SessionStateError",
    "StatementTimeoutError",
    "UnsafeTrimError",
    "VersionConflictError",
    "insert_idempotent",
    "lock_name",
    "occ_update",
    "retry_transaction",
]
