"""The consumer's loops (read, claim, keep-alive, work, ack, drain, hand-back) on an
in-memory stream: what counts as a database outage, what leaves run(), waiting out an
unavailable Redis, keeping entries alive while draining. No server, no sleeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from safesync_async import (
    ConsumerGroupMissingError,
    DatabaseUnavailableError,
    QueueConfig,
    QueueConnectionError,
    QueueConsumer,
    QueueError,
    QueueMessage,
    QueueUnavailableError,
    RollbackOnlyError,
)

from .fake_stream import FakeGroup

Handler = Callable[[QueueMessage[Any]], Awaitable[None]]


@pytest.fixture
def group() -> FakeGroup:
    """An in-memory stream ``s`` with group ``g`` (created by the consumer)."""
    return FakeGroup()


def _consumer(group: FakeGroup, name: str = "c", **overrides: Any) -> QueueConsumer:
    settings: dict[str, Any] = {
        "stream_key": group.stream,
        "consumer_group": group.group,
        "consumer_name": name,
        "block_ms": 10_000,
        "claim_min_idle_ms": 1_000,
        "claim_interval_ms": 1,
        "reconnect_initial_delay": 0.001,
        "reconnect_max_delay": 0.002,
    }
    settings.update(overrides)
    return QueueConsumer(
        Redis(), QueueConfig(**settings), registry=None, stream_operations=group.consumer(name)
    )


@contextlib.asynccontextmanager
async def _running(consumer: QueueConsumer, handler: Handler) -> AsyncIterator[asyncio.Task[None]]:
    """Run the consumer for the block, then stop it and re-raise what run() raised."""
    task = asyncio.create_task(consumer.run(handler))
    try:
        yield task
    finally:
        consumer.stop()
        async with asyncio.timeout(10):
            await task


async def test_every_message_is_handled_and_acked_once(group: FakeGroup) -> None:
    """Twenty entries through four workers: each handled once, all acked, none pending."""
    ids = [group.add({"n": n}) for n in range(20)]
    handled: Counter[str] = Counter()

    async def handler(message: QueueMessage[Any]) -> None:
        handled[message.id] += 1

    consumer = _consumer(group, concurrency=4)
    await asyncio.wait_for(consumer.run_until_drained(handler), 10)
    assert handled == dict.fromkeys(ids, 1)
    assert sorted(group.acked) == sorted(ids)
    assert group.pending == {}
    assert consumer.statistics().acked == 20


def _outage(shape: str) -> BaseException:
    """A database outage as a handler may let it out: as is, or wrapped in some way."""
    outage = DatabaseUnavailableError("the server is read-only (1290)", errno=1290)
    wrapped: BaseException
    if shape == "as-is":
        return outage
    if shape == "cause":
        wrapped = RuntimeError("could not save the order")
        wrapped.__cause__ = outage
    elif shape == "context":
        wrapped = KeyError("raised while handling the outage")
        wrapped.__context__ = outage
    elif shape == "rollback-only":
        wrapped = RollbackOnlyError("commit refused after an earlier error")
        wrapped.__cause__ = outage
    else:
        wrapped = ExceptionGroup("handler tasks", [ValueError("a sibling"), outage])
    return wrapped


@pytest.mark.parametrize("shape", ["as-is", "cause", "context", "rollback-only", "group"])
async def test_database_outage_anywhere_in_the_chain_spends_no_delivery(
    group: FakeGroup, shape: str
) -> None:
    """A DatabaseUnavailableError raised as is, as a cause or context, under a
    RollbackOnlyError or in an exception group is an outage: with max_deliveries=1 the
    entry is released (its delivery refunded), counted and reported, not dead-lettered;
    once the database is back it is handled and acked, and the report clears."""
    entry_id = group.add({"n": 1})
    attempts: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        attempts.append(message.delivery_count)
        if len(attempts) == 1:
            raise _outage(shape)

    consumer = _consumer(group, max_deliveries=1)
    async with _running(consumer, handler):
        await group.wait_for(lambda: group.released == [entry_id])
        assert group.pending[entry_id].deliveries == 0
        stats = consumer.statistics()
        assert (stats.database_outages, stats.failed, stats.dead_lettered) == (1, 1, 0)
        assert stats.database_unavailable
        group.advance(1_000)  # claim_min_idle_ms later the entry is claimed again
        await group.wait_for(lambda: group.acked == [entry_id])
    assert attempts == [1, 1]
    assert group.dead_letters == []
    assert not consumer.statistics().database_unavailable


async def test_an_ordinary_failure_spends_its_delivery(group: FakeGroup) -> None:
    """A handler error with no outage in its chain is the message's failure: with
    max_deliveries=1 it is dead-lettered at once, not released."""
    entry_id = group.add({"n": 1})

    async def handler(message: QueueMessage[Any]) -> None:
        raise ValueError("bad order")

    consumer = _consumer(group, max_deliveries=1)
    async with _running(consumer, handler):
        await group.wait_for(lambda: len(group.dead_letters) == 1)
    assert group.dead_letters[0][0] == entry_id
    assert group.released == []
    assert consumer.statistics().database_outages == 0


async def test_stream_deleted_under_the_consumer_is_recreated(group: FakeGroup) -> None:
    """The stream and its group vanish while the consumer reads: the group is recreated
    (counted) and new entries are handled."""
    handled: list[int] = []

    async def handler(message: QueueMessage[Any]) -> None:
        handled.append(message.payload["n"])

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await group.wait_for(lambda: group.group_exists)
        group.delete_stream()
        await group.wait_for(lambda: consumer.statistics().groups_recreated == 1)
        group.add({"n": 7})
        await group.wait_for(lambda: handled == [7])


async def test_missing_group_with_fail_policy_raises_the_library_error(group: FakeGroup) -> None:
    """With on_missing_group='fail', a vanished group makes run() raise
    ConsumerGroupMissingError itself, never an exception group."""
    consumer = _consumer(group, on_missing_group="fail")

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    task = asyncio.create_task(consumer.run(handler))
    await group.wait_for(lambda: group.group_exists)
    group.delete_stream()
    with pytest.raises(ConsumerGroupMissingError):
        await asyncio.wait_for(task, 10)


class _BrokenCodec:
    """A codec with a bug: it raises TypeError instead of MessageDecodeError."""

    def encode(self, payload: Any) -> dict[bytes, bytes]:
        return {}

    def decode(self, fields: Mapping[bytes, bytes]) -> Any:
        raise TypeError("bug in the codec")


async def test_an_unexpected_loop_error_leaves_run_as_one_queue_error(group: FakeGroup) -> None:
    """A bug that escapes a loop (here a codec raising TypeError) stops the consumer
    gracefully, and run() raises one QueueError caused by it, not an exception group."""
    group.add({"n": 1})
    consumer = _consumer(group, codec=_BrokenCodec())

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    with pytest.raises(QueueError) as raised:
        await asyncio.wait_for(consumer.run(handler), 10)
    assert isinstance(raised.value.__cause__, TypeError)


async def test_a_fatal_stream_error_leaves_run_as_itself(group: FakeGroup) -> None:
    """A stream error no policy can recover from (a key of another type) makes run()
    raise that QueueError after a graceful stop."""
    wrong_type = QueueError("key 's' holds a value that is not a stream")
    group.fail_next("read_own_pending", wrong_type)
    consumer = _consumer(group)

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    with pytest.raises(QueueError) as raised:
        await asyncio.wait_for(consumer.run(handler), 10)
    assert raised.value is wrong_type


async def test_unavailable_redis_at_start_is_waited_out(group: FakeGroup) -> None:
    """Group creation refused (OOM) and then the connection lost: start-up backs off and
    retries, counts both, reports Redis unavailable meanwhile, then consumes."""
    group.fail_next(
        "ensure_group",
        QueueUnavailableError("Redis refused XGROUP CREATE for now (OutOfMemoryError)"),
        QueueConnectionError("Redis unreachable during XGROUP CREATE"),
    )
    group.add({"n": 1})
    handled = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        handled.set()

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await asyncio.wait_for(handled.wait(), 10)
        assert consumer.statistics().reconnects == 2
        assert not consumer.statistics().redis_unavailable


async def test_acks_wait_out_an_unavailable_redis(group: FakeGroup) -> None:
    """An XACK that fails with a lost connection is retried with the same ids: every
    committed entry is acked once, the outage counted."""
    ids = [group.add({"n": n}) for n in range(3)]
    group.fail_next("ack", QueueConnectionError("Redis unreachable during XACK"))

    async def handler(message: QueueMessage[Any]) -> None:
        pass

    consumer = _consumer(group)
    async with _running(consumer, handler):
        await group.wait_for(lambda: sorted(group.acked) == sorted(ids))
    assert consumer.statistics().reconnects == 1
    assert len(group.acked) == 3


async def test_keep_alive_runs_until_the_last_handler_finishes(group: FakeGroup) -> None:
    """After stop(), while a handler is still running, the keep-alive keeps resetting the
    idle time of its entry, so no other consumer takes it during the drain."""
    entry_id = group.add({"n": 1})
    started = asyncio.Event()
    finish = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        started.set()
        await finish.wait()

    consumer = _consumer(group, claim_min_idle_ms=100, claim_interval_ms=None)
    task = asyncio.create_task(consumer.run(handler))
    await asyncio.wait_for(started.wait(), 10)
    consumer.stop()
    touches = len(group.touched)
    await group.wait_for(lambda: [entry_id] in group.touched[touches:])
    finish.set()
    await asyncio.wait_for(task, 10)
    assert group.acked == [entry_id]


async def test_unstarted_entries_are_handed_back_at_stop(group: FakeGroup) -> None:
    """stop() with entries read ahead and not started: they are handed back (delivery
    refunded, idle time huge so any consumer claims them at once); the running one is
    finished and acked."""
    ids = [group.add({"n": n}) for n in range(4)]
    started = asyncio.Event()
    finish = asyncio.Event()

    async def handler(message: QueueMessage[Any]) -> None:
        started.set()
        await finish.wait()

    consumer = _consumer(group, concurrency=1, prefetch=3)
    task = asyncio.create_task(consumer.run(handler))
    await asyncio.wait_for(started.wait(), 10)
    await group.wait_for(lambda: consumer.statistics().in_flight == 4)
    consumer.stop()
    finish.set()
    await asyncio.wait_for(task, 10)
    assert group.acked == ids[:1]
    assert sorted(group.handed_back) == sorted(ids[1:])
    assert all(group.pending[i].deliveries == 0 for i in ids[1:])
    assert all(group.idle_ms(i) >= 2**40 for i in ids[1:])
    assert consumer.statistics().handed_back == 3
