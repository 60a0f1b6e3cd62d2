"""Tasks running a full DbSession (statements, a row lock, a named lock, a commit) are
cancelled after a random delay, with and without a competing holder of the locks. After
every cancellation the pool and the server are clean."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    LockNotAvailableError,
    LockTimeoutError,
    RowLock,
)

from ..conftest import TableFactory
from ..support.backends import MARIADB
from ..support.reliability import Recorder

pytestmark = pytest.mark.faults

FAMILY = "Cancellation and pool hygiene"


@dataclass
class Tally:
    """What the examples of one test saw, recorded once at the end."""

    table: str
    key: str
    default_lock_timeout: str
    figures: Counter[str] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)


@pytest.fixture
async def tally(
    engine: AsyncEngine,
    make_table: TableFactory,
    reliability: Recorder,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Tally]:
    table = await make_table("CREATE TABLE `{table}` (id INT PRIMARY KEY, balance INT NOT NULL)")
    async with DbSession(engine, registry=None) as s:
        await s.execute(f"INSERT INTO `{table}` VALUES (1, 100), (2, 100)")
        default = str(await s.execute_scalar("SELECT @@GLOBAL.innodb_lock_wait_timeout"))
    found = Tally(table, f"cancel:{table}", default)
    yield found
    where = ", ".join(f"{stage} {count}" for stage, count in sorted(found.stages.items()))
    reliability.record(
        FAMILY,
        f"DbSession + RowLock + AdvisoryLock + commit cancelled at random points "
        f"(`{request.node.name}`)",
        cancellations=found.figures["cancellations"],
        leaked_connections=found.figures["leaked_connections"],
        open_transactions=found.figures["open_transactions"],
        held_named_locks=found.figures["held_named_locks"],
        changed_lock_timeouts=found.figures["changed_lock_timeouts"],
        lock_waits_left=found.figures["lock_waits_left"],
        contended=found.figures["contended"],
        torn_transactions=found.figures["torn_transactions"],
        stage_at_cancel=where,
    )


async def _cancel_once(
    engine: AsyncEngine, tally: Tally, delay_us: int, contended: bool, lock_timeout: bool
) -> None:
    """One example: run the session, cancel it after ``delay_us``, check the leftovers."""
    table, key = tally.table, tally.key
    stage = ["start"]
    holding = asyncio.Event()

    async def holder() -> None:
        async with DbSession(engine, registry=None) as s:
            await RowLock(s, table, {"id": 1}).acquire()
            await AdvisoryLock(s, key).acquire()
            holding.set()
            await asyncio.sleep(0.03)

    async def victim() -> None:
        stage[0] = "checkout"
        async with DbSession(engine, lock_timeout=3 if lock_timeout else None, registry=None) as s:
            stage[0] = "statement"
            await s.execute(f"UPDATE `{table}` SET balance = balance + 1 WHERE id = 2")
            stage[0] = "row lock"
            await RowLock(s, table, {"id": 1}).acquire()
            stage[0] = "named lock"
            await AdvisoryLock(s, key, timeout=5).acquire()
            stage[0] = "second statement"
            await s.execute(f"UPDATE `{table}` SET balance = balance + 1 WHERE id = 1")
            stage[0] = "commit"
        stage[0] = "finished first"

    holder_task = asyncio.create_task(holder()) if contended else None
    if holder_task is not None:
        await holding.wait()
    task = asyncio.create_task(victim())
    await asyncio.sleep(delay_us / 1e6)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    if holder_task is not None:
        await holder_task
    tally.stages[stage[0]] += 1
    tally.figures["cancellations"] += stage[0] != "finished first"
    tally.figures["contended"] += contended

    report = await MARIADB.pool_report(engine, (key,))
    changed = sum(t != tally.default_lock_timeout for t in report.lock_wait_timeouts)
    async with DbSession(engine, registry=None) as probe:
        balances = await probe.fetch_all(f"SELECT balance FROM `{table}` ORDER BY id")
        try:  # nothing of the cancelled session may still hold a lock on the server
            await RowLock(probe, table, {"id": 1}, nowait=True).acquire()
            await RowLock(probe, table, {"id": 2}, nowait=True).acquire()
            await AdvisoryLock(probe, key, timeout=0).acquire()
            locks_free = True
        except (LockNotAvailableError, LockTimeoutError):
            locks_free = False
    torn = balances[0]["balance"] != balances[1]["balance"]
    tally.figures["leaked_connections"] += report.checked_out
    tally.figures["open_transactions"] += report.open_transactions
    tally.figures["held_named_locks"] += len(report.held_locks)
    tally.figures["changed_lock_timeouts"] += changed
    tally.figures["torn_transactions"] += torn
    tally.figures["lock_waits_left"] += not locks_free
    assert report.checked_out == 0
    assert report.open_transactions == 0
    assert report.held_locks == ()
    assert changed == 0, report.lock_wait_timeouts
    assert not torn  # both updates committed, or neither
    assert locks_free


EXAMPLE = {  # an uncontended session takes a few ms; a contended one waits ~30 ms
    "delay_us": st.one_of(st.integers(0, 6_000), st.integers(6_000, 50_000)),
    "contended": st.booleans(),
    "lock_timeout": st.booleans(),
}
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=60, deadline=None, suppress_health_check=HEALTH)
@given(**EXAMPLE)
async def test_cancelled_at_random_points(
    engine: AsyncEngine, tally: Tally, delay_us: int, contended: bool, lock_timeout: bool
) -> None:
    """A session cancelled at a random point leaves no checked-out connection, no open
    transaction, no held named lock, no changed lock wait timeout and no torn write."""
    await _cancel_once(engine, tally, delay_us, contended, lock_timeout)


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=HEALTH)
@given(**EXAMPLE)
async def test_cancelled_at_random_points_long(
    engine: AsyncEngine, tally: Tally, delay_us: int, contended: bool, lock_timeout: bool
) -> None:
    """The same invariants over 250 random cancellation points."""
    await _cancel_once(engine, tally, delay_us, contended, lock_timeout)
