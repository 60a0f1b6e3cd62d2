"""retry_transaction: run a unit of work again, in a new transaction, when that can help."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .._validation import check_int, check_seconds
from ..errors import (
    DeadlockError,
    LockWaitTimeoutError,
    RetryableTransactionError,
    RetryExhaustedError,
    SerializationError,
    VersionConflictError,
)
from ..metrics import DEFAULT_REGISTRY, RegistryArg, metrics_for
from .lease import ConnectionLease
from .session import DbSession

__all__ = ["retry_transaction"]

_log = logging.getLogger("safesync_async.db.retry")
_T = TypeVar("_T")

#: Errors after which running the transaction again, in a new transaction, can succeed.
RETRYABLE_ERRORS = (VersionConflictError, RetryableTransactionError)


async def retry_transaction(
    engine: AsyncEngine,
    work: Callable[[DbSession], Awaitable[_T]],
    *,
    max_attempts: int = 10,
    max_elapsed: float = 30.0,
    base_delay: float = 0.005,
    max_delay: float = 1.0,
    operation: str = "default",
    isolation_level: str | None = None,
    lock_timeout: float | None = None,
    registry: RegistryArg = DEFAULT_REGISTRY,
    lease: ConnectionLease | None = None,
) -> _T:
    """Run ``await work(session)`` in a fresh :class:`DbSession`, retrying when useful.

    Retries only :class:`VersionConflictError` (raised by
    ``occ_update(..., raise_on_conflict=True)`` or by ``work`` itself) and
    :class:`RetryableTransactionError` (deadlock, lock wait timeout, snapshot
    conflict). Every attempt is a new transaction, so it re-reads current data;
    never retry inside one session. Between attempts it sleeps a random time in
    ``[0, min(max_delay, base_delay * 2**attempt)]`` ("full jitter"). It stops
    after ``max_attempts`` attempts or when the next attempt would start after
    ``max_elapsed`` seconds, raising :class:`RetryExhaustedError` from the last
    error. Every other exception, including :class:`CommitOutcomeUnknownError`,
    propagates at once. Returns what ``work`` returns.

    ``lease``: run every attempt on a :class:`ConnectionLease`'s connection instead of
    checking one out of the pool each time, for a task that runs many transactions in a
    row (a worker): the same pool connection, each attempt still its own transaction.
    """
    check_int("max_attempts", max_attempts, minimum=1)
    for name, value in (
        ("max_elapsed", max_elapsed),
        ("base_delay", base_delay),
        ("max_delay", max_delay),
    ):
        check_seconds(name, value, allow_zero=True)
    metrics = metrics_for(registry)
    deadline = time.monotonic() + max_elapsed
    attempt = 0
    while True:
        attempt += 1
        try:
            async with DbSession(
                engine,
                isolation_level=isolation_level,
                lock_timeout=lock_timeout,
                operation=operation,
                registry=registry,
                lease=lease,
            ) as session:
                return await work(session)
        except RETRYABLE_ERRORS as exc:
            delay = jittered_delay(attempt, base_delay, max_delay)
            if attempt >= max_attempts or time.monotonic() + delay > deadline:
                raise RetryExhaustedError(
                    f"{operation!r} did not succeed in {attempt} attempt(s) "
                    f"within {max_elapsed:g} s; last error: {exc}",
                    attempts=attempt,
                ) from exc
            metrics.inc("retries", operation, retry_reason(exc))
            _log.debug("retrying %r after %s (attempt %d)", operation, retry_reason(exc), attempt)
            await asyncio.sleep(delay)


def jittered_delay(attempt: int, base_delay: float, max_delay: float) -> float:
    """The pause after failed attempt number ``attempt`` (from 1): "full jitter", a random
    time in ``[0, min(max_delay, base_delay * 2**(attempt - 1))]``."""
    return random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))


def retry_reason(exc: Exception) -> str:
    """The ``reason`` label of the retries metric for an error worth retrying."""
    if isinstance(exc, VersionConflictError):
        return "version_conflict"
    if isinstance(exc, DeadlockError):
        return "deadlock"
    if isinstance(exc, LockWaitTimeoutError):
        return "lock_wait_timeout"
    if isinstance(exc, SerializationError):
        return "serialization"
    return "retryable"
