"""Dead letters: an entry that is not JSON is dead-lettered at once; an entry whose handler
keeps failing is retried and dead-lettered after max_deliveries. Then: inspect the stream
with stream_health, read the dead letters back, fix the cause and replay the one that can
be replayed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from redis.asyncio import Redis

from safesync_async import (
    DeadLetter,
    DeadLetterReason,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
    dead_letter_key,
    parse_dead_letter,
    stream_health,
)

from .settings import REDIS_URL

Entries = list[tuple[bytes, dict[bytes, bytes]]]
shipped: list[int] = []
broken_orders = {13}


# --8<-- [start:handler]
async def ship(msg: QueueMessage[Any]) -> None:
    """No engine, no session: the entry is acked when this returns, kept pending if it raises."""
    order = int(msg.payload["order"])
    if order in broken_orders:
        raise ValueError(f"no address for order {order}")  # fails on every delivery
    shipped.append(order)


# --8<-- [end:handler]


# --8<-- [start:config]
def retrying_config(stream: str) -> QueueConfig:
    return QueueConfig(
        stream_key=stream,
        consumer_group="shipping",
        consumer_name="shipper-1",
        max_deliveries=3,  # the third failed delivery goes to the dead-letter stream
        claim_min_idle_ms=300,  # retry a failed entry after 0.3 s (keep above your handler time)
        claim_interval_ms=100,
        block_ms=100,
        # dead_letter_stream defaults to dead_letter_key(stream): "{<stream>}:dead"
    )


# --8<-- [end:config]


# --8<-- [start:read]
async def read_dead_letters(redis: Redis, stream: str) -> list[DeadLetter]:
    """The dead letters of a stream, oldest first (XRANGE reads them without removing)."""
    entries = cast(Entries, await redis.xrange(dead_letter_key(stream)))  # [(id, fields)]
    return [parse_dead_letter(entry_id.decode(), fields) for entry_id, fields in entries]


# --8<-- [end:read]


# --8<-- [start:replay]
async def replay(redis: Redis, letter: DeadLetter) -> str:
    """Put a dead letter back on the stream it came from, under a new id, then remove it
    from the dead-letter stream (what `safesync dead-letters replay` does)."""
    [new_id] = await QueueProducer(redis, letter.original_stream).add_fields([letter.fields])
    await redis.xdel(dead_letter_key(letter.original_stream), letter.id)
    return new_id


# --8<-- [end:replay]


async def main() -> None:
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:shipping:{uuid.uuid4().hex[:8]}"
    try:
        await QueueProducer(redis, stream).publish_batch({"order": n} for n in (11, 12, 13, 14))
        await redis.xadd(stream, {"data": b"{not json"})  # written by a broken producer

        consumer = QueueConsumer(redis, retrying_config(stream))
        async with asyncio.timeout(30):
            await consumer.run_until_drained(ship)
        stats = consumer.statistics()
        assert sorted(shipped) == [11, 12, 14]
        assert stats.dead_lettered == 2
        assert stats.failed >= 2  # order 13, on every delivery until it was dead-lettered

        # --8<-- [start:health]
        health = await stream_health(redis, stream)
        print(health.describe())  # length, per group: lag, pending, oldest pending age...
        assert health.dead_letters == 2
        assert health.groups[0].pending == 0  # dead letters are acked in the stream
        # --8<-- [end:health]

        letters = await read_dead_letters(redis, stream)
        # --8<-- [start:letters]
        for letter in letters:
            print(letter.original_id, letter.reason.value, letter.deliveries, letter.error)
        # 1718000000004-0 undecodable 1 'data' is not valid JSON: ...
        # 1718000000002-0 handler_failed 3 ValueError: no address for order 13
        # --8<-- [end:letters]
        assert [letter.reason for letter in letters] == [
            DeadLetterReason.UNDECODABLE,  # dead-lettered when first read
            DeadLetterReason.HANDLER_FAILED,  # after its third delivery
        ]

        broken_orders.clear()  # the cause is fixed: order 13 has an address now
        await replay(redis, letters[1])
        async with asyncio.timeout(30):
            await QueueConsumer(redis, retrying_config(stream)).run_until_drained(ship)
        assert sorted(shipped) == [11, 12, 13, 14]
        assert [letter.reason for letter in await read_dead_letters(redis, stream)] == [
            DeadLetterReason.UNDECODABLE  # still there: replaying it would fail again
        ]
        print(f"shipped {sorted(shipped)}; one dead letter left for a human")
    finally:
        shipped.clear()
        broken_orders.update({13})
        await redis.delete(stream, dead_letter_key(stream))
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
