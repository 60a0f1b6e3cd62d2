"""safesync_async's QueueConsumer, configured as its documentation recommends."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    create_engine,
    create_redis_client,
)

from ..settings import DRAIN_POLL_SECONDS
from ..workload import handler_sql
from .base import AsyncVariant


class SafesyncConsumer(AsyncVariant):
    """``QueueConsumer.run_until_drained`` with a one-UPDATE handler: the recommended
    engine and Redis client, default settings apart from concurrency and batch size
    (metrics are recorded in the default registry, as in a service)."""

    engine: AsyncEngine
    consumer: QueueConsumer

    async def aprepare(self) -> None:
        spec = self.spec
        self.engine = create_engine(spec.database_url, pool_size=spec.concurrency, max_overflow=0)
        self.resources.push_async_callback(self.engine.dispose)
        redis = create_redis_client(spec.redis_url)
        self.resources.push_async_callback(redis.aclose)
        await warm_up_pool(self.engine, spec.concurrency)
        await redis.ping()
        self.consumer = QueueConsumer(
            redis,
            QueueConfig(
                stream_key=spec.stream,
                consumer_group=spec.group,
                consumer_name=spec.consumer,
                concurrency=spec.concurrency,
                batch_size=spec.batch_size,
            ),
        )

    async def aconsume(self) -> dict[str, int]:
        sql = handler_sql(self.spec.table)

        async def deposit(message: QueueMessage[Any], session: DbSession) -> None:
            await session.execute(sql, message.payload)

        async def deposit_deferred(message: QueueMessage[Any], session: DbSession) -> None:
            session.defer(sql, message.payload)

        await self.consumer.run_until_drained(
            deposit_deferred if self.spec.deferred else deposit,
            engine=self.engine,
            poll_interval=DRAIN_POLL_SECONDS,
        )
        stats = self.consumer.statistics()
        transactions = {
            outcome: REGISTRY.get_sample_value(
                "safesync_db_transactions_total",
                {"operation": f"consume:{self.spec.stream}", "outcome": outcome},
            )
            or 0
            for outcome in ("committed", "rolled_back")
        }
        return {
            "received": stats.received,
            "acked": stats.acked,
            "failed": stats.failed,
            "dead_lettered": stats.dead_lettered,
            "claimed": stats.claimed,
            "handed_back": stats.handed_back,
            "transactions_committed": int(transactions["committed"]),
            "transactions_rolled_back": int(transactions["rolled_back"]),
        }


async def warm_up_pool(engine: AsyncEngine, connections: int) -> None:
    """Open ``connections`` pooled connections at once and return them to the pool, so
    the measured run does not include connecting."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(connections):
            await stack.enter_async_context(engine.connect())
