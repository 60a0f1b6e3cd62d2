"""The lease protocol against a model, on Redis: random acquisitions, renewals, releases,
expiries, epoch raises, reads and take-overs by three members of one partition. Whatever
the order, the lease has at most one holder and it is the one the model says; an
acquisition succeeds only when the lease is free, and always with an epoch larger than
every earlier one (and than any floor raised); renewals, releases, reads and take-overs
succeed only for the current holder, and a former holder never takes an entry."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from safesync_async import PartitionedProducer, PartitionedStream, PartitionLeaseLostError
from safesync_async.queue._streams import text
from safesync_async.queue.partitions.leases import Lease, LeaseStore
from safesync_async.queue.partitions.stream import LeasedStream

MEMBERS = ["a", "b", "c"]
ACTIONS = ["acquire", "acquire", "renew", "release", "expire", "raise", "read", "take_over"]
Step = tuple[str, str, int]
STEPS = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from(MEMBERS), st.integers(1, 3)),
    min_size=3,
    max_size=30,
)
_names = itertools.count()


@pytest.mark.model
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
async def test_the_lease_protocol_keeps_one_holder_and_growing_epochs(
    redis: Redis, stream: str, steps: list[Step]
) -> None:
    layout = PartitionedStream(f"{stream}-{next(_names)}", 1)
    leases = LeaseStore(redis, layout, "g")
    lease_key = layout.lease_key(0, "g")
    producer = PartitionedProducer(redis, layout, registry=None)
    await redis.xgroup_create(layout.stream_key(0), "g", id="0", mkstream=True)
    holder: str | None = None  # the lease value the model expects in Redis
    known: dict[str, Lease] = {}  # the last lease each member acquired
    floor = 0  # every later epoch must exceed this
    try:
        for action, member, number in steps:
            lease = known.get(member)
            if action == "acquire":
                got = await leases.acquire(0, member, 60_000)
                assert (got is not None) == (holder is None)
                if got is not None:
                    assert got.member == member and got.epoch > floor
                    floor, holder, known[member] = got.epoch, got.value, got
            elif action == "expire":
                await redis.delete(lease_key)
                holder = None
            elif action == "raise":
                floor += number
                await leases.raise_epoch(0, floor)
            elif lease is None:
                continue
            elif action == "renew":
                assert await leases.renew(lease, 60_000) == (lease.value == holder)
            elif action == "release":
                assert await leases.release(lease) == (lease.value == holder)
                if lease.value == holder:
                    holder = None
            else:
                await producer.publish({"n": number})
                leased = LeasedStream(
                    redis, layout.stream_key(0), "g", member, lease_key=lease_key, lease=lease
                )
                operation = (
                    leased.take_over() if action == "take_over" else leased.read_new(10, None)
                )
                if lease.value == holder:
                    await operation
                else:
                    before = await _pending_of(redis, layout, member)
                    with pytest.raises(PartitionLeaseLostError):
                        await operation
                    assert await _pending_of(redis, layout, member) == before  # took nothing
            current = await redis.get(lease_key)
            assert (text(current) if current else None) == holder
    finally:
        for key in (layout.stream_key(0), lease_key, layout.epoch_key(0, "g"), layout.count_key):
            await redis.delete(key)


async def _pending_of(redis: Redis, layout: PartitionedStream, member: str) -> list[str]:
    rows = await redis.xpending_range(layout.stream_key(0), "g", "-", "+", 1_000, member)
    return [text(row["message_id"]) for row in rows]
