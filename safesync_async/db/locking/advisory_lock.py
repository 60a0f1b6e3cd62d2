"""AdvisoryLock: a named lock held until the session's transaction ends."""

from __future__ import annotations

import time
from types import TracebackType

from ... import tracing
from ..._validation import check_seconds
from ...errors import (
    DatabaseError,
    LockAcquireError,
    LockTimeoutError,
    LockWaitTimeoutError,
    StatementTimeoutError,
)
from .._core import TransactionCore
from ..dialects import AdvisoryOutcome
from ..lock_names import LockKey, lock_name
from ..session import DbSession

__all__ = ["AdvisoryLock"]


class AdvisoryLock:
    """A named lock (``GET_LOCK``) tied to a :class:`DbSession`.

    ``await AdvisoryLock(session, "user:7", timeout=10).acquire()`` (or ``async with``)
    takes the lock on the session's connection, waiting at most ``timeout`` seconds
    on the server (``0`` tries once). The lock is held until the session's
    transaction has committed or rolled back, and released on the same connection
    before it returns to the pool, on every path including errors and
    cancellation; if the release cannot be confirmed the connection is discarded.
    Releasing only after the commit is what makes the lock protect a
    read-modify-write: another worker cannot read the data before it is committed.

    Raises :class:`LockTimeoutError` (also a ``TimeoutError``) when another
    connection kept the lock for the whole timeout, and :class:`LockAcquireError`
    when the server returned NULL (an error, or the wait was killed). One round trip
    either way. On MySQL/MariaDB the session stays usable after a timeout; on
    PostgreSQL a wait (``timeout`` above 0) that times out is an error there, which
    leaves the session rollback-only like every PostgreSQL error (``timeout=0`` only
    tries, and never does).
    """

    def __init__(self, session: DbSession, key: LockKey, timeout: float = 10.0) -> None:
        check_seconds("advisory lock timeout", timeout, allow_zero=True)
        self._session = session
        self.key = key
        self.timeout = timeout
        self.name = lock_name(key)

    async def acquire(self) -> None:
        """Wait for the lock; see the class docstring for the errors."""
        core = self._session.core
        metrics = core.metrics
        started = time.perf_counter()
        try:
            with tracing.lock_span("advisory", self.name, core.db_system):
                outcome = await _take(core, self.key, self.name, self.timeout)
        except DatabaseError:
            metrics.inc("lock_acquisitions", "advisory", "error")
            raise
        metrics.observe("lock_wait_seconds", time.perf_counter() - started, "advisory")
        metrics.inc("lock_acquisitions", "advisory", outcome.value)
        if outcome is AdvisoryOutcome.ACQUIRED:
            return
        if outcome is AdvisoryOutcome.TIMEOUT:
            raise LockTimeoutError(
                f"advisory lock {self.key!r} not acquired within {self.timeout:g} s: another "
                "connection holds it",
                key=self.key,
                lock_name=self.name,
            )
        raise LockAcquireError(
            f"advisory lock {self.key!r}: the server reported an error instead of granting "
            "or refusing it (the wait was killed?)",
            key=self.key,
            lock_name=self.name,
        )

    async def __aenter__(self) -> AdvisoryLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to do: the lock is released when the session's transaction ends."""


async def _take(core: TransactionCore, key: LockKey, name: str, wait: float) -> AdvisoryOutcome:
    """Run the backend's named-lock statement and read what it came to."""
    sql = core.dialect.advisory_lock_sql(key, name, wait)
    if sql.outlives_transaction:
        # Noted before the call: if the wait is interrupted the server may still grant it.
        core.note_named_lock()
    if not sql.answers:
        try:
            await core.run(sql.statement, sql.params)
        except LockWaitTimeoutError:
            return AdvisoryOutcome.TIMEOUT
        except StatementTimeoutError:  # the wait was cancelled (pg_cancel_backend, timeout)
            return AdvisoryOutcome.FAILED
        return AdvisoryOutcome.ACQUIRED
    granted = (await core.run(sql.statement, sql.params)).scalar()
    if granted is None:
        return AdvisoryOutcome.FAILED
    return AdvisoryOutcome.ACQUIRED if granted else AdvisoryOutcome.TIMEOUT
