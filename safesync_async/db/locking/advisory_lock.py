"""AdvisoryLock: a named lock held until the session's transaction ends."""

from __future__ import annotations

import math
import time
from types import TracebackType

from ... import tracing
from ...errors import ConfigurationError, DatabaseError, LockAcquireError, LockTimeoutError
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
    when the server returned NULL (an error, or the wait was killed).
    """

    def __init__(self, session: DbSession, key: LockKey, timeout: float = 10.0) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ConfigurationError(
                f"advisory lock timeout must be a finite number of seconds >= 0, got {timeout!r}"
            )
        self._session = session
        self.key = key
        self.timeout = timeout
        self.name = lock_name(key)

    async def acquire(self) -> None:
        """Wait for the lock; see the class docstring for the errors."""
        session = self._session
        metrics = session._metrics
        started = time.perf_counter()
        try:
            with tracing.lock_span("advisory", self.name, session.db_system):
                outcome = await session.dialect.acquire_advisory_lock(
                    session, self.key, self.name, self.timeout
                )
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
