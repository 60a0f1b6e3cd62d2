"""End-to-end demo: publish money transfers to a Redis stream, consume them into the
database with several concurrent consumers, then verify that money is conserved, every
transfer was applied exactly once and nothing is left pending.

    python -m examples.demo --messages 20000 --consumers 2 --concurrency 32

With no URL given it needs no services at all: it starts a private PostgreSQL and Valkey
(the ``embedded`` extra) in a temporary directory and removes them afterwards. Give
``--database`` / ``--redis`` (or SAFESYNC_DATABASE_URL / SAFESYNC_REDIS_URL) to use real
MySQL/MariaDB or PostgreSQL and Redis instead.

Exits 0 when every invariant holds, 1 when one fails, 2 when a server is unreachable.

On real servers it creates the tables demo_accounts, demo_transfers and demo_inbox and
the stream demo:transfers (group ledger). After a run whose invariants all hold it drops
and deletes them again, unless --keep is given; after a failed run it leaves them for
inspection and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConfigurationError,
    DbSession,
    Inbox,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    SafeSyncError,
    create_engine,
    create_redis_client,
    dead_letter_key,
    stream_health,
)
from safesync_async.embedded import EmbeddedServers

STREAM = "demo:transfers"
GROUP = "ledger"
OPENING_BALANCE = 1_000
INBOX = Inbox("demo_inbox")
TABLES = ("demo_accounts", "demo_transfers", INBOX.table.name)


# --8<-- [start:handler]
async def apply_transfer(message: QueueMessage[Any], session: DbSession) -> None:
    """The handler: record the transfer and move the money, in one transaction. The
    consumer's inbox runs it at most once per message, even after a redelivery."""
    transfer = message.payload
    source, target, amount = transfer["from"], transfer["to"], transfer["amount"]
    await session.execute(
        "INSERT INTO demo_transfers (message_id, source, target, amount) "
        "VALUES (:id, :source, :target, :amount)",
        {"id": message.id, "source": source, "target": target, "amount": amount},
    )
    # Update the two rows in id order, so concurrent transfers never deadlock.
    for account, delta in sorted(((source, -amount), (target, amount))):
        await session.execute(
            "UPDATE demo_accounts SET balance = balance + :delta WHERE id = :id",
            {"delta": delta, "id": account},
        )


# --8<-- [end:handler]


async def prepare(engine: AsyncEngine, redis: Redis, accounts: int) -> None:
    await INBOX.create_table(engine)
    async with DbSession(engine) as session:
        await session.execute(
            "CREATE TABLE IF NOT EXISTS demo_accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)"
        )
        await session.execute(
            "CREATE TABLE IF NOT EXISTS demo_transfers (message_id VARCHAR(40) NOT NULL, "
            "source INT NOT NULL, target INT NOT NULL, amount INT NOT NULL)"
        )
        await session.execute("DELETE FROM demo_transfers")
        await session.execute(f"DELETE FROM {INBOX.table.name}")
        await session.execute("DELETE FROM demo_accounts")
        for start in range(0, accounts, 500):
            rows = ", ".join(
                f"({i}, {OPENING_BALANCE})"
                for i in range(start + 1, min(accounts, start + 500) + 1)
            )
            await session.execute(f"INSERT INTO demo_accounts VALUES {rows}")
    await redis.delete(STREAM, dead_letter_key(STREAM))


async def verify(engine: AsyncEngine, redis: Redis, accounts: int, messages: int) -> list[str]:
    """Every invariant the demo promises; returns the ones that failed."""
    failures = []
    async with DbSession(engine) as session:
        total = int(await session.execute_scalar("SELECT SUM(balance) FROM demo_accounts"))
        applied = await session.execute_scalar(
            "SELECT COUNT(DISTINCT message_id) FROM demo_transfers"
        )
        rows = await session.execute_scalar("SELECT COUNT(*) FROM demo_transfers")
        mismatched = await session.execute_scalar(
            """
            SELECT COUNT(*) FROM demo_accounts a
            LEFT JOIN (
                SELECT id, SUM(delta) AS delta FROM (
                    SELECT source AS id, -amount AS delta FROM demo_transfers
                    UNION ALL
                    SELECT target AS id, amount AS delta FROM demo_transfers
                ) moves GROUP BY id
            ) d ON d.id = a.id
            WHERE a.balance <> :opening + COALESCE(d.delta, 0)
            """,
            {"opening": OPENING_BALANCE},
        )
    pending = int((await redis.xpending(STREAM, GROUP))["pending"])
    dead = int(await redis.xlen(dead_letter_key(STREAM)))
    checks = [
        (
            total == accounts * OPENING_BALANCE,
            f"money conserved: {total} == {accounts * OPENING_BALANCE}",
        ),
        (applied == messages, f"every transfer applied: {applied} == {messages}"),
        (rows == applied, f"none applied twice: {rows} rows for {applied} transfers"),
        (not mismatched, "every balance equals opening + its applied transfers"),
        (pending == 0, f"nothing left pending: {pending} pending"),
        (dead == 0, f"no dead letters: {dead}"),
    ]
    for ok, label in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
        if not ok:
            failures.append(label)
    return failures


async def clean_up(engine: AsyncEngine, redis: Redis) -> None:
    """Drop the demo's tables and delete its streams."""
    async with DbSession(engine) as session:
        for table in TABLES:
            await session.execute(f"DROP TABLE IF EXISTS {table}")
    await redis.delete(STREAM, dead_letter_key(STREAM))


def left_behind() -> str:
    return (
        f"tables {', '.join(TABLES)}; streams {STREAM} (group {GROUP}), {dead_letter_key(STREAM)}"
    )


async def reachable(engine: AsyncEngine, redis: Redis, database_url: str, redis_url: str) -> bool:
    try:
        async with DbSession(engine) as session:
            await session.execute("SELECT 1")
    except SafeSyncError as exc:
        print(
            f"Cannot reach the database at {database_url} ({exc}).\n"
            "Start it (for example `docker compose up -d --wait`), pass --database URL, "
            "or give no URL at all to use embedded servers.",
            file=sys.stderr,
        )
        return False
    try:
        await redis.ping()
    except Exception as exc:
        print(
            f"Cannot reach Redis at {redis_url} ({exc}).\n"
            "Start it (for example `docker compose up -d --wait`), pass --redis URL, "
            "or give no URL at all to use embedded servers.",
            file=sys.stderr,
        )
        return False
    return True


async def main(
    database_url: str,
    redis_url: str,
    messages: int = 20_000,
    consumers: int = 2,
    concurrency: int = 32,
    accounts: int = 200,
    time_limit: float = 600.0,
    *,
    keep: bool = False,
) -> int:
    engine = create_engine(database_url, pool_size=consumers * concurrency, max_overflow=4)
    redis = create_redis_client(redis_url, block_ms=200)
    try:
        if not await reachable(engine, redis, database_url, redis_url):
            return 2
        print(f"database {engine.dialect.name}, redis {redis_url}")
        await prepare(engine, redis, accounts)
        rng = random.Random(7)
        transfers = []
        for _ in range(messages):
            source, target = rng.sample(range(1, accounts + 1), 2)
            transfers.append({"from": source, "to": target, "amount": rng.randint(1, 100)})
        started = time.perf_counter()
        await QueueProducer(redis, STREAM).publish_batch(transfers)
        published = time.perf_counter() - started
        print(f"published {messages} transfers to {STREAM!r} in {published:.2f} s")

        # --8<-- [start:consumers]
        workers = [
            QueueConsumer(
                redis,
                QueueConfig(
                    stream_key=STREAM,
                    consumer_group=GROUP,
                    consumer_name=f"demo-{i}",
                    concurrency=concurrency,
                    block_ms=200,
                ),
                inbox=INBOX,
            )
            for i in range(consumers)
        ]
        started = time.perf_counter()
        async with asyncio.timeout(time_limit):
            await asyncio.gather(
                *(worker.run_until_drained(apply_transfer, engine=engine) for worker in workers)
            )
        # --8<-- [end:consumers]
        elapsed = time.perf_counter() - started
        print(
            f"consumed {messages} transfers with {consumers} consumers x concurrency "
            f"{concurrency} in {elapsed:.2f} s: {messages / elapsed:,.0f} messages/s\n"
            "  (each message: one transaction with an inbox row, an INSERT and two UPDATEs "
            "(5 round trips with its COMMIT), acked after the COMMIT; every consumer runs "
            "in this one Python process, sharing one CPU core with the publisher and the "
            "checks, against servers on the same machine: a demo of correctness under "
            "concurrency, not a benchmark; see docs/benchmarks.md)"
        )
        for worker in workers:
            print(f"  {worker.config.consumer_name}: {worker.statistics()}")
        print(
            (
                await stream_health(redis, STREAM, dead_letter_stream=dead_letter_key(STREAM))
            ).describe()
        )
        print("invariants:")
        failures = await verify(engine, redis, accounts, messages)
        print("all invariants hold" if not failures else f"{len(failures)} invariant(s) FAILED")
        if failures or keep:
            print(f"left on the servers for inspection: {left_behind()}")
        else:
            await clean_up(engine, redis)
            print(f"removed {left_behind()}")
        return 1 if failures else 0
    finally:
        await redis.aclose()
        await engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--database", default=os.environ.get("SAFESYNC_DATABASE_URL"))
    parser.add_argument("--redis", default=os.environ.get("SAFESYNC_REDIS_URL"))
    parser.add_argument(
        "--keep", action="store_true", help="leave the tables and streams for inspection"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sizes = (args.messages, args.consumers, args.concurrency, args.accounts)
    if args.database and args.redis:
        sys.exit(asyncio.run(main(args.database, args.redis, *sizes, keep=args.keep)))
    if args.database or args.redis:
        parser.error("give both --database and --redis, or neither (embedded servers)")
    try:
        servers = EmbeddedServers().start()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print("no URLs given: using embedded PostgreSQL and Valkey (removed afterwards)")
    try:
        code = asyncio.run(main(servers.database_url, servers.redis_url, *sizes))
    finally:
        servers.stop()
    sys.exit(code)


if __name__ == "__main__":
    cli()
