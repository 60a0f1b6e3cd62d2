"""Metrics: recorded in the caller's registry with bounded labels, disabled with None, and
never raising into user code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    AdvisoryLock,
    DbSession,
    DuplicateKeyError,
    Outbox,
    OutboxRelay,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    RowLock,
)
from safesync_async.metrics import metrics_for

from .conftest import TableFactory


async def test_session_and_lock_metrics(engine: AsyncEngine, make_table: TableFactory) -> None:
    """Committed and rolled-back transactions, lock waits and OCC conflicts are counted in the
    registry passed in, labelled by the caller's operation name."""
    registry = CollectorRegistry()
    table = await make_table("CREATE TABLE {table} (id INT PRIMARY KEY)")
    async with DbSession(engine, operation="seed", registry=registry) as s:
        await s.execute(f"INSERT INTO {table} VALUES (1)")
        await RowLock(s, table, {"id": 1}).acquire()
        await AdvisoryLock(s, f"metrics:{table}").acquire()
    with pytest.raises(DuplicateKeyError):
        async with DbSession(engine, operation="seed", registry=registry) as s:
            await s.execute(f"INSERT INTO {table} VALUES (1)")

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    assert value("safesync_db_transactions_total", operation="seed", outcome="committed") == 1
    assert value("safesync_db_transactions_total", operation="seed", outcome="rolled_back") == 1
    assert value("safesync_db_lock_acquisitions_total", kind="row", outcome="acquired") == 1
    assert value("safesync_db_lock_acquisitions_total", kind="advisory", outcome="acquired") == 1
    assert value("safesync_db_lock_wait_seconds_count", kind="row") == 1
    assert value("safesync_db_transaction_duration_seconds_count", operation="seed") == 2


def test_registry_none_disables_and_registries_are_separate() -> None:
    """registry=None records nothing; two registries get their own collectors; the same
    registry reuses them."""
    assert not metrics_for(None).enabled
    first, second = CollectorRegistry(), CollectorRegistry()
    assert metrics_for(first) is metrics_for(first)
    assert metrics_for(first) is not metrics_for(second)


def test_recording_never_raises() -> None:
    """A broken recording (wrong label count) is swallowed and logged, not raised."""
    metrics = metrics_for(CollectorRegistry())
    metrics.inc("transactions", "only-one-label")
    metrics.observe("lock_wait_seconds", 1.0, "a", "b", "c")
    metrics.set("lag", 1.0)
    metrics.track("in_flight", lambda: 1.0)


async def test_consumer_in_flight_gauge_follows_the_consumer(redis: Redis, stream: str) -> None:
    """The in-flight gauge is read when metrics are collected: it shows the entries a
    running consumer holds, and zero once it has stopped."""
    registry = CollectorRegistry()
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(6))
    consumer = QueueConsumer(
        redis,
        QueueConfig(stream_key=stream, consumer_group="g", concurrency=3, block_ms=50),
        registry=registry,
    )
    held = asyncio.Event()
    release = asyncio.Event()
    seen: list[float | None] = []
    labels = {"stream": stream, "group": "g"}

    async def handler(message: QueueMessage[Any]) -> None:
        if consumer.statistics().in_flight >= 3:
            held.set()
        await release.wait()

    async def observe() -> None:
        await held.wait()
        seen.append(registry.get_sample_value("safesync_queue_in_flight_messages", labels))
        release.set()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(observe())
        tasks.create_task(consumer.run_until_drained(handler))
    assert seen and seen[0] is not None and seen[0] >= 3
    assert registry.get_sample_value("safesync_queue_in_flight_messages", labels) == 0


def test_tracked_gauge_sums_its_readers_until_they_are_removed() -> None:
    """Two consumers of the same stream and group in one process: the in-flight gauge is
    the sum of both, and a stopped one no longer counts."""
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    labels = {"stream": "s", "group": "g"}
    first = metrics.track("in_flight", lambda: 2, "s", "g")
    metrics.track("in_flight", lambda: 3, "s", "g")
    assert registry.get_sample_value("safesync_queue_in_flight_messages", labels) == 5
    first()
    first()  # removing twice is harmless
    assert registry.get_sample_value("safesync_queue_in_flight_messages", labels) == 3


def _series(registry: CollectorRegistry, metric: str) -> dict[tuple[str, ...], float]:
    """Label values -> value of every ``_total`` sample of a counter."""
    return {
        tuple(sample.labels.values()): sample.value
        for family in registry.collect()
        if family.name == metric
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def test_producer_stream_labels_are_bounded(redis: Redis, safesync_key_prefix: str) -> None:
    """800 producers, each on its own data-driven stream name, create a bounded number of
    published series (the first 100 streams seen, the rest under "other"), and every entry
    is still counted."""
    registry = CollectorRegistry()
    for i in range(800):
        await QueueProducer(redis, f"{safesync_key_prefix}s{i}", registry=registry).publish({})
    series = _series(registry, "safesync_queue_published")
    assert len(series) <= 101
    assert series[("other",)] == 800 - (len(series) - 1)
    assert sum(series.values()) == 800


async def test_outbox_relay_metrics_do_not_follow_row_streams(
    engine: AsyncEngine, redis: Redis, safesync_key_prefix: str, unique_name: Any
) -> None:
    """An outbox relay moving rows for 800 different streams records one series (labelled
    by its outbox table), not one per stream, and counts every row."""
    registry = CollectorRegistry()
    outbox = Outbox(unique_name("outbox"))
    await outbox.create_table(engine)
    try:
        async with DbSession(engine, registry=None) as session:
            for i in range(800):
                await outbox.add(session, f"{safesync_key_prefix}s{i}", {"i": i})
        relay = OutboxRelay(engine, redis, outbox, batch_size=500, registry=registry)
        while await relay.relay_once():
            pass
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(outbox.table.drop)
    assert _series(registry, "safesync_queue_published") == {}
    assert _series(registry, "safesync_queue_outbox_relayed") == {(outbox.name,): 800}
