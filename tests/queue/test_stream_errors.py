"""What leaves run() when the stream itself goes wrong under a running consumer: a stream
deleted during a blocking read follows the missing-group policy, a key replaced by another
type stops the consumer with a QueueError, and never an ExceptionGroup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from safesync_async import (
    ConsumerGroupMissingError,
    QueueConfig,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from .helpers import wait_until


def _config(stream: str, **overrides: Any) -> QueueConfig:
    settings: dict[str, Any] = {
        "stream_key": stream,
        "consumer_group": "g",
        "consumer_name": "c",
        "block_ms": 2_000,  # long enough that the deletion lands during a blocking read
        "claim_interval_ms": None,
    }
    settings.update(overrides)
    return QueueConfig(**settings)


@pytest.fixture
async def consumer_redis(safesync_redis_url: str, stream: str) -> AsyncIterator[Redis]:
    """The consumer's own client, named after the stream so its blocked reads can be found."""
    client = create_redis_client(safesync_redis_url, block_ms=2_000, client_name=stream)
    try:
        yield client
    finally:
        await client.aclose()


async def _blocked_reader(redis: Redis, stream: str) -> None:
    """Wait until the consumer (client named ``stream``) sits in a blocking XREADGROUP."""

    async def blocked() -> bool:
        clients = await redis.client_list()
        return any(
            c.get("name") == stream and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
            for c in clients
        )

    await wait_until(blocked, timeout=10)


async def test_stream_deleted_during_blocking_read_is_recreated(
    redis: Redis, consumer_redis: Redis, stream: str
) -> None:
    """DEL of the stream while the consumer blocks in XREADGROUP (UNBLOCKED) recreates the
    stream and group under on_missing_group='recreate' (counted), and the consumer goes on
    handling new messages."""
    seen: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append(message.payload["n"])

    consumer = QueueConsumer(consumer_redis, _config(stream), registry=None)
    task = asyncio.create_task(consumer.run(handler))
    try:
        await _blocked_reader(redis, stream)
        await redis.delete(stream)
        await wait_until(_holds(lambda: consumer.statistics().groups_recreated >= 1), timeout=10)
        await QueueProducer(redis, stream, registry=None).publish({"n": 1})
        await wait_until(_holds(lambda: seen == [1]), timeout=10)
        assert not task.done()
    finally:
        consumer.stop()
        async with asyncio.timeout(10):
            await task


async def test_stream_deleted_during_blocking_read_fails_by_policy(
    redis: Redis, consumer_redis: Redis, stream: str
) -> None:
    """Under on_missing_group='fail', a stream deleted during a blocking read makes run()
    raise ConsumerGroupMissingError itself, not an ExceptionGroup."""

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    consumer = QueueConsumer(
        consumer_redis, _config(stream, on_missing_group="fail"), registry=None
    )
    task = asyncio.create_task(consumer.run(handler))
    await _blocked_reader(redis, stream)
    await redis.delete(stream)
    with pytest.raises(ConsumerGroupMissingError):
        async with asyncio.timeout(10):
            await task


async def test_key_replaced_by_another_type_stops_with_a_queue_error(
    redis: Redis, consumer_redis: Redis, stream: str
) -> None:
    """The stream key replaced by a string during a blocking read: the group cannot be
    recreated without destroying that value, so run() raises a QueueError (not an
    ExceptionGroup) naming the key, and the value is left alone."""

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    consumer = QueueConsumer(consumer_redis, _config(stream), registry=None)
    task = asyncio.create_task(consumer.run(handler))
    await _blocked_reader(redis, stream)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(stream)
        pipe.set(stream, "not a stream")
        await pipe.execute()
    with pytest.raises(QueueError) as raised:
        async with asyncio.timeout(10):
            await task
    assert not isinstance(raised.value, BaseExceptionGroup)
    assert stream in str(raised.value)
    assert await redis.get(stream) == b"not a stream"


def _holds(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check
