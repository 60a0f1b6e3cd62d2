"""consumer.readiness: ready only while the group exists and the loops run, and not while
the database (or Redis, see tests/worker) is in an outage."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import anyio
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    ConsumerReadiness,
    DatabaseDisconnectError,
    DbSession,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
)

from .helpers import wait_until


def test_tracker_states_and_reasons() -> None:
    """Ready needs group and loops; an outage of either server makes it not ready with
    a reason until that server answers again."""
    readiness = ConsumerReadiness()
    assert not is_ready(readiness)
    assert set(readiness.state().reasons) == {
        "consumer loops not running", "consumer group not created yet",
    }  # fmt: skip
    readiness.group_exists()
    readiness.loops_started()
    assert is_ready(readiness) and readiness.state().reasons == ()
    readiness.redis_failed(ConnectionError("refused"))
    readiness.database_failed(DatabaseDisconnectError("gone"))
    reasons = readiness.state().reasons
    assert not is_ready(readiness) and len(reasons) == 2
    assert reasons[0].startswith("Redis outage for ") and reasons[0].endswith(": refused")
    readiness.redis_ok()
    assert not is_ready(readiness)
    readiness.database_ok()
    assert is_ready(readiness)
    readiness.loops_stopped()
    assert not is_ready(readiness) and readiness.state().running is False


async def test_consumer_reports_start_outage_and_stop(
    engine: AsyncEngine, redis: Redis, stream: str
) -> None:
    """A running consumer is ready; while its handler's transactions fail for lack of the
    database it is not (reason: database outage), and ready again after the next commit;
    once stopped it is not ready."""
    await QueueProducer(redis, stream, registry=None).publish({"n": 1})
    config = QueueConfig(
        stream_key=stream, consumer_group="g", consumer_name="c", block_ms=50,
        claim_min_idle_ms=100, claim_interval_ms=50, reconnect_initial_delay=0.05,
        reconnect_max_delay=0.1,
    )  # fmt: skip
    consumer = QueueConsumer(redis, config, registry=None)
    outage = asyncio.Event()
    attempts = 0

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise DatabaseDisconnectError("the database went away")
        await outage.wait()  # hold the second attempt until the outage was observed

    assert not is_ready(consumer.readiness)
    async with anyio.create_task_group() as tasks:
        await tasks.start(functools.partial(consumer.run, handler, engine=engine))
        assert is_ready(consumer.readiness)  # started: the group exists, the loops run
        await wait_until(lambda: _async(attempts >= 1), timeout=10)
        state = consumer.readiness.state()
        outage.set()
        await wait_until(lambda: _async(is_ready(consumer.readiness)), timeout=10)
        consumer.stop()
    assert not state.ready and any("database outage" in r for r in state.reasons), state
    assert not is_ready(consumer.readiness)


def is_ready(readiness: ConsumerReadiness) -> bool:
    """``readiness.ready`` (a call, so the type checker does not pin it between asserts)."""
    return readiness.ready


async def _async(value: bool) -> bool:
    return value
