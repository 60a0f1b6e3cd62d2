"""32 concurrent writers moving money between a few hot accounts with each strategy: row
locks and named locks taken in random order (deadlocks happen and are retried), OCC with
retries, and plain read-then-write with and without MariaDB's innodb_snapshot_isolation.
Money is conserved and balances are exact, except for the deliberately unsafe variant,
whose lost updates are measured and reported."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    RetryExhaustedError,
    RowLock,
    create_engine,
    occ_update,
    retry_transaction,
)

from ..conftest import TableFactory
from ..support.backends import MARIADB
from ..support.reliability import Recorder
from ..support.settings import DATABASE_URL

pytestmark = pytest.mark.faults

FAMILY = "Contention"
WORKERS = 32
ACCOUNTS = 6
OPENING = 1_000
OPERATION = "transfer"

Transfer = Callable[[DbSession, str, list[int], int], Awaitable[None]]


async def _write(s: DbSession, table: str, account: int, read: int, new: int) -> None:
    """Write ``new``; ``lost`` counts writes that overwrote a balance other than the one
    read (the current value is what the UPDATE sees; SET runs left to right)."""
    await s.execute(
        f"UPDATE `{table}` SET lost = lost + (balance <> :read), balance = :new WHERE id = :id",
        {"read": read, "new": new, "id": account},
    )


async def _read(s: DbSession, table: str, account: int) -> int:
    return int(
        await s.execute_scalar(f"SELECT balance FROM `{table}` WHERE id = :id", {"id": account})
    )


async def _row_locks(s: DbSession, table: str, order: list[int], amount: int) -> None:
    """SELECT ... FOR UPDATE on both accounts in the given (random) order."""
    balances = {}
    for account in order:
        row = await RowLock(s, table, {"id": account}).acquire()
        assert row is not None
        balances[account] = int(row["balance"])
    await _move(s, table, order, amount, balances)


async def _named_locks(s: DbSession, table: str, order: list[int], amount: int) -> None:
    """GET_LOCK on both accounts in the given (random) order, then a plain read and write."""
    for account in order:
        await AdvisoryLock(s, f"{table}:{account}", timeout=30).acquire()
    await _move(s, table, order, amount, {a: await _read(s, table, a) for a in order})


async def _plain(s: DbSession, table: str, order: list[int], amount: int) -> None:
    """Read both balances (a consistent snapshot), then write both: safe only if the
    server refuses to overwrite a row changed since the snapshot."""
    await _move(s, table, order, amount, {a: await _read(s, table, a) for a in order})


async def _occ(s: DbSession, table: str, order: list[int], amount: int) -> None:
    src, dst = order
    for account, delta in ((src, -amount), (dst, amount)):
        row = await s.fetch_one(
            f"SELECT balance, version FROM `{table}` WHERE id = :id", {"id": account}
        )
        assert row is not None
        await occ_update(
            s, table, "id", account, "version", int(row["version"]),
            {"balance": int(row["balance"]) + delta}, raise_on_conflict=True,
        )  # fmt: skip


async def _move(
    s: DbSession, table: str, order: list[int], amount: int, balances: dict[int, int]
) -> None:
    src, dst = order
    await _write(s, table, src, balances[src], balances[src] - amount)
    await _write(s, table, dst, balances[dst], balances[dst] + amount)


@dataclass(frozen=True)
class Variant:
    name: str
    transfer: Transfer
    snapshot_isolation: bool
    exact: bool  # must balances be exact (False: the measured hazard)


VARIANTS = [
    Variant("row locks, random order", _row_locks, False, True),
    Variant("named locks, random order", _named_locks, False, True),
    Variant("OCC read-then-write + retry", _occ, False, True),
    Variant("OCC read-then-write + retry, snapshot isolation", _occ, True, True),
    Variant("plain read-then-write, snapshot isolation + retry", _plain, True, True),
    Variant("plain read-then-write, REPEATABLE READ (hazard)", _plain, False, False),
]


@pytest.fixture
async def snapshot_engine() -> AsyncIterator[AsyncEngine]:
    """An engine whose connections run with ``innodb_snapshot_isolation = ON`` (MariaDB
    10.6.18+/10.11.8+): a write to a row changed since the snapshot fails with 1020."""
    created = create_engine(DATABASE_URL, pool_size=8, max_overflow=40)

    def enable(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET SESSION innodb_snapshot_isolation = ON")
        cursor.close()

    event.listen(created.sync_engine, "connect", enable)
    try:
        yield created
    finally:
        await created.dispose()


def _retries(registry: CollectorRegistry, reason: str) -> int:
    value = registry.get_sample_value(
        "safesync_db_retries_total", {"operation": OPERATION, "reason": reason}
    )
    return int(value or 0)


@pytest.mark.parametrize(
    "transfers", [pytest.param(8, id="fast"), pytest.param(40, id="long", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
async def test_concurrent_transfers(
    engine: AsyncEngine,
    snapshot_engine: AsyncEngine,
    make_table: TableFactory,
    reliability: Recorder,
    variant: Variant,
    transfers: int,
) -> None:
    """32 writers moving money between 6 hot accounts: with every safe strategy money is
    conserved and each balance equals its opening balance plus the committed transfers
    (deadlocks, version conflicts and snapshot conflicts retried); the pool is clean
    afterwards. The unsafe variant's lost updates are measured, not asserted."""
    table = await make_table(
        "CREATE TABLE `{table}` (id INT PRIMARY KEY, balance INT NOT NULL, "
        "version INT NOT NULL DEFAULT 0, lost INT NOT NULL DEFAULT 0)"
    )
    async with DbSession(engine, registry=None) as s:
        for account in range(1, ACCOUNTS + 1):
            await s.execute(
                f"INSERT INTO `{table}` (id, balance) VALUES (:id, :b)",
                {"id": account, "b": OPENING},
            )
    db = snapshot_engine if variant.snapshot_isolation else engine
    async with DbSession(db, registry=None) as s:
        enabled = await s.execute_scalar("SELECT @@SESSION.innodb_snapshot_isolation")
    assert bool(enabled) is variant.snapshot_isolation
    registry = CollectorRegistry()
    committed: Counter[int] = Counter()
    done = 0
    gave_up = 0

    async def worker(seed: int) -> None:
        nonlocal done, gave_up
        rng = random.Random(seed)
        for _ in range(transfers):
            order = rng.sample(range(1, ACCOUNTS + 1), 2)  # (src, dst), random lock order
            amount = rng.randint(1, 50)

            async def work(s: DbSession, order: list[int] = order, amount: int = amount) -> None:
                await variant.transfer(s, table, order, amount)

            try:
                await retry_transaction(
                    db, work, max_attempts=500, max_elapsed=90, base_delay=0.002,
                    max_delay=0.05, operation=OPERATION, registry=registry,
                )  # fmt: skip
            except RetryExhaustedError:
                gave_up += 1
                continue
            committed[order[0]] -= amount
            committed[order[1]] += amount
            done += 1

    await asyncio.gather(*(worker(seed) for seed in range(WORKERS)))
    async with DbSession(engine, registry=None) as s:
        rows = await s.fetch_all(f"SELECT id, balance, lost FROM `{table}`")
    balances = {int(r["id"]): int(r["balance"]) for r in rows}
    lost_updates = sum(int(r["lost"]) for r in rows)
    expected = {a: OPENING + committed[a] for a in range(1, ACCOUNTS + 1)}
    keys = tuple(f"{table}:{a}" for a in range(1, ACCOUNTS + 1))
    pool = await MARIADB.pool_report(db, keys)
    reliability.record(
        FAMILY,
        f"{variant.name}, {WORKERS} writers x {transfers}",
        workers=WORKERS,
        committed=done,
        deadlocks_retried=_retries(registry, "deadlock"),
        conflicts_retried=_retries(registry, "version_conflict"),
        serialization_retried=_retries(registry, "serialization"),
        gave_up=gave_up,
        lost_updates=lost_updates,
        money_drift=sum(balances.values()) - ACCOUNTS * OPENING,
        wrong_balances=sum(balances[a] != expected[a] for a in expected),
        leaked_connections=pool.checked_out,
        open_transactions=pool.open_transactions,
        held_named_locks=len(pool.held_locks),
    )
    assert (pool.checked_out, pool.open_transactions, pool.held_locks) == (0, 0, ())
    if variant.exact:
        assert sum(balances.values()) == ACCOUNTS * OPENING
        assert balances == expected
        assert lost_updates == 0
        assert gave_up <= WORKERS * transfers // 20
    if variant.snapshot_isolation and variant.transfer is _plain:
        assert _retries(registry, "serialization") > 0  # the loser got error 1020
    if variant.transfer in (_row_locks, _named_locks):
        assert _retries(registry, "deadlock") > 0  # random order: deadlocks happened
