"""The accounts table of the transfers (parent side): created once per database, reset
before every run, checked after it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..workload import unique_name
from .workload import INITIAL_BALANCE, SHAPES


class TransferTable:
    """``id, balance, version, transfers``: ``balance`` starts at INITIAL_BALANCE,
    ``version`` is OCC's, ``transfers`` counts the committed changes of each row (every
    strategy adds one to both rows of a transfer)."""

    def __init__(self, engine: AsyncEngine, backend: str) -> None:
        self.engine = engine
        self.backend = backend
        self.accounts = max(SHAPES.values())
        self.name = unique_name("bench_transfers")

    async def create(self) -> None:
        suffix = " ENGINE=InnoDB" if self.backend == "mariadb" else ""
        rows = ", ".join(f"({i}, {INITIAL_BALANCE})" for i in range(1, self.accounts + 1))
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE TABLE {self.name} (id INT PRIMARY KEY, balance BIGINT NOT NULL, "
                    "version INT NOT NULL DEFAULT 0, transfers INT NOT NULL DEFAULT 0)" + suffix
                )
            )
            await conn.execute(sa.text(f"INSERT INTO {self.name} (id, balance) VALUES {rows}"))

    async def reset(self) -> None:
        """Every balance back to the start, versions and transfer counts to zero; on
        PostgreSQL the dead row versions are vacuumed away, so no run inherits them."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"UPDATE {self.name} SET balance = {INITIAL_BALANCE}, version = 0, "
                    "transfers = 0"
                )
            )
        if self.backend == "postgresql":
            async with self.engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.execute(sa.text(f"VACUUM {self.name}"))

    async def verify(self, transfers: int) -> list[str]:
        """What is wrong after ``transfers`` transfers; empty when money was conserved and
        every transfer committed exactly once."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.text(f"SELECT SUM(balance), SUM(transfers) FROM {self.name}"))
            ).one()
        balances, changes = int(row[0]), int(row[1])
        problems = []
        if balances != INITIAL_BALANCE * self.accounts:
            problems.append(
                f"sum of balances {balances:,} != {INITIAL_BALANCE * self.accounts:,}: "
                "money was created or lost"
            )
        if changes != 2 * transfers:
            problems.append(
                f"{changes:,} row changes committed for {transfers:,} transfers "
                f"(expected {2 * transfers:,})"
            )
        return problems

    async def drop(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.name}"))
