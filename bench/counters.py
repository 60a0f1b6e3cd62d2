"""The counter table of the primitives section: ``id``, ``n`` and an OCC ``version``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .workload import unique_name

_DEADLOCKS = sa.text(
    "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'lock_deadlocks'"
)


class CounterTable:
    """``rows`` counters, all starting at zero."""

    def __init__(self, engine: AsyncEngine, rows: int) -> None:
        self.engine = engine
        self.rows = rows
        self.name = unique_name("bench_counters")

    async def create(self) -> None:
        values = ", ".join(f"({i})" for i in range(1, self.rows + 1))
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE TABLE {self.name} (id INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0, "
                    "version INT NOT NULL DEFAULT 0) ENGINE=InnoDB"
                )
            )
            await conn.execute(sa.text(f"INSERT INTO {self.name} (id) VALUES {values}"))

    async def reset(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f"UPDATE {self.name} SET n = 0, version = 0"))

    async def total(self) -> int:
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.text(f"SELECT SUM(n) FROM {self.name}"))).scalar()
        return int(found or 0)

    async def drop(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.name}"))


async def server_deadlocks(engine: AsyncEngine) -> int | None:
    """InnoDB's deadlock counter (server-wide), None where the metric is unavailable."""
    async with engine.connect() as conn:
        found = (await conn.execute(_DEADLOCKS)).scalar()
    return None if found is None else int(found)
