"""Partitioned streams across processes: three members of a group share 8 partitions while
keyed messages flow; one is SIGKILLed and restarted, one stops gracefully, one is frozen
(SIGSTOP) longer than its lease and then resumed. Every message carries its key's sequence
number and the handler applies it only if it is the key's next: nothing may be lost,
applied twice, or applied out of order, and every rebalance is timed. Without fencing (and
without the inbox) the frozen member's resumed transactions break the order: the check
can fail."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    PartitionedProducer,
    PartitionedStream,
    RedisClient,
    partition_status,
)
from safesync_async.queue.keys import hash_slot

from ..conftest import CLUSTER, TableFactory
from ..support.cluster import PrivateRedisCluster
from ..support.ordering import KEY_STATE
from ..support.partitions import KeyedTraffic, MemberProcess, held_by, wait_balanced
from ..support.reliability import Recorder
from ..support.settings import REDIS_URL
from .conftest import until

pytestmark = pytest.mark.faults

FAMILY = "Partitioned streams"
PARTITIONS = 8
LEASE_TTL_MS = 2_000
PAUSE_SECONDS = 5.0
KEYS = 200
# Handlers take this long (inside the transaction), so a frozen member has work under way.
HANG_MS = 15
VIOLATIONS = (
    "CREATE TABLE {table} (id {autoinc}, k VARCHAR(64) NOT NULL, seq INT NOT NULL, "
    "found INT, member VARCHAR(64) NOT NULL)"
)


class Group:
    """The member processes of one scenario, started with the same settings."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.members: dict[str, MemberProcess] = {}

    def start(self, name: str) -> MemberProcess:
        self.members[name] = MemberProcess(name, *self.args)
        return self.members[name]

    def close(self) -> None:
        for member in self.members.values():
            member.close()


@pytest.fixture
def group() -> Iterator[Callable[[list[str]], Group]]:
    made: list[Group] = []

    def make(args: list[str]) -> Group:
        made.append(Group(args))
        return made[-1]

    yield make
    for one in made:
        one.close()


async def _setup(
    engine: AsyncEngine, make_table: TableFactory, traffic: KeyedTraffic
) -> tuple[str, str]:
    state = await make_table(KEY_STATE)
    violations = await make_table(VIOLATIONS)
    async with DbSession(engine, registry=None) as session:
        for key in traffic.key_names():
            await session.execute(f"INSERT INTO {state} (k, last_seq) VALUES (:k, 0)", {"k": key})
    return state, violations


async def _outcome(
    engine: AsyncEngine, state: str, violations: str, traffic: KeyedTraffic
) -> dict[str, int]:
    async with DbSession(engine, registry=None) as session:
        applied = {
            str(r["k"]): int(r["last_seq"])
            for r in await session.fetch_all(f"SELECT k, last_seq FROM {state}")
        }
        rows = await session.fetch_all(f"SELECT seq, found FROM {violations}")
    return {
        "messages": sum(traffic.sent.values()),
        "lost": sum(max(0, sent - applied.get(k, 0)) for k, sent in traffic.sent.items()),
        "duplicate_effects": sum(1 for r in rows if r["found"] == r["seq"]),
        "order_violations": sum(1 for r in rows if r["found"] != r["seq"]),
    }


def _redis_args(request: pytest.FixtureRequest, redis_server: str) -> list[str]:
    if redis_server == CLUSTER:
        cluster: PrivateRedisCluster = request.getfixturevalue("redis_cluster")
        return ["--redis-url", cluster.url, "--cluster"]
    return ["--redis-url", REDIS_URL]


@pytest.mark.cluster
async def test_members_killed_stopped_and_paused_keep_every_key_in_order(
    request: pytest.FixtureRequest,
    redis_server: str,
    engine: AsyncEngine,
    redis: RedisClient,
    stream: str,
    make_table: TableFactory,
    inbox: Inbox,
    fence: EpochFence,
    group: Callable[[list[str]], Group],
    reliability: Recorder,
) -> None:
    layout = PartitionedStream(stream, PARTITIONS)
    traffic = KeyedTraffic(PartitionedProducer(redis, layout, registry=None), KEYS)
    state, violations = await _setup(engine, make_table, traffic)
    members = group([
        *_redis_args(request, redis_server), "--stream", layout.name,
        "--partitions", str(PARTITIONS), "--group", "g", "--state", state,
        "--violations", violations, "--inbox", inbox.table.name, "--fence", fence.table.name,
        "--lease-ttl-ms", str(LEASE_TTL_MS), "--hang-ms", str(HANG_MS),
    ])  # fmt: skip
    publishing = asyncio.create_task(traffic.run())
    timings: dict[str, float] = {}
    counters: list[dict[str, Any]] = []
    try:

        async def balanced(*names: str) -> float:
            return await wait_balanced(redis, layout, "g", set(names), timeout=30)

        for name in ("A", "B", "C"):
            members.start(name)
        timings["start"] = await balanced("A", "B", "C")
        await asyncio.sleep(1)
        members.members["C"].kill()
        timings["SIGKILL"] = await balanced("A", "B")
        members.start("C2")
        timings["join"] = await balanced("A", "B", "C2")
        await asyncio.sleep(1)
        members.members["B"].terminate()
        timings["graceful stop"] = await balanced("A", "C2")
        counters.append(await members.members["B"].stopped())
        await asyncio.sleep(1)
        await until(lambda: _busy(redis, layout, "A"), timeout=30)
        members.members["A"].pause()
        timings["SIGSTOP"] = await balanced("C2")
        await asyncio.sleep(max(0.0, PAUSE_SECONDS - timings["SIGSTOP"]))
        members.members["A"].resume()
        timings["SIGCONT"] = await balanced("A", "C2")
        await asyncio.sleep(1)
        traffic.stop()
        await publishing

        await until(lambda: _drained(redis, layout), timeout=60)
        for name in ("A", "C2"):
            members.members[name].terminate()
        counters += [await members.members[name].stopped() for name in ("A", "C2")]
    finally:
        traffic.stop()
        await publishing
    outcome = await _outcome(engine, state, violations, traffic)
    spread = _spread(request, redis_server, layout)
    fenced = sum(c["fenced"] for c in counters)
    reliability.record(
        FAMILY,
        f"3 members, {PARTITIONS} partitions, lease {LEASE_TTL_MS / 1000:g} s, inbox and "
        f"fencing ({redis_server} Redis)",
        **outcome,
        fenced=fenced,
        lease_losses=sum(c["lease_losses"] for c in counters),
        rebalance_max_s=round(max(timings.values()), 2),
        rebalance_median_s=round(statistics.median(timings.values()), 2),
        **{f"{event} s": round(seconds, 2) for event, seconds in timings.items()},
        **spread,
    )
    assert (outcome["lost"], outcome["duplicate_effects"], outcome["order_violations"]) == (0, 0, 0)
    assert counters[-2]["lease_losses"] >= 1  # A lost its leases while frozen
    assert timings["SIGKILL"] < 3 * LEASE_TTL_MS / 1000  # lease TTL plus a little


async def _busy(redis: RedisClient, layout: PartitionedStream, member: str) -> bool:
    """The member holds several entries: freezing it now leaves work under way."""
    return await held_by(redis, layout, "g", member) >= 6


async def _drained(redis: RedisClient, layout: PartitionedStream) -> bool:
    status = await partition_status(redis, layout, "g")
    return all(s.pending == 0 and s.lag == 0 for s in status)


def _spread(
    request: pytest.FixtureRequest, redis_server: str, layout: PartitionedStream
) -> dict[str, str]:
    """On the cluster: how many partitions each master serves."""
    if redis_server != CLUSTER:
        return {}
    cluster: PrivateRedisCluster = request.getfixturevalue("redis_cluster")
    masters = sorted(cluster.master_of(key).address for key in layout.stream_keys())
    counts = {address: masters.count(address) for address in sorted(set(masters))}
    slots = len({hash_slot(key) for key in layout.stream_keys()})
    return {"spread": f"{slots} slots over {len(counts)} masters: {sorted(counts.values())}"}


async def test_without_fencing_a_paused_member_breaks_key_order(
    engine: AsyncEngine,
    redis: RedisClient,
    stream: str,
    make_table: TableFactory,
    group: Callable[[list[str]], Group],
    reliability: Recorder,
) -> None:
    """The control: neither inbox nor fencing. Frozen past its lease, member A resumes
    with transactions under way and messages read ahead that member C has applied since:
    A commits them after C's, so keys go backwards (recorded as violations)."""
    layout = PartitionedStream(stream, PARTITIONS)
    traffic = KeyedTraffic(PartitionedProducer(redis, layout, registry=None), KEYS, batch=40)
    state, violations = await _setup(engine, make_table, traffic)
    members = group([
        "--redis-url", REDIS_URL, "--stream", layout.name, "--partitions", str(PARTITIONS),
        "--group", "g", "--state", state, "--violations", violations, "--concurrency", "4",
        "--lease-ttl-ms", str(LEASE_TTL_MS), "--hang-ms", str(HANG_MS),
    ])  # fmt: skip
    publishing = asyncio.create_task(traffic.run())
    try:
        for name in ("A", "C"):
            members.start(name)
        await wait_balanced(redis, layout, "g", {"A", "C"}, timeout=30)
        await until(lambda: _busy(redis, layout, "A"), timeout=30)
        members.members["A"].pause()
        await wait_balanced(redis, layout, "g", {"C"}, timeout=30)
        await asyncio.sleep(2)
        members.members["A"].resume()
        await wait_balanced(redis, layout, "g", {"A", "C"}, timeout=30)
        traffic.stop()
        await publishing
        await until(lambda: _drained(redis, layout), timeout=60)
        for member in members.members.values():
            member.terminate()
        for member in members.members.values():
            await member.stopped()
    finally:
        traffic.stop()
        await publishing
    outcome = await _outcome(engine, state, violations, traffic)
    reliability.record(
        FAMILY,
        "control: 2 members, SIGSTOP past the lease, no inbox, no fencing",
        **outcome,
    )
    assert outcome["order_violations"] + outcome["duplicate_effects"] > 0, outcome
