"""The database half: sessions, locks, optimistic updates, idempotent inserts."""

from __future__ import annotations

from .engine import create_engine
from .idempotent import insert_idempotent
from .lease import ConnectionLease
from .locking import AdvisoryLock, RowLock, lock_name
from .occ import occ_update
from .retry import retry_transaction
from .session import DbSession, TransactionOutcome

__all__ = [
    "AdvisoryLock",
    "ConnectionLease",
    "DbSession",
    "RowLock",
    "TransactionOutcome",
    "create_engine",
    "insert_idempotent",
    "lock_name",
    "occ_update",
    "retry_transaction",
]
