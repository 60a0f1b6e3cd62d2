"""A consumer or an outbox relay as a separate process, for tests that kill it.

    python -m tests.support.worker consumer --stream S --group G --effects T [--inbox I]
        [--hang-ms MS] [--graceful --drain-timeout S] [--max-deliveries N] [--ordering key]
    python -m tests.support.worker relay --outbox O

Failpoints come from SAFESYNC_FAILPOINTS (see safesync_async._failpoints). The process
exits 0 once there is nothing left to do (stream drained / outbox empty). ``--hang-ms``
makes each handler sleep inside its transaction; ``--graceful`` installs the SIGTERM /
SIGINT handlers (a graceful stop, exit code 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from safesync_async import (
    DbSession,
    Inbox,
    Outbox,
    OutboxRelay,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    create_redis_client,
    install_signal_handlers,
)

from .checker import effect_key
from .settings import DATABASE_URL, REDIS_URL


async def consume(args: argparse.Namespace) -> None:
    engine = create_async_engine(DATABASE_URL, pool_size=args.concurrency + 2)
    redis = create_redis_client(REDIS_URL, block_ms=100)
    table = args.effects

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await session.execute(
            f"INSERT INTO {table} (message_id, message_key, n) VALUES (:id, :key, :n)",
            {"id": message.id, "key": effect_key(message), "n": message.payload.get("n")},
        )
        if args.hang_ms:
            await asyncio.sleep(args.hang_ms / 1000)

    config = QueueConfig(
        stream_key=args.stream,
        consumer_group=args.group,
        consumer_name=args.name,
        block_ms=100,
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        claim_min_idle_ms=args.claim_min_idle_ms,
        claim_interval_ms=200,
        batch_size=args.batch_size,
        max_deliveries=args.max_deliveries,
        drain_timeout=args.drain_timeout,
        ordering=args.ordering,
    )
    inbox = Inbox(args.inbox) if args.inbox else None
    consumer = QueueConsumer(redis, config, inbox=inbox, registry=None)
    if args.graceful:
        install_signal_handlers(consumer)
    try:
        await consumer.run_until_drained(handler, engine=engine)
    finally:
        await redis.aclose()
        await engine.dispose()


async def relay(args: argparse.Namespace) -> None:
    engine = create_async_engine(DATABASE_URL)
    redis = create_redis_client(REDIS_URL)
    outbox = Outbox(args.outbox)
    relay = OutboxRelay(engine, redis, outbox, batch_size=args.batch_size, registry=None)
    try:
        while await relay.relay_once():
            pass
    finally:
        await redis.aclose()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("consumer")
    c.add_argument("--stream", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--name", default="worker")
    c.add_argument("--effects", required=True)
    c.add_argument("--inbox")
    c.add_argument("--concurrency", type=int, default=8)
    c.add_argument("--prefetch", type=int, default=None)
    c.add_argument("--claim-min-idle-ms", type=int, default=500)
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("--hang-ms", type=int, default=0)
    c.add_argument("--graceful", action="store_true")
    c.add_argument("--drain-timeout", type=float, default=30.0)
    c.add_argument("--max-deliveries", type=int, default=5)
    c.add_argument("--ordering", choices=["none", "key"], default="none")
    r = sub.add_parser("relay")
    r.add_argument("--outbox", required=True)
    r.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(consume(args) if args.role == "consumer" else relay(args))


if __name__ == "__main__":
    main()
