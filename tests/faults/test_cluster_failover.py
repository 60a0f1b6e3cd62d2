"""A private Redis Cluster whose master serving the stream dies (SIGKILL) or is failed
over (CLUSTER FAILOVER) while a producer publishes and a consumer with an inbox applies:
the consumer waits the failover out like any outage; a publication acknowledged by a
master that dies before replicating it can be lost by Redis itself (measured), and with
``wait_replicas=1`` none is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    Inbox,
    Outbox,
    OutboxRelay,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueProducer,
    ReplicationError,
    create_redis_client,
)

from ..support.checker import DeliveryCounts, count_delivery
from ..support.cluster import ClusterNode, PrivateRedisCluster
from ..support.reliability import Recorder
from .conftest import effect_handler, queue_config, running, until

pytestmark = pytest.mark.faults

FAMILY = "Redis Cluster failover"
STREAM = "jobs"
WAIT_TIMEOUT_MS = 500


@pytest.fixture
def cluster() -> Iterator[PrivateRedisCluster]:
    """A private cluster of our own, the only one a test may kill nodes of."""
    started = PrivateRedisCluster().start()
    try:
        yield started
    finally:
        started.close()


@dataclass
class Publications:
    """What a publisher got confirmed (inbox key -> entry id), and when."""

    confirmed: dict[str, str] = field(default_factory=dict)
    confirmed_at: list[float] = field(default_factory=list)
    failed: int = 0  # publications that raised a connection or refusal error
    unreplicated: int = 0  # publications that raised ReplicationError

    def outage_after(self, moment: float) -> float:
        """Seconds from ``moment`` to the first publication confirmed after it."""
        return min(t for t in self.confirmed_at if t > moment) - moment


async def _publish(producer: QueueProducer, log: Publications, stop: asyncio.Event) -> None:
    """One message at a time, each retried with its idempotency key until confirmed."""
    loop = asyncio.get_running_loop()
    n = 0
    while not stop.is_set():
        key = f"m{n}"
        try:
            entry_id = await producer.publish({"n": n}, idempotency_key=key)
        except ReplicationError:
            log.unreplicated += 1
            continue
        except QueueError:
            log.failed += 1
            await asyncio.sleep(0.02)
            continue
        log.confirmed[f"key:{key}"] = entry_id
        log.confirmed_at.append(loop.time())
        n += 1
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def _publishing(producer: QueueProducer) -> AsyncIterator[Publications]:
    log = Publications()
    stop = asyncio.Event()
    task = asyncio.create_task(_publish(producer, log, stop))
    try:
        yield log
    finally:
        stop.set()
        await task


async def _slowly(message: QueueMessage[Any], session: DbSession) -> None:
    """A handler slower than the producer, so a backlog exists when the master dies."""
    await asyncio.sleep(0.01)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _promoted(cluster: PrivateRedisCluster, master: ClusterNode) -> bool:
    """Whether another node serves the stream's slot now."""
    try:
        return cluster.master_of(STREAM) is not master
    except RuntimeError:  # no master for the slot yet
        return False


async def _drained(redis: RedisCluster, consumer: QueueConsumer) -> bool:
    stats = consumer.statistics()
    if stats.in_flight or stats.ack_waiting:
        return False
    [group] = await redis.xinfo_groups(STREAM)
    return int(group["pending"]) == 0 and group.get("lag") == 0


async def _missing(redis: RedisCluster, log: Publications) -> int:
    """Confirmed entries the stream no longer has."""
    present = {_text(entry_id) for entry_id, _ in await redis.xrange(STREAM) or ()}
    return sum(1 for entry_id in log.confirmed.values() if entry_id not in present)


async def _scenario(
    cluster: PrivateRedisCluster,
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    *,
    wait_replicas: int,
    fault: str,
) -> tuple[Publications, DeliveryCounts, float, int, QueueConsumer]:
    """Publish and consume; inject ``fault`` ("kill", "kill-cut-off" or "failover") into
    the master of the stream's slot; heal; drain; count."""
    producer_client = create_redis_client(cluster.url, cluster=True, block_ms=200)
    consumer_client = create_redis_client(cluster.url, cluster=True, block_ms=200)
    producer = QueueProducer(
        producer_client,
        STREAM,
        wait_replicas=wait_replicas,
        wait_timeout_ms=WAIT_TIMEOUT_MS,
        registry=None,
    )
    config = queue_config(STREAM, block_ms=200, concurrency=2, claim_min_idle_ms=1_000)
    consumer = QueueConsumer(consumer_client, config, inbox=inbox, registry=None)
    try:
        async with running(consumer, effect_handler(effects, _slowly), engine=engine) as task:
            async with _publishing(producer) as log:
                await asyncio.sleep(1.0)
                fault_at = await _inject(cluster, fault)
                await until(
                    lambda: bool(log.confirmed_at) and log.confirmed_at[-1] > fault_at, timeout=30
                )
                await asyncio.sleep(1.0)
            await until(lambda: _drained(consumer_client, consumer), timeout=90)
            assert not task.done()  # the loop waited the failover out
        counts = await count_delivery(
            consumer_client,
            engine,
            stream=STREAM,
            group="g",
            effects=effects,
            sent=list(log.confirmed),
        )
        missing = await _missing(consumer_client, log)
    finally:
        await producer_client.aclose()
        await consumer_client.aclose()
    return log, counts, log.outage_after(fault_at), missing, consumer


async def _inject(cluster: PrivateRedisCluster, fault: str) -> float:
    """Inject ``fault`` into the master of the stream's slot, wait for the promotion and
    bring the cluster back to full health (a killed master restarts as a replica);
    returns when the fault struck (loop time)."""
    loop = asyncio.get_running_loop()
    master = cluster.master_of(STREAM)
    replica = cluster.replica_of(master)
    if fault == "failover":
        fault_at = loop.time()
        await asyncio.to_thread(cluster.failover, replica)
    else:
        if fault == "kill-cut-off":  # for 1 s the master's writes reach no replica
            replica.pause()  # so that it cannot reconnect
            master.drop_replica_links()
            await asyncio.sleep(1.0)
        fault_at = loop.time()
        master.kill()
        replica.resume()
    await until(lambda: asyncio.to_thread(_promoted, cluster, master), timeout=60)
    await asyncio.to_thread(cluster.wait_healthy, 60, replicated=False)
    if not master.running:
        master.start()  # rejoins as a replica of the promoted node
    await asyncio.to_thread(cluster.wait_healthy, 60)
    return fault_at


def _record(
    reliability: Recorder,
    scenario: str,
    wait_replicas: int,
    log: Publications,
    counts: DeliveryCounts,
    outage: float,
    missing: int,
    consumer: QueueConsumer,
) -> None:
    reliability.record(
        FAMILY,
        scenario,
        messages=counts.sent,
        wait_replicas=wait_replicas,
        outage_s=outage,
        missing_entries=missing,
        lost=counts.lost,
        duplicate_effects=counts.duplicated,
        dead_lettered=counts.dead_lettered_total,
        left_pending=counts.left_pending,
        failed_publications=log.failed,
        unreplicated_publications=log.unreplicated,
        reconnects=consumer.statistics().reconnects,
    )


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["no-wait", "wait"])
async def test_master_killed_while_cut_off_from_its_replica(
    cluster: PrivateRedisCluster,
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
    wait_replicas: int,
) -> None:
    """The master's replication link is cut for 1 s, then the master is SIGKILLed and its
    replica promoted. Without a wait, publications the master confirmed in that second
    are lost by Redis (measured: the loss window), and only those; with wait_replicas=1
    none of the confirmed ones is missing or unapplied. No effect is duplicated, nothing
    stays pending, nothing is dead-lettered, and the consumer never stops."""
    log, counts, outage, missing, consumer = await _scenario(
        cluster, engine, effects, inbox, wait_replicas=wait_replicas, fault="kill-cut-off"
    )
    name = "master SIGKILL 1 s after losing its replica link, " + (
        "WAIT 1" if wait_replicas else "no WAIT"
    )
    _record(reliability, name, wait_replicas, log, counts, outage, missing, consumer)
    assert (counts.duplicated, counts.left_pending, counts.dead_lettered_total) == (0, 0, 0)
    assert counts.lost <= missing, counts  # every loss is one of Redis's missing entries
    if wait_replicas:
        assert (missing, counts.lost) == (0, 0), counts
        assert log.unreplicated > 0  # the lagging replica was noticed, not ignored
    else:
        assert missing > 0  # the window exists: what the wait is for


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["no-wait", "wait"])
async def test_master_killed_under_load(
    cluster: PrivateRedisCluster,
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
    wait_replicas: int,
) -> None:
    """The master serving the stream is SIGKILLed under load (its replica healthy) and the
    replica promoted: the consumer waits the failover out; whatever Redis lost is
    measured; with wait_replicas=1 nothing confirmed is lost; no duplicate effect."""
    log, counts, outage, missing, consumer = await _scenario(
        cluster, engine, effects, inbox, wait_replicas=wait_replicas, fault="kill"
    )
    name = "master SIGKILL under load, " + ("WAIT 1" if wait_replicas else "no WAIT")
    _record(reliability, name, wait_replicas, log, counts, outage, missing, consumer)
    assert (counts.duplicated, counts.left_pending, counts.dead_lettered_total) == (0, 0, 0)
    assert counts.lost <= missing, counts
    if wait_replicas:
        assert (missing, counts.lost) == (0, 0), counts


async def test_cluster_failover_loses_nothing(
    cluster: PrivateRedisCluster,
    engine: AsyncEngine,
    effects: str,
    inbox: Inbox,
    reliability: Recorder,
) -> None:
    """CLUSTER FAILOVER on the replica mid-run (a coordinated switch: the master stops
    writes until the replica caught up): without any wait, every confirmed publication is
    applied exactly once and nothing stays pending."""
    log, counts, outage, missing, consumer = await _scenario(
        cluster, engine, effects, inbox, wait_replicas=0, fault="failover"
    )
    _record(reliability, "CLUSTER FAILOVER, no WAIT", 0, log, counts, outage, missing, consumer)
    assert (missing, counts.lost, counts.duplicated, counts.left_pending) == (0, 0, 0, 0), counts
    assert counts.applied == counts.sent


async def test_a_stalled_replica_confirms_nothing(
    cluster: PrivateRedisCluster, engine: AsyncEngine, unique_name: Any
) -> None:
    """While the replica of the stream's master is frozen (SIGSTOP, shorter than the
    node timeout: no failover), publications with wait_replicas=1 are added but raise
    ReplicationError (concurrent ones too, whichever pooled connection is free) and
    batched, and an outbox relay with the wait leaves its rows unsent; once the replica
    is back, both go through."""
    redis = create_redis_client(cluster.url, cluster=True, block_ms=200)
    outbox = Outbox(unique_name("outbox"))
    await outbox.create_table(engine)
    producer = QueueProducer(redis, STREAM, wait_replicas=1, wait_timeout_ms=200, registry=None)
    relay = OutboxRelay(engine, redis, outbox, wait_replicas=1, wait_timeout_ms=200)
    try:
        # confirmed while the replica is up, on 16 connections: connections whose writes
        # the replica has, on which a WAIT would confirm at once whatever came since (with
        # room for a replica still catching up on a busy machine)
        patient = QueueProducer(
            redis, STREAM, wait_replicas=1, wait_timeout_ms=4_000, registry=None
        )
        await asyncio.gather(*(patient.publish({"n": n}) for n in range(16)))
        async with DbSession(engine) as session:
            await outbox.add(session, STREAM, {"n": 8})
        replica = cluster.replica_of(cluster.master_of(STREAM))
        replica.pause()
        try:
            outcomes = await asyncio.gather(
                *(producer.publish({"n": n}) for n in range(10, 18)), return_exceptions=True
            )
            with pytest.raises(ReplicationError) as batch:
                await producer.publish_batch([{"n": 20}, {"n": 21}])
            with pytest.raises(ReplicationError):
                await relay.relay_once()
            assert (await outbox.status(engine)).pending == 1
        finally:
            replica.resume()
        assert all(isinstance(o, ReplicationError) and o.acknowledged == 0 for o in outcomes)
        assert len(batch.value.entry_ids) == 2
        assert await redis.xlen(STREAM) == 16 + 8 + 2 + 1  # added all the same, never dropped
        assert await relay.relay_once() == 1
        assert (await outbox.status(engine)).pending == 0
    finally:
        await redis.aclose()
        async with engine.begin() as conn:
            await conn.run_sync(outbox.table.drop)
