"""A member of a partitioned consumer group as a separate process, for tests that kill,
stop or pause it.

    python -m tests.support.partition_worker --redis-url URL [--cluster] --stream S
        --partitions N --group G --member M --state T --violations V
        [--inbox I] [--fence F] [--lease-ttl-ms MS] [--concurrency C] [--hang-ms MS]

The handler applies each message's per-key sequence number with a conditional UPDATE of
the state table (the key's last number must be the one before). A message that does not
match is recorded in the violations table (key, number, what was there, member) in the
same transaction, so only committed effects count. SIGTERM stops the member gracefully;
it then prints its ownership counters as one JSON line on stdout and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    PartitionedConsumer,
    PartitionedStream,
    QueueMessage,
    create_redis_client,
)

from .settings import DATABASE_URL


async def run(args: argparse.Namespace) -> None:
    engine = create_async_engine(DATABASE_URL, pool_size=args.concurrency * 8 + 4)
    redis = create_redis_client(args.redis_url, cluster=args.cluster, block_ms=100)

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        key, seq = message.payload["k"], message.payload["seq"]
        if args.hang_ms:
            await asyncio.sleep(args.hang_ms / 1000)
        matched = await session.execute(
            f"UPDATE {args.state} SET last_seq = :seq WHERE k = :k AND last_seq = :previous",
            {"seq": seq, "k": key, "previous": seq - 1},
        )
        if matched == 0:
            found = await session.execute_scalar(
                f"SELECT last_seq FROM {args.state} WHERE k = :k", {"k": key}
            )
            await session.execute(
                f"INSERT INTO {args.violations} (k, seq, found, member) "
                "VALUES (:k, :seq, :found, :member)",
                {"k": key, "seq": seq, "found": found, "member": args.member},
            )

    consumer = PartitionedConsumer(
        redis,
        PartitionedStream(args.stream, args.partitions),
        args.group,
        inbox=Inbox(args.inbox) if args.inbox else None,
        fence=EpochFence(args.fence) if args.fence else None,
        member=args.member,
        lease_ttl_ms=args.lease_ttl_ms,
        concurrency=args.concurrency,
        block_ms=100,
        max_deliveries=None,
        drain_timeout=10.0,
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.5,
        ordering_retry_delay=0.01,
        ordering_retry_max_delay=0.2,
        registry=None,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run(handler, engine=engine)
    finally:
        await redis.aclose()
        await engine.dispose()
    print(json.dumps(dataclasses.asdict(consumer.ownership())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--member", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--violations", required=True)
    parser.add_argument("--inbox")
    parser.add_argument("--fence")
    parser.add_argument("--lease-ttl-ms", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--hang-ms", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
