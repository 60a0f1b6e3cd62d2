"""Database outages as the consumer sees them: which failures are the database's rather
than the message's, and how long reads are held back while it is down."""

from __future__ import annotations

import asyncio
import time

from ..db.lease import ConnectionLease
from ..errors import DatabaseUnavailableError
from ._backoff import Backoff
from .readiness import ConsumerReadiness

__all__ = ["DatabaseOutage", "is_database_outage"]


def is_database_outage(exc: BaseException, lease: ConnectionLease | None) -> bool:
    """Whether a failure was the database's: a :class:`DatabaseUnavailableError` (read-only,
    too many connections, shutting down, connection lost) anywhere in the exception's
    chain (``__cause__``, ``__context__``, members of an exception group), so a handler
    that catches it and raises something else, or a ``RollbackOnlyError`` caused by it,
    still counts; or a handler that timed out in a server that then did not even answer
    (``ConnectionLease.server_unreachable``)."""
    if isinstance(exc, TimeoutError) and lease is not None and lease.server_unreachable:
        return True
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DatabaseUnavailableError):
            return True
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            stack += current.exceptions
    return False


class DatabaseOutage:
    """Whether the database is down, and when reads may resume: each outage in a row pushes
    the next read further out (exponential backoff), the next commit ends it."""

    def __init__(self, backoff: Backoff, readiness: ConsumerReadiness) -> None:
        self._backoff = backoff
        self._readiness = readiness
        self._retry_at = 0.0
        self.active = False

    def begin(self, exc: BaseException) -> None:
        """An outage was seen: hold reads back for the next backoff delay."""
        self.active = True
        self._readiness.database_failed(exc)
        self._retry_at = time.monotonic() + self._backoff.next_delay()

    def end(self) -> None:
        """A transaction committed: the database is back."""
        if self.active:
            self.active = False
            self._readiness.database_ok()
            self._backoff.reset()
            self._retry_at = 0.0

    def remaining(self) -> float:
        """Seconds until reads may resume (0 once they may)."""
        return max(0.0, self._retry_at - time.monotonic())

    async def wait(self) -> None:
        """Return once reads may resume."""
        delay = self._retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
