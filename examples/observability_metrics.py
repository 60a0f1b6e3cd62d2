"""Prometheus metrics in a registry of your own: sessions, a producer and a consumer
record into it, and generate_latest() renders what a /metrics endpoint serves."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from .settings import REDIS_URL, make_engine


async def main() -> None:
    engine = make_engine()
    redis = create_redis_client(REDIS_URL, block_ms=100)
    stream = f"example:metrics:{uuid.uuid4().hex[:8]}"
    try:
        # --8<-- [start:registry]
        registry = CollectorRegistry()  # instead of prometheus_client's global REGISTRY

        async with DbSession(engine, operation="checkout", registry=registry) as session:
            await session.execute("SELECT 1")
        async with DbSession(engine, registry=None) as session:  # records nothing
            await session.execute("SELECT 1")

        await QueueProducer(redis, stream, registry=registry).publish_batch(
            {"n": n} for n in range(10)
        )

        async def handle(msg: QueueMessage[Any]) -> None:
            pass

        config = QueueConfig(stream_key=stream, consumer_group="stats", block_ms=100)
        consumer = QueueConsumer(redis, config, registry=registry)
        await consumer.run_until_drained(handle)
        # --8<-- [end:registry]

        # --8<-- [start:read]
        committed = registry.get_sample_value(
            "safesync_db_transactions_total", {"operation": "checkout", "outcome": "committed"}
        )
        acked = registry.get_sample_value(
            "safesync_queue_messages_total",
            {"stream": stream, "group": "stats", "outcome": "acked"},
        )
        exposition = generate_latest(registry).decode()  # the text format, for /metrics
        # --8<-- [end:read]
        assert committed == 1
        assert acked == 10
        assert consumer.statistics().acked == 10
        assert 'safesync_queue_published_total{stream="' + stream + '"} 10.0' in exposition
        assert 'operation="default"' not in exposition  # registry=None recorded nothing
        print(f"{committed:.0f} checkout committed, {acked:.0f} messages acked")
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
