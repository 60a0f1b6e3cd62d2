"""Typed payloads (JsonCodec(Model)): validated into the model when consumed, invalid
ones dead-lettered at once with the validation errors, models accepted by producers."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from typing_extensions import TypedDict

from safesync_async import (
    JsonCodec,
    MessageEncodeError,
    PayloadValidationError,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
)

from ..support.checker import dead_letters


class Order(BaseModel):
    order_id: int = Field(gt=0)
    total: Decimal


@dataclasses.dataclass(frozen=True)
class Refund:
    order_id: int
    amount: Decimal


class Ping(TypedDict):
    n: int


def test_models_round_trip_through_the_codec() -> None:
    """A pydantic model, a dataclass and a TypedDict survive encode then decode, and a
    dict that validates is accepted in place of a model instance."""
    orders = JsonCodec(Order)
    assert orders.decode(orders.encode(Order(order_id=1, total=Decimal("2.50")))) == Order(
        order_id=1, total=Decimal("2.50")
    )
    assert orders.decode(orders.encode({"order_id": 2, "total": "1"})).order_id == 2  # type: ignore[arg-type]
    refunds = JsonCodec(Refund)
    assert refunds.decode(refunds.encode(Refund(3, Decimal("4")))) == Refund(3, Decimal("4"))
    pings = JsonCodec(Ping)
    assert pings.decode(pings.encode({"n": 5})) == {"n": 5}


def test_invalid_payloads_raise_with_every_error() -> None:
    """A payload that does not validate raises PayloadValidationError listing each failing
    field; publishing one raises MessageEncodeError (nothing is sent)."""
    orders = JsonCodec(Order)
    with pytest.raises(PayloadValidationError) as raised:
        orders.decode({b"data": b'{"order_id": 0}'})
    assert [error["loc"] for error in raised.value.errors] == [("order_id",), ("total",)]
    assert "order_id: Input should be greater than 0" in str(raised.value)
    with pytest.raises(MessageEncodeError):
        orders.encode({"order_id": "x"})  # type: ignore[arg-type]


def test_the_default_codec_encodes_models_as_json_objects() -> None:
    """Without a model, JsonCodec still encodes pydantic models and dataclasses (as the
    objects they dump to) and decodes plain JSON."""
    codec: JsonCodec[Any] = JsonCodec()
    fields = codec.encode(
        {"order": Order(order_id=1, total=Decimal("1.5")), "refund": Refund(1, Decimal(2))}
    )
    assert codec.decode(fields) == {
        "order": {"order_id": 1, "total": "1.5"},
        "refund": {"order_id": 1, "amount": "2"},
    }


async def test_consumer_validates_and_dead_letters_invalid_entries_at_once(
    redis: Redis, stream: str
) -> None:
    """The handler gets model instances; an entry that does not validate is dead-lettered
    on its first delivery (reason 'invalid', with the errors), not retried."""
    codec = JsonCodec(Order)
    await QueueProducer(redis, stream, codec=codec, registry=None).publish(
        Order(order_id=1, total=Decimal("9.99"))
    )
    await QueueProducer(redis, stream, registry=None).publish({"order_id": -1, "total": "x"})
    seen: list[Order] = []

    async def handler(message: QueueMessage[Order]) -> None:
        seen.append(message.payload)

    config = QueueConfig(
        stream_key=stream, consumer_group="g", block_ms=50, codec=codec, max_deliveries=5
    )
    consumer = QueueConsumer(redis, config, registry=None)
    await consumer.run_until_drained(handler)
    assert seen == [Order(order_id=1, total=Decimal("9.99"))]
    [letter] = await dead_letters(redis, stream, config.dead_letters)
    assert (letter.reason.value, letter.deliveries) == ("invalid", 1)
    assert "order_id: Input should be greater than 0" in letter.error
    assert "total: Input should be a valid decimal" in letter.error
    assert consumer.statistics().failed == 0
