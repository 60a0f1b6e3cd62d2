"""The consumer workload: account rows, a stream of deposits, reset between runs and the
correctness check after every run."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import QueueProducer, dead_letter_key

from .drain import group_drained
from .procstat import wait_for_quiet_host
from .settings import ACCOUNTS, GROUP, PAYLOAD_SEED, QUIET_HOST_BUSY

#: Server-wide counters sampled around each run (they include other clients' work).
STATUS_COUNTERS = ("Com_commit", "Com_update", "Innodb_data_fsyncs", "Questions")
PURGE_BACKLOG_LIMIT = 1_000  # undo history entries at which the server counts as settled
PURGE_WAIT_SECONDS = 20.0


def unique_name(prefix: str) -> str:
    """A table or stream name no other run uses."""
    return f"{prefix}_{int(time.time())}_{secrets.token_hex(3)}"


def handler_sql(table: str, paramstyle: Literal["named", "format"] = "named") -> str:
    """The one statement every consumer variant runs per message."""
    if paramstyle == "named":
        return f"UPDATE {table} SET balance = balance + :amount WHERE id = :account"
    return f"UPDATE {table} SET balance = balance + %s WHERE id = %s"


@dataclass(frozen=True, slots=True)
class Deposits:
    """``count`` deposits over the accounts, the same for every run of that size."""

    payloads: list[dict[str, int]]
    total: int

    @classmethod
    def generate(cls, count: int) -> Deposits:
        rng = random.Random(PAYLOAD_SEED)
        payloads = [
            {"account": rng.randint(1, ACCOUNTS), "amount": rng.randint(1, 100)}
            for _ in range(count)
        ]
        return cls(payloads, sum(p["amount"] for p in payloads))


async def wait_for_purge(engine: AsyncEngine, limit: float = PURGE_WAIT_SECONDS) -> int | None:
    """Wait (at most ``limit`` seconds) until InnoDB has purged the undo history of earlier
    runs, so one run's background purge does not bill the next; returns the history
    length left."""
    query = sa.text(
        "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"
    )
    deadline = time.monotonic() + limit
    while True:
        async with engine.connect() as conn:
            length = (await conn.execute(query)).scalar()
        if length is None or int(length) < PURGE_BACKLOG_LIMIT or time.monotonic() > deadline:
            return None if length is None else int(length)
        await asyncio.sleep(0.2)


async def status_counters(engine: AsyncEngine) -> dict[str, int]:
    """:data:`STATUS_COUNTERS` from SHOW GLOBAL STATUS (those the server has)."""
    names = ", ".join(f"'{name}'" for name in STATUS_COUNTERS)
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"))
        return {str(name): int(value) for name, value in rows}


class AccountsWorkload:
    """The accounts table and the deposits stream of one benchmark run."""

    def __init__(self, engine: AsyncEngine, client: redis.asyncio.Redis) -> None:
        self.engine = engine
        self.redis = client
        self.table = unique_name("bench_accounts")
        self.stream = unique_name("bench_deposits")
        self.group = GROUP

    @property
    def dead_letters(self) -> str:
        return dead_letter_key(self.stream)

    async def create(self) -> None:
        rows = ", ".join(f"({i}, 0)" for i in range(1, ACCOUNTS + 1))
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE TABLE {self.table} (id INT PRIMARY KEY, balance BIGINT NOT NULL) "
                    "ENGINE=InnoDB"
                )
            )
            await conn.execute(sa.text(f"INSERT INTO {self.table} VALUES {rows}"))

    async def prepare_run(self, deposits: Deposits, patience: float) -> float:
        """Zero the balances, recreate the stream with the deposits (pipelined) and its
        group at the start, then let the server settle and wait up to ``patience``
        seconds for a quiet host; returns the host's busy share just before the run."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f"UPDATE {self.table} SET balance = 0"))
        await self.redis.delete(self.stream, self.dead_letters)
        await QueueProducer(self.redis, self.stream, registry=None).publish_batch(deposits.payloads)
        await self.redis.xgroup_create(self.stream, self.group, id="0")
        await wait_for_purge(self.engine)
        return await wait_for_quiet_host(QUIET_HOST_BUSY, patience)

    async def verify(self, deposits: Deposits) -> list[str]:
        """Every way the run could have been wrong; empty when it was right."""
        problems = []
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(sa.text(f"SELECT COALESCE(SUM(balance), 0) FROM {self.table}"))
            ).scalar()
        if total != deposits.total:
            problems.append(f"sum of balances {total} != sum of deposits {deposits.total}")
        pending: dict[str, Any] = await self.redis.xpending(self.stream, self.group)
        if int(pending["pending"]):
            problems.append(f"{pending['pending']} entries still pending")
        if not await group_drained(self.redis, self.stream, self.group):
            problems.append("entries left undelivered")
        dead = int(await self.redis.xlen(self.dead_letters))
        if dead:
            problems.append(f"{dead} dead letters")
        return problems

    async def drop_stream(self) -> None:
        await self.redis.delete(self.stream, self.dead_letters)

    async def cleanup(self) -> None:
        await self.drop_stream()
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}"))
