"""32 concurrent tasks moving money between a few hot accounts, with each concurrency
strategy: the total is conserved and every balance equals its opening balance plus the
deltas of the transfers that committed (no lost update, no half transfer)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    RetryExhaustedError,
    RowLock,
    occ_update,
    retry_transaction,
)

from ..conftest import TableFactory
from ..support.backends import Backend

WORKERS = 32
TRANSFERS_PER_WORKER = 15
ACCOUNTS = 6
OPENING = 1_000

Transfer = Callable[[DbSession, str, int, int, int], Awaitable[None]]


async def _occ(s: DbSession, table: str, src: int, dst: int, amount: int) -> None:
    # Rows in id order: the writes then never deadlock (PostgreSQL only detects a
    # deadlock after deadlock_timeout, 1 s by default).
    for account, delta in sorted(((src, -amount), (dst, amount))):
        row = await s.fetch_one(
            f"SELECT balance, version FROM {table} WHERE id = :id", {"id": account}
        )
        assert row is not None
        await occ_update(
            s, table, "id", account, "version", row["version"],
            {"balance": row["balance"] + delta}, raise_on_conflict=True,
        )  # fmt: skip


async def _row_lock(s: DbSession, table: str, src: int, dst: int, amount: int) -> None:
    rows = {}
    for account in sorted((src, dst)):
        row = await RowLock(s, table, {"id": account}).acquire()
        assert row is not None
        rows[account] = row["balance"]
    for account, delta in ((src, -amount), (dst, amount)):
        await s.execute(
            f"UPDATE {table} SET balance = :b WHERE id = :id",
            {"b": rows[account] + delta, "id": account},
        )


async def _advisory(s: DbSession, table: str, src: int, dst: int, amount: int) -> None:
    for account in sorted((src, dst)):
        await AdvisoryLock(s, f"{table}:account:{account}", timeout=30).acquire()
    for account, delta in ((src, -amount), (dst, amount)):
        # A plain read-modify-write: only the named lock makes it safe.
        balance = await s.execute_scalar(
            f"SELECT balance FROM {table} WHERE id = :id", {"id": account}
        )
        await s.execute(
            f"UPDATE {table} SET balance = :b WHERE id = :id",
            {"b": balance + delta, "id": account},
        )


@pytest.mark.parametrize(
    "transfer",
    [
        pytest.param(_occ, id="occ+retry"),
        pytest.param(_row_lock, id="row-lock"),
        pytest.param(_advisory, id="advisory-lock"),
    ],
)
async def test_concurrent_transfers_conserve_money(
    engine: AsyncEngine, backend: Backend, make_table: TableFactory, transfer: Transfer
) -> None:
    """With 32 concurrent workers, money is conserved and each account matches the committed
    transfers exactly."""
    table = await make_table(
        "CREATE TABLE {table} (id INT PRIMARY KEY, balance INT NOT NULL, "
        "version INT NOT NULL DEFAULT 0)"
    )
    async with DbSession(engine) as s:
        for account in range(1, ACCOUNTS + 1):
            await s.execute(
                f"INSERT INTO {table} (id, balance) VALUES (:id, :b)",
                {"id": account, "b": OPENING},
            )
    committed: Counter[int] = Counter()
    gave_up = 0

    async def worker(seed: int) -> None:
        nonlocal gave_up
        rng = random.Random(seed)
        for _ in range(TRANSFERS_PER_WORKER):
            src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
            amount = rng.randint(1, 50)

            async def work(
                s: DbSession, src: int = src, dst: int = dst, amount: int = amount
            ) -> None:
                await transfer(s, table, src, dst, amount)

            try:
                await retry_transaction(
                    engine, work, max_attempts=200, max_elapsed=60, base_delay=0.002,
                    max_delay=0.05, operation="transfer",
                )  # fmt: skip
            except RetryExhaustedError:
                gave_up += 1
                continue
            committed[src] -= amount
            committed[dst] += amount

    await asyncio.gather(*(worker(seed) for seed in range(WORKERS)))
    async with DbSession(engine) as s:
        rows = await s.fetch_all(f"SELECT id, balance FROM {table}")
    balances = {row["id"]: row["balance"] for row in rows}
    assert sum(balances.values()) == ACCOUNTS * OPENING
    assert balances == {a: OPENING + committed[a] for a in range(1, ACCOUNTS + 1)}
    assert gave_up <= WORKERS * TRANSFERS_PER_WORKER // 20
    report = await backend.pool_report(engine)
    assert (report.checked_out, report.open_transactions) == (0, 0)
