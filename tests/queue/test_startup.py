"""A consumer's start-up: a deadline with a clear error naming the servers, a WARNING
without any logging set up by the application, and the inbox table checked first."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConfigurationError,
    DbSession,
    Inbox,
    QueueConfig,
    QueueConnectionError,
    QueueConsumer,
    QueueMessage,
    create_redis_client,
)

from ..conftest import TableFactory


async def _handler(message: QueueMessage[Any], session: DbSession) -> None:
    return None


async def test_unreachable_redis_fails_after_the_startup_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis unreachable, run() logs a WARNING at once and raises, after
    startup_timeout, a QueueConnectionError naming the Redis address (no password)."""
    redis = create_redis_client("redis://:secret-pw@127.0.0.1:1/0", block_ms=100)
    config = QueueConfig(
        stream_key="s", consumer_group="g", block_ms=100, startup_timeout=0.5,
        reconnect_initial_delay=0.05, reconnect_max_delay=0.1,
    )  # fmt: skip
    consumer = QueueConsumer(redis, config, registry=None)
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="safesync_async"),
            pytest.raises(QueueConnectionError) as raised,
        ):
            await consumer.run(lambda message: asyncio.sleep(0))
    finally:
        await redis.aclose()
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "startup_timeout=0.5" in message and "Redis at 127.0.0.1:1/0" in message
    assert "secret-pw" not in message
    assert any("cannot start yet" in r.getMessage() for r in caplog.records)


async def test_inbox_with_text_keys_stops_the_consumer_at_start(
    engine: AsyncEngine, redis: Redis, stream: str, make_table: TableFactory
) -> None:
    """A consumer whose inbox table has text key columns refuses to start (the table
    would merge distinct messages), before reading anything."""
    table = await make_table(
        "CREATE TABLE {table} (stream VARCHAR(190) NOT NULL, consumer_group VARCHAR(190) "
        "NOT NULL, message_key VARCHAR(190) NOT NULL, message_id VARCHAR(64) NOT NULL, "
        "processed_at TIMESTAMP NOT NULL, PRIMARY KEY (stream, consumer_group, message_key))"
    )
    await redis.xadd(stream, {b"data": b"{}"})
    config = QueueConfig(stream_key=stream, consumer_group="g", block_ms=100)
    consumer = QueueConsumer(redis, config, inbox=Inbox(table), registry=None)
    with pytest.raises(ConfigurationError, match="non-binary key columns"):
        await asyncio.wait_for(consumer.run(_handler, engine=engine), 10)
    assert consumer.statistics().received == 0
