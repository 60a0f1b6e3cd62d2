"""The end of a transaction: COMMIT (possibly carrying deferred writes), ROLLBACK or
discard, then the connection's reset and its return. Bounded by ``cleanup_timeout``, run
to completion even when the task is cancelled (the caller shields it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn

from sqlalchemy import exc as sa_exc

from ..errors import CommitOutcomeUnknownError
from ..metrics import Metrics
from ._connection import KILL_TIMEOUT, KillOutcome, SessionConnection
from ._deferred import DeferredWrite, name_failed_write
from ._drivers import DriverExecutor
from ._state import TransactionOutcome, TransactionState
from .dialects import ClassifiedError, Dialect, ErrorKind
from .lease import ConnectionLease

__all__ = ["TransactionEnd"]

_log = logging.getLogger("safesync_async.db.session")


class TransactionEnd:
    """Ends one transaction on one connection and records how in ``state.outcome``."""

    __slots__ = (
        "_cleanup_timeout",
        "_conn",
        "_dialect",
        "_lease",
        "_metrics",
        "_operation",
        "_reset",
        "_started",
        "_state",
    )

    def __init__(
        self,
        conn: SessionConnection,
        state: TransactionState,
        dialect: Dialect,
        *,
        cleanup_timeout: float,
        restore_sql: str | None,
        lease: ConnectionLease | None,
        metrics: Metrics,
        operation: str,
        started: float,
    ) -> None:
        self._conn = conn
        self._state = state
        self._dialect = dialect
        self._cleanup_timeout = cleanup_timeout
        self._lease = lease
        self._metrics = metrics
        self._operation = operation
        self._started = started
        #: Statements undoing what the session changed on the connection, until sent.
        self._reset: list[str] = []
        release = dialect.release_advisory_locks_sql()
        if state.named_locks and release is not None:
            self._reset.append(release)
        if restore_sql is not None:
            self._reset.append(restore_sql)

    async def finish(self, *, body_failed: bool, carried: Sequence[DeferredWrite]) -> None:
        """Commit after a clean block that may commit, else roll back (or discard a
        connection in doubt); then reset and return the connection. Raises only what the
        caller must see: a refused, failed or unknown commit."""
        state, conn = self._state, self._conn
        refusal = None if body_failed else state.refusal(connection_valid=conn.valid)
        outcome, label = TransactionOutcome.ROLLED_BACK, "rolled_back"
        try:
            if state.interruption is not None or state.broken or not conn.valid:
                await self._discard("interrupted" if state.interruption else "disconnected")
            elif body_failed or refusal is not None:
                await self._rollback()
            else:
                label = "commit_failed"
                await self._commit(carried)
                outcome, label = TransactionOutcome.COMMITTED, "committed"
            if refusal is not None:
                raise refusal
        except CommitOutcomeUnknownError:
            outcome, label = TransactionOutcome.UNKNOWN, "commit_unknown"
            raise
        finally:
            state.outcome = outcome
            try:
                await self._reset_connection()
                if self._lease is not None:
                    self._lease.server_unreachable = state.server_unreachable
                await conn.release(self._lease)
            finally:
                elapsed = time.perf_counter() - self._started
                self._metrics.inc("transactions", self._operation, label)
                self._metrics.observe("transaction_seconds", elapsed, self._operation)

    def _one_trip(self) -> DriverExecutor | None:
        """The driver executor when the end of the transaction and the statements around it
        can share one round trip: the driver holds the transaction (SQLAlchemy does not)
        and takes several statements at once (MySQL/MariaDB with asyncmy)."""
        conn = self._conn
        executor = conn.executor
        if executor is None or not executor.multi_statements:
            return None
        return executor if conn.sqlalchemy_connection is None else None

    async def _commit(self, carried: Sequence[DeferredWrite]) -> None:
        """COMMIT; in the same round trip, where the driver allows it, the ``carried``
        deferred writes before it and the connection's reset after it. That round trip is
        the commit: bounded, not interruptible, and its outcome unknown if no answer to
        the COMMIT arrives."""
        conn = self._conn
        executor = self._one_trip() if carried or self._reset else None
        writes = [item.rendered for item in carried if item.rendered is not None]
        counts: list[int] = []
        try:
            if executor is not None:
                conn.direct_used = True
                script = [*writes, "COMMIT", *self._reset]
                await _within(self._cleanup_timeout, executor.execute_rendered(script, counts))
                self._reset = []
            else:
                await _within(self._cleanup_timeout, conn.end_transaction(commit=True))
        except Exception as exc:
            if len(counts) > len(writes):  # the COMMIT was answered: only the reset failed
                await self._reset_failed(exc)
                return
            await self._commit_failed(exc, carried, counts)

    async def _commit_failed(
        self, exc: Exception, carried: Sequence[DeferredWrite], counts: list[int]
    ) -> NoReturn:
        """Raise what a failed COMMIT round trip means: an unknown outcome if its answer
        may have been lost, else the error (after rolling back)."""
        conn = self._conn
        if isinstance(exc, TimeoutError):
            self._state.interrupt(exc, "COMMIT")
            await self._discard("commit_unknown")
            raise CommitOutcomeUnknownError(
                f"COMMIT got no answer within {self._cleanup_timeout} s; the transaction "
                "may or may not have been committed"
            ) from exc
        info = self._classify(exc)
        if info.kind is ErrorKind.DISCONNECT or not conn.valid:
            self._state.broken = True
            await self._discard("commit_unknown")
            raise CommitOutcomeUnknownError(
                "the connection was lost during COMMIT; the transaction may or may not "
                f"have been committed ({info.server_message})",
                errno=info.errno,
                sqlstate=info.sqlstate,
            ) from exc
        await self._rollback()
        error = self._dialect.build_error(info)
        if len(counts) < len(carried):
            name_failed_write(error, carried, len(counts))
        raise error from exc

    async def _rollback(self) -> None:
        """ROLLBACK (with the connection's reset in the same round trip where possible);
        a connection that cannot roll back is discarded."""
        conn = self._conn
        executor = self._one_trip() if self._reset and conn.direct_used else None
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                if executor is not None:
                    await executor.execute_rendered(["ROLLBACK", *self._reset], [])
                    self._reset = []
                else:
                    await conn.end_transaction(commit=False)
        except Exception as exc:
            _log.warning("rollback failed, discarding the connection: %r", exc)
            if isinstance(exc, TimeoutError):
                self._state.interrupt(exc, "ROLLBACK")
            await self._discard("rollback_failed")

    async def _reset_connection(self) -> None:
        """Undo what the session changed on the connection (named locks, settings) if
        that did not travel with the COMMIT or ROLLBACK, or discard the connection."""
        if not self._reset or not self._conn.valid:
            return
        try:
            async with asyncio.timeout(self._cleanup_timeout):
                await self._conn.run_plain(self._reset)
        except Exception as exc:
            await self._reset_failed(exc)

    async def _reset_failed(self, exc: Exception) -> None:
        """The reset is in doubt (a named lock may still be held): discard the connection
        and end its server session, which releases whatever it held."""
        _log.warning("could not reset the connection, discarding it: %r", exc)
        self._state.interrupt(exc, "connection reset")
        await self._discard("reset_failed")

    async def _discard(self, reason: str) -> None:
        """Invalidate the connection; if a statement may still be running on the server
        (the session was interrupted), end its server session from another connection."""
        self._metrics.inc("invalidations", reason)
        await self._conn.invalidate()
        if self._state.interruption is not None:
            bound = min(self._cleanup_timeout, KILL_TIMEOUT)
            killed = await self._conn.kill_server_session(self._dialect, bound)
            if killed == KillOutcome.UNREACHABLE:
                self._state.server_unreachable = True

    def _classify(self, exc: BaseException) -> ClassifiedError:
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return self._dialect.classify_exception(exc)
        return self._dialect.classify_driver_exception(exc)


async def _within(seconds: float, step: Coroutine[Any, Any, None]) -> None:
    """``await step``, raising TimeoutError after ``seconds``: asyncio.timeout's job, for
    the one statement run per transaction (the COMMIT), at a fraction of its cost. Only
    for code running in a cleanup task of its own, which nothing else cancels."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        await step
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()
        raise TimeoutError(f"no answer within {seconds} s") from None
    finally:
        timer.cancel()
