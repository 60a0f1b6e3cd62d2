"""Typed payloads: a pydantic model (or a dataclass) as the message payload. The producer
publishes model instances; the consumer validates every entry into the model before the
handler sees it, and dead-letters an entry that does not validate at once, with the
validation errors (retrying it could not help). Needs the ``pydantic`` extra."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from pydantic import BaseModel, Field

from safesync_async import (
    DbSession,
    JsonCodec,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
    parse_dead_letter,
)

from .settings import REDIS_URL, make_engine

DeadLetters = list[tuple[bytes, dict[bytes, bytes]]]


# --8<-- [start:model]
class OrderPlaced(BaseModel):
    """The payload of the ``orders`` stream."""

    order_id: int = Field(gt=0)
    customer: str
    total: Decimal


@dataclass(frozen=True)
class Refund:  # a dataclass works the same way
    order_id: int
    amount: Decimal


ORDERS = JsonCodec(OrderPlaced)  # for the producer and the consumer of the stream


async def record_order(msg: QueueMessage[OrderPlaced], session: DbSession) -> None:
    order = msg.payload  # an OrderPlaced, already validated
    await session.execute(
        "INSERT INTO example_typed_orders (id, customer, total) VALUES (:id, :c, :t)",
        {"id": order.order_id, "c": order.customer, "t": order.total},
    )


# --8<-- [end:model]


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=200)
    stream = f"example:typed:{uuid.uuid4().hex[:8]}"
    dead_letters = QueueConfig(stream_key=stream, consumer_group="orders").dead_letters
    try:
        async with DbSession(engine) as session:
            await session.execute(
                "CREATE TABLE IF NOT EXISTS example_typed_orders "
                "(id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, total DECIMAL(10, 2))"
            )
            await session.execute("DELETE FROM example_typed_orders")
        # --8<-- [start:publish]
        producer = QueueProducer(redis, stream, codec=ORDERS)
        await producer.publish(OrderPlaced(order_id=1, customer="ada", total=Decimal("9.90")))
        await producer.publish({"order_id": 2, "customer": "bob", "total": "4.50"})  # validated
        # An entry written by some other producer, which does not validate:
        await QueueProducer(redis, stream).publish({"order_id": -3, "customer": "eve"})
        config = QueueConfig(stream_key=stream, consumer_group="orders", codec=ORDERS)
        consumer = QueueConsumer(redis, config)
        await consumer.run_until_drained(record_order, engine=engine)
        # --8<-- [end:publish]
        async with DbSession(engine) as session:
            rows = await session.fetch_all("SELECT id FROM example_typed_orders ORDER BY id")
        assert [row["id"] for row in rows] == [1, 2]
        [(entry_id, fields)] = cast(DeadLetters, await redis.xrange(dead_letters))
        letter = parse_dead_letter(entry_id.decode(), fields)
        assert (letter.reason.value, letter.deliveries) == ("invalid", 1), letter
        assert "order_id: Input should be greater than 0" in letter.error, letter.error
        assert "total: Field required" in letter.error, letter.error
        refund = JsonCodec(Refund)
        assert refund.decode(refund.encode(Refund(1, Decimal("1.5")))) == Refund(1, Decimal("1.5"))
        print(f"orders recorded: 2; dead-lettered as invalid: {letter.error[:60]}...")
    finally:
        async with DbSession(engine) as session:
            await session.execute("DROP TABLE IF EXISTS example_typed_orders")
        await redis.delete(stream, dead_letters)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
