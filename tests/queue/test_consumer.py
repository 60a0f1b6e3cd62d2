"""QueueConsumer against the real Redis and MariaDB: throughput with exact effects, failure
handling and dead letters, poison entries, recovery of stale entries, stop and drain."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safesync_async import (
    ConsumerGroupMissingError,
    DbSession,
    DeadLetterReason,
    QueueConfig,
    QueueConsumer,
    QueueMessage,
    QueueProducer,
    dead_letter_key,
    install_signal_handlers,
    parse_dead_letter,
)

from ..conftest import TableFactory
from .helpers import EFFECTS, effect_counts, effect_writer, pending_count, wait_until

pytestmark = pytest.mark.cluster  # also on a Redis Cluster (see tests/conftest.py)


def _config(stream: str, name: str = "c1", **overrides: Any) -> QueueConfig:
    settings: dict[str, Any] = {
        "stream_key": stream,
        "consumer_group": "workers",
        "consumer_name": name,
        "block_ms": 100,
        "claim_min_idle_ms": 300,
        "claim_interval_ms": 100,
    }
    settings.update(overrides)
    return QueueConfig(**settings)


async def _dead_letters(redis: Any, stream: str) -> list[Any]:
    return [
        parse_dead_letter(i.decode(), f) for i, f in await redis.xrange(dead_letter_key(stream))
    ]


async def _run_until(
    consumers: list[QueueConsumer],
    handler: Any,
    done: Any,
    *,
    engine: AsyncEngine | None = None,
    timeout: float = 60,
) -> None:
    """Run the consumers until ``await done()`` holds, then stop them and wait."""
    async with asyncio.TaskGroup() as tasks:
        for consumer in consumers:
            tasks.create_task(consumer.run(handler, engine=engine))
        try:
            await wait_until(done, timeout=timeout)
        finally:
            for consumer in consumers:
                consumer.stop()


async def test_two_consumers_apply_every_message_once(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """5,000 messages through 2 consumers at concurrency 32: exactly one effect row per
    message, every entry acked, the pending list empty."""
    table = await make_table(EFFECTS)
    total = 5_000
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(total))
    big_pool = create_async_engine(engine.url, pool_size=64, max_overflow=0)
    consumers = [
        QueueConsumer(redis, _config(stream, f"c{i}", concurrency=32, claim_min_idle_ms=60_000))
        for i in range(2)
    ]

    async def all_applied() -> bool:
        return (await effect_counts(big_pool, table))[1] >= total

    try:
        await _run_until(consumers, effect_writer(table), all_applied, engine=big_pool)
        assert await effect_counts(big_pool, table) == (total, total)
    finally:
        await big_pool.dispose()
    assert await pending_count(redis, stream, "workers") == 0
    stats = [c.statistics() for c in consumers]
    assert sum(s.acked for s in stats) == total
    assert all(s.acked > 0 for s in stats)  # both consumers took part
    assert sum(s.failed for s in stats) == 0


async def test_failures_are_retried_and_dead_lettered(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """Messages failing their first two attempts succeed on the third; messages that always
    fail land in the dead-letter stream after max_deliveries with the count and the error;
    good messages are done before the failing ones finish retrying."""
    table = await make_table(EFFECTS)
    producer = QueueProducer(redis, stream)
    flaky = set(range(0, 300, 10))
    poison = set(range(5, 300, 30))
    await producer.publish_batch({"n": i} for i in range(300))
    attempts: Counter[int] = Counter()
    good_done_at: list[float] = []
    writer = effect_writer(table)

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        n = message.payload["n"]
        attempts[n] += 1
        await writer(message, session)  # rolled back below when failing
        if n in poison:
            raise ValueError(f"message {n} is poison")
        if n in flaky and attempts[n] < 3:
            raise RuntimeError(f"transient failure {attempts[n]}")
        if n not in flaky:
            good_done_at.append(time.monotonic())

    consumer = QueueConsumer(redis, _config(stream, max_deliveries=3, concurrency=8))

    async def settled() -> bool:
        applied = (await effect_counts(engine, table))[1]
        return applied == 300 - len(poison) and await redis.xlen(dead_letter_key(stream)) == len(
            poison
        )

    started = time.monotonic()
    await _run_until([consumer], handler, settled, engine=engine)
    assert await effect_counts(engine, table) == (300 - len(poison), 300 - len(poison))
    letters = await _dead_letters(redis, stream)
    assert sorted(int(letter.fields[b"data"].split(b":")[1][:-1]) for letter in letters) == sorted(
        poison
    )
    assert {letter.deliveries for letter in letters} == {3}
    assert all(letter.reason is DeadLetterReason.HANDLER_FAILED for letter in letters)
    assert all("poison" in letter.error for letter in letters)
    assert all(attempts[n] == 3 for n in flaky - poison)
    assert await pending_count(redis, stream, "workers") == 0
    # retries wait claim_min_idle_ms twice; the good messages never waited for them
    assert max(good_done_at) - started < 0.6


async def test_poison_entries_never_stop_the_loop(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """Invalid JSON, non-UTF-8, a missing field, an oversized entry, a mistyped payload and
    entries deleted while pending are dead-lettered or reported with their reason, and the
    good messages around them are all applied."""
    table = await make_table(EFFECTS)
    producer = QueueProducer(redis, stream)
    # Two entries become pending (read by a consumer that then "dies"), then are deleted.
    await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    doomed = [await producer.publish({"n": 1000 + i}) for i in range(2)]
    await redis.xreadgroup("workers", "crashed", {stream: ">"}, count=2)
    await redis.xdel(stream, *doomed)
    await producer.publish({"n": 0})
    bad = {
        "invalid-json": {b"data": b"{oops"},
        "non-utf8": {b"data": b"\xff\xfe\xfd"},
        "missing-field": {b"body": b"{}"},
        "oversized": {b"data": b'"' + b"x" * 5_000 + b'"'},
        "mistyped": {b"data": b'{"n": "not a number"}'},
    }
    for fields in bad.values():
        await redis.xadd(stream, fields)
    await producer.publish_batch({"n": i} for i in range(1, 51))

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        await effect_writer(table)(message, session)
        message.payload["n"] + 1  # the mistyped entry fails here

    consumer = QueueConsumer(
        redis, _config(stream, max_deliveries=2, max_message_bytes=1_000, concurrency=4)
    )

    async def settled() -> bool:
        return (
            await pending_count(redis, stream, "workers") == 0
            and (await effect_counts(engine, table))[1] == 51
        )

    await _run_until([consumer], handler, settled, engine=engine)
    letters = await _dead_letters(redis, stream)
    reasons = Counter(letter.reason for letter in letters)
    assert reasons[DeadLetterReason.UNDECODABLE] == 3
    assert reasons[DeadLetterReason.TOO_LARGE] == 1
    assert reasons[DeadLetterReason.HANDLER_FAILED] == 1
    assert reasons[DeadLetterReason.DELETED] == 2
    assert {
        letter.original_id for letter in letters if letter.reason is DeadLetterReason.DELETED
    } == set(doomed)
    assert await effect_counts(engine, table) == (51, 51)


async def test_stale_entries_behind_live_ones_are_recovered(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """200 stale entries of a dead consumer sitting behind 10 entries held by a live slow
    consumer are all recovered by run_claim_stale; the live consumer keeps its 10."""
    table = await make_table(EFFECTS)
    producer = QueueProducer(redis, stream)
    await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    await producer.publish_batch({"n": i} for i in range(210))
    await redis.xreadgroup("workers", "slow", {stream: ">"}, count=10)
    await redis.xreadgroup("workers", "dead", {stream: ">"}, count=200)
    await asyncio.sleep(0.6)
    held = [
        row["message_id"]
        for row in await redis.xpending_range(stream, "workers", "-", "+", 10, "slow")
    ]
    recovery = QueueConsumer(redis, _config(stream, "recovery"))

    async def keep_slow_consumer_alive() -> None:
        while True:  # a live consumer's entries are never idle for long
            await redis.xclaim(stream, "workers", "slow", 0, held, justid=True)
            await asyncio.sleep(0.1)

    async def recovered() -> bool:
        return (await effect_counts(engine, table))[1] >= 200

    async with asyncio.TaskGroup() as tasks:
        keeper = tasks.create_task(keep_slow_consumer_alive())
        runner = tasks.create_task(
            recovery.run_claim_stale(
                effect_writer(table), engine=engine, min_idle_ms=500, claim_interval_ms=100,
                max_claim_count=10,
            )
        )  # fmt: skip
        await wait_until(recovered, timeout=30)
        recovery.stop()
        await runner
        keeper.cancel()
    assert await effect_counts(engine, table) == (200, 200)
    still_held = await redis.xpending_range(stream, "workers", "-", "+", 100)
    assert sorted(r["message_id"] for r in still_held) == sorted(held)
    assert {r["consumer"] for r in still_held} == {b"slow"}


async def test_stop_under_load_drains_and_acks_every_commit(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """stop() while busy: run() returns within the drain timeout, every committed message
    is acked, and entries read but not started are handed back (still pending, claimable
    at once, their delivery not counted)."""
    table = await make_table(EFFECTS)
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(2_000))
    writer = effect_writer(table)

    async def slow(message: QueueMessage[Any], session: DbSession) -> None:
        await writer(message, session)
        await asyncio.sleep(0.05)

    consumer = QueueConsumer(redis, _config(stream, concurrency=16, drain_timeout=2))
    task = asyncio.create_task(consumer.run(slow, engine=engine))
    await asyncio.sleep(0.5)
    stopped_at = time.monotonic()
    consumer.stop()
    await task
    assert time.monotonic() - stopped_at < 2.0
    async with DbSession(engine) as s:
        applied = {r["message_id"] for r in await s.fetch_all(f"SELECT message_id FROM {table}")}
    pending = await redis.xpending_range(stream, "workers", "-", "+", 5_000)
    pending_ids = {r["message_id"].decode() for r in pending}
    assert applied and not (applied & pending_ids)  # committed => acked
    assert consumer.statistics().acked == len(applied)
    assert consumer.statistics().handed_back == len(pending_ids) > 0
    assert all(r["times_delivered"] == 0 for r in pending)  # hand-back refunds the delivery
    assert all(r["time_since_delivered"] > 10**9 for r in pending)  # claimable at once


async def test_drain_timeout_cancels_a_hanging_handler(
    engine: AsyncEngine, make_table: TableFactory, redis: Any, stream: str
) -> None:
    """A handler that never returns is cancelled at the drain timeout: its transaction is
    rolled back, its message stays pending, run() returns."""
    table = await make_table(EFFECTS)
    await QueueProducer(redis, stream).publish({"n": 1})
    started = asyncio.Event()

    async def hang(message: QueueMessage[Any], session: DbSession) -> None:
        await effect_writer(table)(message, session)
        started.set()
        await asyncio.sleep(3600)

    consumer = QueueConsumer(redis, _config(stream, drain_timeout=0.3))
    task = asyncio.create_task(consumer.run(hang, engine=engine))
    await started.wait()
    consumer.stop()
    async with asyncio.timeout(5):
        await task
    assert await effect_counts(engine, table) == (0, 0)
    assert await pending_count(redis, stream, "workers") == 1


async def test_handler_timeout_counts_as_failure(redis: Any, stream: str) -> None:
    """A handler exceeding handler_timeout is cancelled and treated as failed; after
    max_deliveries it is dead-lettered with a timeout error."""
    await QueueProducer(redis, stream).publish({"n": 1})

    async def slow(message: QueueMessage[Any]) -> None:
        await asyncio.sleep(10)

    consumer = QueueConsumer(redis, _config(stream, handler_timeout=0.05, max_deliveries=2))

    async def dead() -> bool:
        return bool(await redis.xlen(dead_letter_key(stream)))

    await _run_until([consumer], slow, dead, timeout=20)
    [letter] = await _dead_letters(redis, stream)
    assert letter.deliveries == 2
    assert "TimeoutError" in letter.error


async def test_run_without_database_and_stop_on_error(redis: Any, stream: str) -> None:
    """Without an engine handler(message) is called and acked on return; with
    stop_on_error the first failure stops the consumer and run() raises it."""
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(5))
    seen: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append(message.payload["n"])
        if message.payload["n"] == 3:
            raise KeyError("three")

    consumer = QueueConsumer(redis, _config(stream, stop_on_error=True, concurrency=1))
    with pytest.raises(KeyError):
        async with asyncio.timeout(10):
            await consumer.run(handler)
    assert 3 in seen
    assert await pending_count(redis, stream, "workers") >= 1


async def test_started_under_a_task_group_and_stopped_by_sigterm(redis: Any, stream: str) -> None:
    """run() reports started to anyio's TaskGroup.start once its group exists, and SIGTERM
    through install_signal_handlers stops it gracefully."""
    consumer = QueueConsumer(redis, _config(stream))
    handled = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        handled.set()

    remove = install_signal_handlers(consumer)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run, handler)
            assert await redis.exists(stream)
            await QueueProducer(redis, stream).publish({"n": 1})
            await asyncio.wait_for(handled.wait(), 10)
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        remove()
    assert consumer.statistics().acked == 1


async def test_missing_group_policies(redis: Any, stream: str) -> None:
    """A group destroyed under a running consumer is recreated (counted) and consumption
    goes on; with on_missing_group='fail' run() raises ConsumerGroupMissingError."""
    producer = QueueProducer(redis, stream)
    seen: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        seen.append(message.payload["n"])

    consumer = QueueConsumer(redis, _config(stream))
    task = asyncio.create_task(consumer.run(handler))
    await producer.publish({"n": 1})
    await wait_until(lambda: _true(1 in seen), timeout=10)
    await redis.xgroup_destroy(stream, "workers")
    await wait_until(lambda: _true(consumer.statistics().groups_recreated == 1), timeout=10)
    await producer.publish({"n": 2})
    await wait_until(lambda: _true(2 in seen), timeout=10)
    consumer.stop()
    await task

    strict = QueueConsumer(redis, _config(stream, "strict", on_missing_group="fail"))
    task = asyncio.create_task(strict.run(handler))
    await asyncio.sleep(0.3)
    await redis.xgroup_destroy(stream, "workers")
    with pytest.raises(ConsumerGroupMissingError):
        async with asyncio.timeout(10):
            await task


async def _true(value: bool) -> bool:
    return value


async def test_database_outage_does_not_spend_deliveries(redis: Any, stream: str) -> None:
    """While the database is unreachable, messages stay pending, are retried, and their
    delivery counts do not grow toward dead-lettering."""
    dead_engine = create_async_engine(
        "mysql+asyncmy://root@127.0.0.1:9/test", connect_args={"connect_timeout": 1}
    )
    await QueueProducer(redis, stream).publish_batch({"n": i} for i in range(3))

    async def handler(message: QueueMessage[Any], session: DbSession) -> None:
        raise AssertionError("never reached")

    consumer = QueueConsumer(redis, _config(stream, max_deliveries=2, claim_min_idle_ms=100))
    task = asyncio.create_task(consumer.run(handler, engine=dead_engine))
    await wait_until(lambda: _true(consumer.statistics().failed >= 9), timeout=20)
    consumer.stop()
    await task
    await dead_engine.dispose()
    assert await redis.xlen(dead_letter_key(stream)) == 0
    pending = await redis.xpending_range(stream, "workers", "-", "+", 10)
    assert len(pending) == 3
    assert all(r["times_delivered"] <= 1 for r in pending)


async def test_manual_api(redis: Any, stream: str) -> None:
    """next() returns own pending entries first, then new ones; ack() acks; iter_messages
    stops on stop(); claim_stale() follows its cursor and returns stale entries."""
    producer = QueueProducer(redis, stream)
    ids = await producer.publish_batch({"n": i} for i in range(4))
    consumer = QueueConsumer(redis, _config(stream))
    first = await consumer.next()
    assert first is not None and first.id == ids[0] and first.payload == {"n": 0}
    assert first.delivery_count == 1
    again = QueueConsumer(redis, _config(stream))  # same name: a restarted worker
    redelivered = await again.next()
    assert redelivered is not None and redelivered.id == ids[0]
    assert redelivered.delivery_count == 2
    assert await again.ack(redelivered)
    assert not await again.ack(redelivered)
    seen = []
    async for message in again.iter_messages(block_ms=50):
        seen.append(message.payload["n"])
        await again.ack(message)
        if len(seen) == 3:
            again.stop()
    assert seen == [1, 2, 3]
    await producer.publish({"n": 9})
    other = QueueConsumer(redis, _config(stream, "other"))
    taken = await other.next()
    assert taken is not None
    await asyncio.sleep(0.2)
    claimed = await consumer.claim_stale(min_idle_ms=100, max_claim_count=10)
    assert [m.payload for m in claimed] == [{"n": 9}]
    assert claimed[0].delivery_count == 2
    assert await consumer.next(block_ms=10) is None
