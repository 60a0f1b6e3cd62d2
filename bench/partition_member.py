"""One member of the partitions benchmark's group, as a process: a PartitionedConsumer
(inbox and fence) whose handler adds 1 to the message's account; SIGTERM stops it."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    PartitionedConsumer,
    PartitionedStream,
    QueueMessage,
    create_engine,
    create_redis_client,
)


async def run(args: argparse.Namespace) -> None:
    engine = create_engine(args.database_url, pool_size=args.concurrency * args.partitions + 4)
    redis = create_redis_client(args.redis_url, cluster=args.cluster, block_ms=100)
    update = f"UPDATE {args.table} SET balance = balance + 1 WHERE id = :id"

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await session.execute(update, {"id": message.payload["account"]})

    consumer = PartitionedConsumer(
        redis,
        PartitionedStream(args.stream, args.partitions),
        "bench",
        inbox=Inbox(args.inbox),
        fence=EpochFence(args.fence),
        member=args.member,
        concurrency=args.concurrency,
        lease_ttl_ms=3_000,
        block_ms=100,
        registry=None,
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, consumer.stop)
    try:
        await consumer.run(handler, engine=engine)
    finally:
        await redis.aclose()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("database-url", "redis-url", "stream", "member", "table", "inbox", "fence"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
