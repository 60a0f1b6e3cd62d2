"""The synchronous seed library (coti-safesync-framework 0.0.1): its ``DbSession``,
``RowLock``, ``occ_update`` and ``AdvisoryLock`` in 32 threads over SQLAlchemy's
``mysql+pymysql`` engine with a pool of 32.

The seed has no retry helper, so each transfer is wrapped in the same retry policy as the
other implementations. Its ``AdvisoryLock`` never releases the named lock (the lock stays
on the pooled connection and blocks every later borrower); here a pool ``checkin`` hook
runs ``RELEASE_ALL_LOCKS()`` on the connection after the session has committed or rolled
back and returned it, so that the variant stays correct.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from coti_safesync_framework.db import AdvisoryLock, DbSession, RowLock, occ_update
from sqlalchemy import event

from ..load import LoadResult
from .harness import check_warm_up, drive_threads
from .statements import RELEASE_ALL_LOCKS, TransferSql, advisory_key
from .workload import CellSpec, RetryPolicy, Transfer, VersionConflict

#: Server errors after which the transfer runs again in a new transaction.
RETRYABLE_ERRNOS = {1213: "deadlock", 3058: "deadlock", 1205: "lock_wait_timeout"}

Body = Callable[[Any, Transfer], None]


def bodies(table: str, accounts: int) -> dict[str, Body]:
    """One transaction's work per strategy, inside a seed ``DbSession``."""
    sql = TransferSql.for_table(table)
    keys = {account: advisory_key(table, account) for account in range(1, accounts + 1)}

    def atomic(session: Any, t: Transfer) -> None:
        session.execute(sql.add, {"id": t.low, "delta": t.delta})
        session.execute(sql.add, {"id": t.high, "delta": -t.delta})

    def row_lock(session: Any, t: Transfer) -> None:
        low = RowLock(session, table, {"id": t.low}).acquire()
        high = RowLock(session, table, {"id": t.high}).acquire()
        session.execute(sql.write, {"id": t.low, "balance": low["balance"] + t.delta})
        session.execute(sql.write, {"id": t.high, "balance": high["balance"] - t.delta})

    def occ(session: Any, t: Transfer) -> None:
        low = session.fetch_one(sql.read, {"id": t.low})
        high = session.fetch_one(sql.read, {"id": t.high})
        for row, delta in ((low, t.delta), (high, -t.delta)):
            updates = {"balance": row["balance"] + delta, "transfers": row["transfers"] + 1}
            if occ_update(session, table, "id", row["id"], "version", row["version"], updates) == 0:
                raise VersionConflict

    def advisory(session: Any, t: Transfer) -> None:
        with AdvisoryLock(session, keys[t.low]), AdvisoryLock(session, keys[t.high]):
            low = session.fetch_one(sql.read, {"id": t.low})
            high = session.fetch_one(sql.read, {"id": t.high})
            session.execute(sql.write, {"id": t.low, "balance": low["balance"] + t.delta})
            session.execute(sql.write, {"id": t.high, "balance": high["balance"] - t.delta})

    return {"atomic": atomic, "row_lock": row_lock, "occ": occ, "advisory": advisory}


def retry_reason(exc: Exception) -> str | None:
    """Why running the transfer again can help, or None if it cannot."""
    if isinstance(exc, VersionConflict):
        return "version_conflict"
    if isinstance(exc, sa.exc.DBAPIError):
        args = getattr(exc.orig, "args", ())
        return RETRYABLE_ERRNOS.get(args[0]) if args else None
    return None


def release_named_locks(dbapi_connection: Any, record: Any) -> None:
    """Pool ``checkin`` hook: release the named locks the session left on the connection."""
    if dbapi_connection is None:  # invalidated: the server released them with it
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(RELEASE_ALL_LOCKS)
        cursor.fetchall()
    finally:
        cursor.close()


class SeedTransfers:
    """``with DbSession(engine) as session: <strategy>`` per transfer, in threads."""

    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec
        self.body = bodies(spec.table, spec.accounts)[spec.strategy]
        self.policy = RetryPolicy()
        url = sa.make_url(spec.database_url).set(drivername="mysql+pymysql")
        self.engine = sa.create_engine(url, pool_size=spec.workers, max_overflow=0)
        if spec.strategy == "advisory":
            event.listen(self.engine, "checkin", release_named_locks)

    def prepare(self, warm_up: Sequence[Transfer]) -> None:
        with contextlib.ExitStack() as stack:  # open every pooled connection
            for _ in range(self.spec.workers):
                stack.enter_context(self.engine.connect())
        check_warm_up(self.run(warm_up))

    def run(self, transfers: Sequence[Transfer]) -> LoadResult:
        return drive_threads(self.transfer, self.spec.workers, transfers)

    def transfer(self, transfer: Transfer) -> None:
        attempt = 0
        deadline = 0.0
        while True:
            attempt += 1
            try:
                with DbSession(self.engine) as session:
                    self.body(session, transfer)
                return
            except Exception as exc:
                reason = retry_reason(exc)
                if reason is None:
                    raise
            deadline = deadline or self.policy.deadline()
            time.sleep(self.policy.pause(reason, attempt, deadline))

    def retries(self) -> dict[str, int]:
        return dict(self.policy.counts)

    def close(self) -> None:
        self.engine.dispose()
