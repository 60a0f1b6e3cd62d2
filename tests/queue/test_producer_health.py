"""QueueProducer (publish, batch, metadata, safe trimming) and the stream health report."""

from __future__ import annotations

from typing import Any

import pytest

from safesync_async import (
    ConfigurationError,
    MessageEncodeError,
    QueueConfig,
    QueueConsumer,
    QueueProducer,
    UnsafeOperationError,
    dead_letter_key,
    stream_health,
)

pytestmark = pytest.mark.cluster  # also on a Redis Cluster (see tests/conftest.py)


async def test_publish_and_batch(redis: Any, stream: str) -> None:
    """publish and publish_batch add entries in order, with the JSON 'data' field, the
    idempotency key and headers; unencodable payloads and header collisions are refused."""
    producer = QueueProducer(redis, stream)
    first = await producer.publish({"a": 1}, idempotency_key="k-1", headers={"traceparent": "t"})
    ids = await producer.publish_batch(({"i": i} for i in range(1_200)), chunk_size=500)
    assert len(ids) == 1_200 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    [(entry_id, fields)] = await redis.xrange(stream, count=1)
    assert entry_id.decode() == first
    assert fields == {b"data": b'{"a":1}', b"idempotency_key": b"k-1", b"traceparent": b"t"}
    assert await redis.xlen(stream) == 1_201
    with pytest.raises(MessageEncodeError):
        await producer.publish({"bad": {1, 2}})
    with pytest.raises(ConfigurationError):
        await producer.publish({}, headers={"data": "x"})


async def test_trim_never_drops_unacknowledged_entries(redis: Any, stream: str) -> None:
    """trim keeps every pending or undelivered entry of every group; strict=True refuses
    instead; with everything acked it trims to the requested length."""
    producer = QueueProducer(redis, stream)
    ids = await producer.publish_batch({"i": i} for i in range(100))
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    fast = await redis.xreadgroup("fast", "c", {stream: ">"})
    await redis.xack(stream, "fast", *[i for i, _ in fast[0][1]])
    slow = await redis.xreadgroup("slow", "c", {stream: ">"}, count=30)
    await redis.xack(stream, "slow", *[i for i, _ in slow[0][1][:20]])  # 20 acked, 10 pending
    assert await producer.trim(10) == 20
    assert (await redis.xrange(stream, count=1))[0][0].decode() == ids[20]
    with pytest.raises(UnsafeOperationError):
        await producer.trim(10, strict=True)
    assert await redis.xlen(stream) == 80
    rest = await redis.xreadgroup("slow", "c", {stream: ">"})
    await redis.xack(stream, "slow", *[i for i, _ in slow[0][1][20:]], *[i for i, _ in rest[0][1]])
    assert await producer.trim(10, strict=True) == 70
    assert await redis.xlen(stream) == 10
    assert await producer.trim(50) == 0


async def test_health_report(redis: Any, stream: str) -> None:
    """The report shows length, lag, pending count, oldest pending age, delivery counts
    and consumers, and dead letters."""
    producer = QueueProducer(redis, stream)
    await producer.publish_batch({"i": i} for i in range(10))
    consumer = QueueConsumer(
        redis, QueueConfig(stream_key=stream, consumer_group="g", consumer_name="c1")
    )
    message = await consumer.next(block_ms=10)
    assert message is not None
    await redis.xadd(dead_letter_key(stream), {"x": "1"})
    health = await stream_health(redis, stream, dead_letter_stream=dead_letter_key(stream))
    assert health.exists and health.length == 10
    [group] = health.groups
    assert (group.name, group.pending, group.lag) == ("g", 1, 9)
    assert group.oldest_pending_id == message.id
    assert group.oldest_pending_age_s is not None and group.oldest_pending_age_s < 60
    assert group.max_delivery_count == 1
    assert [(c.name, c.pending) for c in group.consumers] == [("c1", 1)]
    assert health.dead_letters == 1
    assert "lag=9 pending=1" in health.describe()
    assert health.as_dict()["groups"][0]["name"] == "g"
    missing = await stream_health(redis, f"{stream}-missing")
    assert not missing.exists and missing.groups == ()
