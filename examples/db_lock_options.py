"""Lock options: RowLock with NOWAIT (fail fast) and SKIP LOCKED (take another row),
AdvisoryLock with timeout=0 (try once), and the server-side names of advisory locks.
Another session holds the locks meanwhile; main() checks every outcome."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    LockNotAvailableError,
    LockTimeoutError,
    RowLock,
    lock_name,
)

from .settings import make_engine


# --8<-- [start:nowait]
async def cancel_order(engine: AsyncEngine, order_id: int) -> str:
    """Cancel an order, unless someone is working on it right now: then say so at once."""
    try:
        async with DbSession(engine) as session:
            order = await RowLock(session, "example_jobs", {"id": order_id}, nowait=True).acquire()
            if order is None:
                return "missing"
            await session.execute(
                "UPDATE example_jobs SET status = 'cancelled' WHERE id = :id", {"id": order_id}
            )
    except LockNotAvailableError:
        return "busy"  # locked by another transaction; this one was rolled back, no waiting
    return "cancelled"


# --8<-- [end:nowait]


# --8<-- [start:skip-locked]
async def claim_job(session: DbSession, candidates: list[int]) -> dict[str, Any] | None:
    """Lock the first candidate job that is new and not locked by another worker."""
    for job_id in candidates:
        job = await RowLock(session, "example_jobs", {"id": job_id}, skip_locked=True).acquire()
        if job is not None and job["status"] == "new":
            return job  # locked until this session's transaction ends
    return None  # every candidate is taken or done


# --8<-- [end:skip-locked]


# --8<-- [start:try-once]
async def run_nightly_report(engine: AsyncEngine) -> bool:
    """Run the report unless another worker is already running it."""
    try:
        async with (
            DbSession(engine) as session,
            AdvisoryLock(session, "nightly-report", timeout=0),  # try once, do not wait
        ):
            await session.execute("UPDATE example_jobs SET status = status WHERE id = 1")
    except LockTimeoutError:
        return False  # held by another connection
    return True


# --8<-- [end:try-once]


async def main() -> None:
    engine = make_engine()
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_jobs "
                "(id INT PRIMARY KEY, status VARCHAR(20) NOT NULL)"
            )
            await session.execute("DELETE FROM example_jobs")
            await session.execute(
                "INSERT INTO example_jobs VALUES (1, 'new'), (2, 'new'), (3, 'new')"
            )

        async with DbSession(engine) as holder:  # another worker, busy with job 1
            await RowLock(holder, "example_jobs", {"id": 1}).acquire()
            await AdvisoryLock(holder, "nightly-report").acquire()

            assert await cancel_order(engine, 1) == "busy"
            assert await cancel_order(engine, 99) == "missing"
            async with DbSession(engine) as session:
                job = await claim_job(session, [1, 2, 3])
                assert job == {"id": 2, "status": "new"}  # job 1 was skipped
            assert await run_nightly_report(engine) is False
        # The holder committed: its row lock and its named lock are released.
        assert await cancel_order(engine, 1) == "cancelled"
        assert await run_nightly_report(engine) is True

        # --8<-- [start:lock-name]
        name = lock_name("user:7")  # what the server sees: ss:<readable prefix>:<hash>
        assert name.startswith("ss:user:7:")
        assert len(name) <= 64
        assert lock_name("User:7") != name  # different keys, different locks, on every server
        # --8<-- [end:lock-name]
        print(f"lock options behaved as documented; lock_name('user:7') = {name}")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE example_jobs")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
