"""The consumer against a private Redis that is SIGKILLed and restarted (with and without
persistence) or frozen with SIGSTOP: nothing acknowledged is lost, effects stay single,
outages are noticed within the socket timeout and the loop never dies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    create_redis_client,
)

from ..support.checker import count_delivery
from ..support.reliability import Recorder
from .conftest import (
    PrivateServers,
    effect_handler,
    effect_rows,
    publish_keyed,
    queue_config,
    running,
    until,
)

pytestmark = pytest.mark.faults

DELIVERY = "Delivery under faults"
TIMINGS = "Server-fault timings"
STREAM = "jobs"


def _config(**overrides: Any) -> QueueConfig:
    """Blocking reads of 200 ms, claims after 1 s."""
    return queue_config(
        STREAM, block_ms=200, claim_min_idle_ms=1_000, **{"claim_interval_ms": 200, **overrides}
    )


async def _applied(engine: AsyncEngine, effects: str, keys: list[str]) -> bool:
    """Whether every key in ``keys`` has an effect row."""
    if not keys:
        return True
    async with DbSession(engine, registry=None) as session:
        found = await session.execute_scalar(
            f"SELECT COUNT(DISTINCT message_key) FROM `{effects}` WHERE message_key IN :keys",
            {"keys": tuple(keys)},
        )
    return int(found) == len(set(keys))


@pytest.mark.parametrize(
    "rounds", [pytest.param(2, id="fast"), pytest.param(8, id="long", marks=pytest.mark.slow)]
)
async def test_redis_killed_with_aof_during_blocking_reads(
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    private_servers: PrivateServers,
    reliability: Recorder,
    rounds: int,
) -> None:
    """Redis (AOF, fsync always) is SIGKILLed while the consumer sits in blocking reads (and,
    every other round, while a producer publishes through the outage) and restarted: every
    acknowledged publication is applied exactly once, publications of unknown outcome are
    counted apart, nothing stays pending, and the consumer is still running."""
    server = private_servers.redis(appendonly=True)
    redis = create_redis_client(server.url, block_ms=200)
    producer = QueueProducer(redis, STREAM, registry=None)
    consumer = QueueConsumer(redis, _config(), inbox=inbox, registry=None)
    sent: list[str] = []
    unknown: list[str] = []
    detections: list[float] = []
    recoveries: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        async with running(consumer, effect_handler(effects), engine=engine) as task:
            for round_ in range(rounds):
                wave, lost = await publish_keyed(producer, range(100), f"r{round_}-")
                sent += wave
                unknown += lost
                await _until_applied(engine, effects, wave)
                await asyncio.sleep(0.3)  # idle: the consumer is blocked in XREADGROUP
                # odd rounds: a producer keeps publishing through the outage; a chunk whose
                # call fails has an unknown outcome (its reply may be what was lost)
                publisher = (
                    asyncio.create_task(_publish_through(producer, f"r{round_}-during-"))
                    if round_ % 2
                    else None
                )
                await asyncio.sleep(0.1)
                reconnects = consumer.statistics().reconnects
                server.kill()
                killed_at = loop.time()
                detections.append(await _until_reconnected(consumer, reconnects))
                await asyncio.sleep(max(0.0, 0.5 - (loop.time() - killed_at)))
                server.start()
                restarted_at = loop.time()
                if publisher is not None:
                    wave, lost = await publisher
                    sent += wave
                    unknown += lost
                wave, lost = await publish_keyed(producer, range(100, 200), f"r{round_}-")
                sent += wave
                unknown += lost
                await _until_applied(engine, effects, wave)
                recoveries.append(loop.time() - restarted_at)
            await until(lambda: _nothing_pending(redis, consumer), timeout=30)
            assert not task.done()  # the loop survived every outage
        counts = await count_delivery(
            redis, engine, stream=STREAM, group="g", effects=effects, sent=sent, unknown=unknown
        )
    finally:
        await redis.aclose()
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "Redis SIGKILL + restart (AOF) during blocking reads, inbox",
        **counts.row(
            faults=rounds, reconnects=stats.reconnects, unknown_applied=counts.unknown_applied
        ),
    )
    reliability.record(
        TIMINGS,
        "Redis SIGKILL (AOF): connection loss noticed; restart to next message applied",
        detection_s=max(detections),
        recovery_s=max(recoveries),
        restarts=rounds,
    )
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts
    assert counts.applied == len(sent)
    assert stats.reconnects >= rounds


async def _publish_through(producer: QueueProducer, prefix: str) -> tuple[list[str], list[str]]:
    """Ten chunks of ten keyed messages, 50 ms apart, whatever the server's state."""
    sent: list[str] = []
    unknown: list[str] = []
    for chunk in range(10):
        wave, lost = await publish_keyed(producer, range(chunk * 10, chunk * 10 + 10), prefix)
        sent += wave
        unknown += lost
        await asyncio.sleep(0.05)
    return sent, unknown


async def _until_applied(engine: AsyncEngine, effects: str, keys: list[str]) -> None:
    async def applied() -> bool:
        return await _applied(engine, effects, keys)

    await until(applied, timeout=60)


async def _until_reconnected(consumer: QueueConsumer, reconnects: int) -> float:
    """Seconds until the consumer counts a reconnect beyond ``reconnects``."""
    return await until(lambda: consumer.statistics().reconnects > reconnects, timeout=30)


async def _nothing_pending(redis: Redis, consumer: QueueConsumer) -> bool:
    summary = await redis.xpending(STREAM, "g")
    stats = consumer.statistics()
    return int(summary["pending"]) == 0 and stats.in_flight == 0 and stats.ack_waiting == 0


async def test_frozen_redis_detected_and_recovered(
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    private_servers: PrivateServers,
    reliability: Recorder,
) -> None:
    """Redis frozen with SIGSTOP for longer than the socket timeout: the consumer notices
    within two socket timeouts (one read plus the client's single retry) and, after
    SIGCONT, applies everything exactly once."""
    socket_timeout = 1.0
    bound = 2 * socket_timeout + 1.0
    server = private_servers.redis(appendonly=True)
    redis = create_redis_client(server.url, block_ms=200, socket_timeout=socket_timeout)
    producer = QueueProducer(redis, STREAM, registry=None)
    consumer = QueueConsumer(redis, _config(), inbox=inbox, registry=None)
    loop = asyncio.get_running_loop()
    try:
        async with running(consumer, effect_handler(effects), engine=engine) as task:
            sent, unknown = await publish_keyed(producer, range(100), "before-")
            await _until_applied(engine, effects, sent)
            await asyncio.sleep(0.3)
            reconnects = consumer.statistics().reconnects
            server.pause()
            try:
                detection = await _until_reconnected(consumer, reconnects)
                await asyncio.sleep(max(0.0, bound + 0.5 - detection))  # frozen past the bound
            finally:
                server.resume()
            resumed_at = loop.time()
            after, lost = await publish_keyed(producer, range(100), "after-")
            await _until_applied(engine, effects, after)
            recovery = loop.time() - resumed_at
            sent += after
            unknown += lost
            await until(lambda: _nothing_pending(redis, consumer), timeout=30)
            assert not task.done()
        counts = await count_delivery(
            redis, engine, stream=STREAM, group="g", effects=effects, sent=sent, unknown=unknown
        )
    finally:
        server.resume()
        await redis.aclose()
    reliability.record(
        DELIVERY,
        f"Redis SIGSTOP for {bound + 0.5:g} s (socket timeout {socket_timeout:g} s), inbox",
        **counts.row(faults=1, reconnects=consumer.statistics().reconnects),
    )
    reliability.record(
        TIMINGS,
        f"Redis SIGSTOP: freeze noticed (socket timeout {socket_timeout:g} s); SIGCONT to next "
        "message applied",
        bound_s=bound,
        detection_s=detection,
        recovery_s=recovery,
    )
    assert detection <= bound
    assert (counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0), counts


async def test_redis_restarted_without_persistence(
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    private_servers: PrivateServers,
    reliability: Recorder,
) -> None:
    """Redis without persistence is SIGKILLed mid-backlog and restarted empty: the stream
    and group are gone (the unconsumed backlog is lost, as expected without persistence),
    the consumer recreates the group, applies every message published after the restart
    exactly once, and never stops."""
    server = private_servers.redis(appendonly=False)
    redis = create_redis_client(server.url, block_ms=200)
    producer = QueueProducer(redis, STREAM, registry=None)
    consumer = QueueConsumer(redis, _config(concurrency=4), inbox=inbox, registry=None)

    async def slow(message: QueueMessage[Any], session: DbSession) -> None:
        await asyncio.sleep(0.005)

    loop = asyncio.get_running_loop()
    try:
        async with running(consumer, effect_handler(effects, slow), engine=engine) as task:
            before, unknown = await publish_keyed(producer, range(600), "before-")

            async def some_applied() -> bool:
                return await effect_rows(engine, effects) >= 50

            await until(some_applied, timeout=60)
            server.kill()
            await asyncio.sleep(0.3)
            server.start()
            restarted_at = loop.time()
            detection = await until(lambda: consumer.statistics().groups_recreated >= 1, timeout=30)
            after, lost = await publish_keyed(producer, range(200), "after-")
            unknown += lost
            await _until_applied(engine, effects, after)
            recovery = loop.time() - restarted_at
            await until(lambda: _nothing_pending(redis, consumer), timeout=30)
            assert not task.done()
        counts = await count_delivery(
            redis,
            engine,
            stream=STREAM,
            group="g",
            effects=effects,
            sent=before + after,
            unknown=unknown,
        )
        after_counts = await count_delivery(
            redis, engine, stream=STREAM, group="g", effects=effects, sent=after
        )
    finally:
        await redis.aclose()
    stats = consumer.statistics()
    reliability.record(
        DELIVERY,
        "Redis SIGKILL + restart WITHOUT persistence mid-backlog, inbox",
        **counts.row(
            faults=1,
            groups_recreated=stats.groups_recreated,
            lost_not_persisted=counts.lost,
            published_after_restart=len(after),
            applied_after_restart=after_counts.applied,
        ),
    )
    reliability.record(
        TIMINGS,
        "Redis restart without persistence: restart to group recreated; to next message applied",
        detection_s=detection,
        recovery_s=recovery,
    )
    assert stats.groups_recreated >= 1
    assert after_counts.applied == len(after)
    assert (counts.duplicated, counts.left_pending) == (0, 0), counts
    assert counts.lost < len(before)  # the loss is the unconsumed backlog, nothing more
