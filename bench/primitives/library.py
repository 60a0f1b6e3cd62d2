"""safesync_async's public API, as its documentation recommends for a worker that runs
many transactions in a row: ``create_engine`` with one pooled connection per worker, each
worker keeping its connection in a ``ConnectionLease``, every transfer in
``retry_transaction(..., lease=lease)`` (each attempt a new transaction)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    ConnectionLease,
    DbSession,
    RowLock,
    create_engine,
    occ_update,
    retry_transaction,
)

from .harness import AsyncImplementation
from .statements import TransferSql, advisory_key
from .workload import BASE_DELAY, MAX_ATTEMPTS, MAX_DELAY, MAX_ELAPSED, CellSpec, Transfer

RETRIES_SAMPLE = "safesync_db_retries_total"

Work = Callable[[DbSession, Transfer], Awaitable[None]]


def strategies(table: str) -> dict[str, Work]:
    """One transaction of each strategy (``retry_transaction`` runs it again if needed)."""
    sql = TransferSql.for_table(table)

    async def atomic(session: DbSession, t: Transfer) -> None:
        await session.execute(sql.add, {"id": t.low, "delta": t.delta})
        await session.execute(sql.add, {"id": t.high, "delta": -t.delta})

    async def row_lock(session: DbSession, t: Transfer) -> None:
        low = await RowLock(session, table, {"id": t.low}).acquire()
        high = await RowLock(session, table, {"id": t.high}).acquire()
        assert low is not None
        assert high is not None
        await session.execute(sql.write, {"id": t.low, "balance": low["balance"] + t.delta})
        await session.execute(sql.write, {"id": t.high, "balance": high["balance"] - t.delta})

    async def occ(session: DbSession, t: Transfer) -> None:
        low = await session.fetch_one(sql.read, {"id": t.low})
        high = await session.fetch_one(sql.read, {"id": t.high})
        assert low is not None
        assert high is not None
        for row, delta in ((low, t.delta), (high, -t.delta)):
            await occ_update(
                session, table, "id", row["id"], "version", row["version"],
                {"balance": row["balance"] + delta, "transfers": row["transfers"] + 1},
                raise_on_conflict=True,
            )  # fmt: skip

    async def advisory(session: DbSession, t: Transfer) -> None:
        await AdvisoryLock(session, advisory_key(table, t.low)).acquire()
        await AdvisoryLock(session, advisory_key(table, t.high)).acquire()
        low = await session.fetch_one(sql.read, {"id": t.low})
        high = await session.fetch_one(sql.read, {"id": t.high})
        assert low is not None
        assert high is not None
        await session.execute(sql.write, {"id": t.low, "balance": low["balance"] + t.delta})
        await session.execute(sql.write, {"id": t.high, "balance": high["balance"] - t.delta})

    return {"atomic": atomic, "row_lock": row_lock, "occ": occ, "advisory": advisory}


class LibraryTransfers(AsyncImplementation[ConnectionLease]):
    """``retry_transaction(engine, work, lease=...)`` per transfer, 32 asyncio workers,
    each with a lease on ``create_engine(url, pool_size=32, max_overflow=0)`` (the raw loop
    keeps one connection per worker too). Retries are counted in a private
    ``CollectorRegistry`` (the same work as the default registry)."""

    engine: AsyncEngine

    def __init__(self, spec: CellSpec) -> None:
        super().__init__(spec)
        self.registry = CollectorRegistry()
        self.work = strategies(spec.table)[spec.strategy]

    async def connect(self) -> Sequence[ConnectionLease]:
        spec = self.spec
        self.engine = create_engine(spec.database_url, pool_size=spec.workers, max_overflow=0)
        self.resources.push_async_callback(self.engine.dispose)
        leases = [ConnectionLease(self.engine) for _ in range(spec.workers)]
        for lease in leases:  # opens every pooled connection
            await lease.checkout()
            self.resources.push_async_callback(lease.close)
        return leases

    async def transfer(self, slot: ConnectionLease, transfer: Transfer) -> None:
        work = self.work

        async def attempt(session: DbSession) -> None:
            await work(session, transfer)

        await retry_transaction(
            self.engine, attempt, operation=self.spec.strategy, registry=self.registry,
            max_attempts=MAX_ATTEMPTS, max_elapsed=MAX_ELAPSED,
            base_delay=BASE_DELAY, max_delay=MAX_DELAY, lease=slot,
        )  # fmt: skip

    def retries(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == RETRIES_SAMPLE:
                    reason = sample.labels["reason"]
                    counts[reason] = counts.get(reason, 0) + int(sample.value)
        return counts
