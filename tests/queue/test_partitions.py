"""Partitioned streams: the layout and routing, leases and leased reads on Redis, fencing
on both databases, and consumers in one process dividing the partitions, rebalancing when
one stops, and keeping per-key order throughout."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from safesync_async import (
    ConfigurationError,
    DbSession,
    EpochFence,
    Inbox,
    PartitionedConsumer,
    PartitionedProducer,
    PartitionedStream,
    PartitionFencedError,
    PartitionLeaseLostError,
    QueueError,
    partition_for,
    partition_status,
)
from safesync_async.cli import app
from safesync_async.queue.keys import hash_slot
from safesync_async.queue.partitions.leases import LeaseStore, assignment
from safesync_async.queue.partitions.stream import LeasedStream

from ..conftest import TableFactory
from ..support.ordering import KEY_STATE, OrderingChecker, plan
from ..support.settings import REDIS_URL
from .helpers import wait_until

# -- layout and routing (no servers) ------------------------------------------------------


def test_routing_is_crc32_of_the_key_bytes() -> None:
    assert partition_for("account-42", 8) == zlib.crc32(b"account-42") % 8
    assert partition_for(b"\xff\x00", 5) == zlib.crc32(b"\xff\x00") % 5
    assert partition_for("café", 16) == zlib.crc32("café".encode()) % 16
    # a known value, for producers written in other languages
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_partition_keys_each_have_their_own_slot_and_keep_their_bookkeeping_there() -> None:
    stream = PartitionedStream("orders", 8)
    keys = stream.stream_keys()
    assert keys[3] == "{orders/3}"
    assert len({hash_slot(k) for k in keys}) == 8
    for p, key in enumerate(keys):
        assert hash_slot(stream.lease_key(p, "g")) == hash_slot(key)
        assert hash_slot(stream.epoch_key(p, "g")) == hash_slot(key)


@pytest.mark.parametrize(
    ("name", "partitions"),
    [("", 4), ("a{b}", 4), ("a}", 4), ("orders", 0), ("orders", 1025), ("orders", True)],
)
def test_bad_layouts_are_refused(name: str, partitions: Any) -> None:
    with pytest.raises(ConfigurationError):
        PartitionedStream(name, partitions)


def test_assignment_is_balanced_and_covers_every_partition() -> None:
    for members in (["a"], ["b", "a"], ["c", "a", "b"], [f"m{i}" for i in range(5)]):
        for partitions in (1, 7, 8, 16):
            owned = assignment(members, partitions)
            flat = sorted(p for ps in owned.values() for p in ps)
            assert flat == list(range(partitions))
            sizes = [len(ps) for ps in owned.values()]
            assert max(sizes) - min(sizes) <= 1


async def test_options_the_consumer_sets_itself_are_refused(redis: Redis) -> None:
    stream = PartitionedStream("orders", 2)
    with pytest.raises(ConfigurationError, match="ordering"):
        PartitionedConsumer(redis, stream, "g", fence=None, ordering="none")
    with pytest.raises(ConfigurationError, match="lease_ttl_ms"):
        PartitionedConsumer(redis, stream, "g", fence=None, lease_ttl_ms=10)


# -- leases and leased reads (Redis) ------------------------------------------------------


async def test_a_lease_is_exclusive_and_every_acquisition_has_a_larger_epoch(
    redis: Redis, stream: str
) -> None:
    layout = PartitionedStream(stream, 2)
    leases = LeaseStore(redis, layout, "g")
    first = await leases.acquire(0, "a", 5_000)
    assert first is not None and first.member == "a"
    assert await leases.acquire(0, "b", 5_000) is None
    assert await leases.renew(first, 5_000)
    assert await leases.release(first)
    assert not await leases.renew(first, 5_000)  # released: renewing cannot take it back
    second = await leases.acquire(0, "b", 5_000)
    assert second is not None and second.epoch > first.epoch
    assert not await leases.release(first)  # not a's any more
    await leases.raise_epoch(0, second.epoch + 10)
    await leases.release(second)
    third = await leases.acquire(0, "a", 5_000)
    assert third is not None and third.epoch == second.epoch + 11


@pytest.mark.cluster
async def test_a_former_owner_can_neither_read_nor_take_over(redis: Redis, stream: str) -> None:
    layout = PartitionedStream(stream, 1)
    producer = PartitionedProducer(redis, layout, registry=None)
    leases = LeaseStore(redis, layout, "g")
    key = layout.stream_key(0)
    lease = await leases.acquire(0, "old", 60_000)
    assert lease is not None
    old = LeasedStream(redis, key, "g", "old", lease_key=layout.lease_key(0, "g"), lease=lease)
    await old.ensure_group("0")
    await producer.publish_batch([{"n": n} for n in range(3)])
    assert len(await old.read_new(2, None)) == 2  # two pending to "old"
    await redis.delete(layout.lease_key(0, "g"))  # expired during a pause
    new_lease = await leases.acquire(0, "new", 60_000)
    assert new_lease is not None
    with pytest.raises(PartitionLeaseLostError):
        await old.read_new(10, 10)
    with pytest.raises(PartitionLeaseLostError):
        await old.take_over()
    new = LeasedStream(redis, key, "g", "new", lease_key=layout.lease_key(0, "g"), lease=new_lease)
    assert await new.take_over() == 2
    pending = await redis.xpending_range(key, "g", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"new"}
    assert [p["times_delivered"] for p in pending] == [1, 1]  # the take-over is not counted
    assert len(await new.read_new(10, None)) == 1  # the third, never read
    # an empty read waits for the next entry, then reads it under the lease
    waiting = asyncio.create_task(new.read_new(10, 2_000))
    await asyncio.sleep(0.1)
    await producer.publish({"n": 3})
    [delivery] = await waiting
    assert b'"n":3' in b"".join(delivery.fields.values())


async def test_a_different_partition_count_is_refused(redis: Redis, stream: str) -> None:
    await PartitionedProducer(redis, PartitionedStream(stream, 4), registry=None).publish({})
    with pytest.raises(ConfigurationError, match="4 partitions"):
        await PartitionedProducer(redis, PartitionedStream(stream, 8), registry=None).publish({})


# -- fencing (both databases) -------------------------------------------------------------


async def test_a_superseded_epoch_cannot_commit(engine: AsyncEngine, fence: EpochFence) -> None:
    assert await fence.register(engine, "{s/0}", "g", 1) == 1
    old = fence.bind("{s/0}", "g", 1)
    async with DbSession(engine) as session:
        await old.check(session)  # still the newest
    assert await fence.register(engine, "{s/0}", "g", 2) == 2
    with pytest.raises(PartitionFencedError):
        async with DbSession(engine) as session:
            await old.check(session)
    assert await fence.register(engine, "{s/0}", "g", 2) == 2  # not newer: not recorded
    assert await fence.register(engine, "{s/0}", "g", 1) == 2
    assert await fence.current(engine, "{s/0}", "g") == 2
    assert await fence.current(engine, "{s/1}", "g") is None


async def test_registration_waits_for_a_transaction_that_passed_its_check(
    engine: AsyncEngine, fence: EpochFence
) -> None:
    """The former owner's transaction checked its epoch and has not committed yet: the
    new owner's registration waits for it, so that commit lands before the new owner
    starts; a check after the registration is refused."""
    await fence.register(engine, "{s/0}", "g", 1)
    old = fence.bind("{s/0}", "g", 1)
    order: list[str] = []
    checked = asyncio.Event()
    release = asyncio.Event()

    async def former_owner() -> None:
        async with DbSession(engine) as session:
            await old.check(session)
            checked.set()
            await release.wait()
        order.append("former owner committed")

    async def new_owner() -> None:
        await checked.wait()
        await fence.register(engine, "{s/0}", "g", 2)
        order.append("new owner registered")

    tasks = [asyncio.create_task(former_owner()), asyncio.create_task(new_owner())]
    await checked.wait()
    await asyncio.sleep(0.3)
    assert order == []  # the registration waits
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["former owner committed", "new owner registered"]
    with pytest.raises(PartitionFencedError):
        async with DbSession(engine) as session:
            await old.check(session)


# -- consumers dividing the partitions ---------------------------------------------------


@pytest.mark.cluster
async def test_consumers_divide_the_partitions_keep_key_order_and_rebalance_on_stop(
    engine: AsyncEngine,
    make_table: TableFactory,
    redis: Redis,
    stream: str,
    inbox: Inbox,
    fence: EpochFence,
) -> None:
    layout = PartitionedStream(stream, 6)
    table = await make_table(KEY_STATE)
    checker = OrderingChecker(engine, table, plan(1_500, 40, 4, 0.4, seed=3), outage_share=0.0)
    await checker.setup()
    await checker.publish(PartitionedProducer(redis, layout, registry=None))

    def member(name: str) -> PartitionedConsumer:
        return PartitionedConsumer(
            redis, layout, "g", inbox=inbox, fence=fence, member=name, lease_ttl_ms=600,
            concurrency=4, block_ms=100, registry=None, reconnect_initial_delay=0.01,
            ordering_retry_delay=0.005, ordering_retry_max_delay=0.05, max_deliveries=None,
        )  # fmt: skip

    consumers = [member("a"), member("b"), member("c")]
    tasks = [asyncio.create_task(c.run(checker.handle, engine=engine)) for c in consumers]
    try:

        async def divided() -> bool:
            owned = [c.ownership().owned for c in consumers]
            return sorted(p for o in owned for p in o) == list(range(6)) and all(
                len(o) == 2 for o in owned
            )

        await wait_until(divided, timeout=10)
        consumers[2].stop()  # graceful: its partitions go to the two others
        await asyncio.wait_for(tasks[2], 10)

        async def rebalanced() -> bool:
            owned = [c.ownership().owned for c in consumers[:2]]
            return sorted(p for o in owned for p in o) == list(range(6))

        await wait_until(rebalanced, timeout=10)
        await wait_until(lambda: _applied_all(checker), timeout=60)
        status = await partition_status(redis, layout, "g")
        assert {s.owner for s in status} == {"a", "b"}
        assert all(s.pending == 0 and s.lag == 0 for s in status)
    finally:
        for c in consumers:
            c.stop()
        await asyncio.gather(*tasks)
    assert checker.violations == []
    assert await checker.applied() == checker.expected
    stopped = consumers[2].ownership()
    assert stopped.released == stopped.acquired >= 2  # everything it took, it gave up
    assert all(c.ownership().lease_losses == 0 for c in consumers)
    assert {s.owner for s in await partition_status(redis, layout, "g")} == {None}


async def _applied_all(checker: OrderingChecker) -> bool:
    return await checker.applied() == checker.expected


async def test_the_cli_shows_owners_epochs_and_lag(redis: Redis, stream: str) -> None:
    layout = PartitionedStream(stream, 3)
    leases = LeaseStore(redis, layout, "g")
    for partition, member in ((0, "a"), (1, "b")):
        assert await leases.acquire(partition, member, 60_000) is not None
    await redis.xgroup_create(layout.stream_key(0), "g", id="0", mkstream=True)
    await PartitionedProducer(redis, layout, registry=None).publish({"n": 1}, key="k")
    key_partition = layout.partition_of("k")

    code, document = await _cli_json("partitions", stream, "3", "g")
    assert code == 1  # partition 2 has no owner
    assert document["unowned"] == [2]
    rows = {row["partition"]: row for row in document["partitions"]}
    assert [rows[p]["owner"] for p in range(3)] == ["a", "b", None]
    assert rows[0]["epoch"] == 1 and rows[0]["since"]
    assert rows[0]["lag"] == (1 if key_partition == 0 else 0)
    assert rows[1]["lag"] is None  # no group there yet

    assert await leases.acquire(2, "a", 60_000) is not None
    code, document = await _cli_json("partitions", stream, "3", "g")
    assert code == 0 and document["unowned"] == []


async def _cli_json(*args: str) -> tuple[int, Any]:
    runner = CliRunner()
    argv = ["--redis", REDIS_URL, "--json", *args]
    result = await anyio.to_thread.run_sync(lambda: runner.invoke(app, argv))
    return result.exit_code, json.loads(result.stdout)


async def test_an_epoch_redis_handed_out_before_is_refused_and_replaced(
    engine: AsyncEngine, redis: Redis, stream: str, fence: EpochFence
) -> None:
    """After a Redis failover lost the epoch counter, Redis hands out epoch 1 again while
    the database has 5: the registration is refused, the counter raised, the partition
    released and acquired again with epoch 6, and only then consumed."""
    layout = PartitionedStream(stream, 1)
    await fence.register(engine, layout.stream_key(0), "g", 5)
    handled: list[int] = []

    async def handler(message: Any, session: DbSession) -> None:
        handled.append(message.payload["n"])

    registry = CollectorRegistry()
    consumer = PartitionedConsumer(
        redis, layout, "g", fence=fence, member="m", lease_ttl_ms=600, block_ms=50,
        registry=registry,
    )  # fmt: skip
    await PartitionedProducer(redis, layout, registry=None).publish({"n": 1})
    task = asyncio.create_task(consumer.run(handler, engine=engine))
    try:
        await wait_until(_returns(lambda: handled == [1]), timeout=10)
    finally:
        consumer.stop()
        await task
    ownership = consumer.ownership()
    assert (ownership.acquired, ownership.released) == (2, 2)
    assert await fence.current(engine, layout.stream_key(0), "g") == 6
    for event in ("acquired", "released"):
        labels = {"stream": stream, "group": "g", "event": event}
        assert registry.get_sample_value("safesync_queue_partition_rebalances_total", labels) == 2


def _returns(check: Any) -> Any:
    async def condition() -> bool:
        return bool(check())

    return condition


async def test_a_cancelled_member_releases_its_partitions_and_runs_once(
    redis: Redis, stream: str
) -> None:
    layout = PartitionedStream(stream, 2)

    async def handler(message: Any) -> None:
        await asyncio.sleep(10)  # still running when the member is cancelled

    consumer = PartitionedConsumer(
        redis, layout, "g", fence=None, member="m", lease_ttl_ms=600, block_ms=50, registry=None
    )
    await PartitionedProducer(redis, layout, registry=None).publish_batch([{}, {}])
    task = asyncio.create_task(consumer.run(handler))

    async def busy() -> bool:
        return sum(s.pending for s in await partition_status(redis, layout, "g")) == 2

    await wait_until(busy, timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status = await partition_status(redis, layout, "g")
    assert [s.owner for s in status] == [None, None]
    assert sum(s.pending for s in status) == 2  # left for the next owner
    with pytest.raises(QueueError, match="run already"):
        await consumer.run(handler)
