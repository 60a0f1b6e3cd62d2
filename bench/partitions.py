"""``python -m bench.partitions``: a partitioned stream consumed by 1, 2 and 3 member
processes on this machine.

Each run publishes ``--messages`` deposits over 1,000 accounts (the account is the
ordering key) to a stream of 8 partitions, starts the member processes (inbox and fence
on, 4 workers per partition owned), waits until the partitions are divided evenly among
them, then times the rest of the backlog: messages applied per second from that moment
until every deposit is applied. Runs are interleaved ``--reps`` times; the table shows
the medians and the ratio to one process. With ``--cluster`` the stream lives on a
private Redis Cluster (3 masters), and the table also shows how the 8 partitions spread
over the masters. A few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    EpochFence,
    Inbox,
    PartitionedProducer,
    PartitionedStream,
    create_engine,
    create_redis_client,
)
from safesync_async.queue.client import RedisClient
from tests.support.cluster import PrivateRedisCluster
from tests.support.partitions import wait_balanced

from .procstat import CpuMeter, cpu_seconds, delta
from .settings import ACCOUNTS, DATABASE_URL, REDIS_URL, REPO_ROOT
from .stats import median, progress, ratio

PARTITIONS = 8
CONCURRENCY = 4
PROCESSES = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: throughput, the host's busy share, CPU per message."""

    rate: float
    host_busy: float
    members_us: float | None
    database_us: float | None


def _per_message(seconds: float | None, messages: int) -> float | None:
    return None if seconds is None or messages <= 0 else seconds / messages * 1e6


class Run:
    """One timed run: a fresh stream and accounts table, ``processes`` members."""

    def __init__(self, redis: RedisClient, redis_args: list[str], processes: int) -> None:
        self.redis = redis
        self.redis_args = redis_args
        self.processes = processes
        suffix = uuid.uuid4().hex[:8]
        self.stream = PartitionedStream(f"bench_part_{suffix}", PARTITIONS)
        self.table = f"bench_part_accounts_{suffix}"

    async def measure(
        self, engine_url: str, messages: int, inbox: Inbox, fence: EpochFence
    ) -> Sample:
        engine = create_engine(engine_url)
        members: list[subprocess.Popen[bytes]] = []
        try:
            async with DbSession(engine) as session:
                await session.execute(
                    f"CREATE TABLE {self.table} (id INT PRIMARY KEY, balance INT NOT NULL)"
                )
                for start in range(0, ACCOUNTS, 500):
                    rows = ", ".join(f"({i}, 0)" for i in range(start, start + 500))
                    await session.execute(f"INSERT INTO {self.table} VALUES {rows}")
            producer = PartitionedProducer(self.redis, self.stream, registry=None)
            accounts = [n % ACCOUNTS for n in range(messages)]
            await producer.publish_batch(
                [{"account": a} for a in accounts], keys=[f"account-{a}" for a in accounts]
            )
            for index in range(self.processes):
                members.append(self._member(f"m{index}", engine_url, inbox, fence))
            names = {f"m{i}" for i in range(self.processes)}
            await wait_balanced(self.redis, self.stream, "bench", names, timeout=60)
            meter = CpuMeter()
            servers, members_cpu = meter.sample(), self._members_cpu(members)
            started, applied = time.perf_counter(), await self._applied(engine)
            while True:
                now_applied = await self._applied(engine)
                if now_applied >= messages:
                    break
                await asyncio.sleep(0.05)
            wall = time.perf_counter() - started
            done, after = now_applied - applied, meter.sample()
            return Sample(
                rate=done / wall,
                host_busy=(after.host_busy - servers.host_busy) / (wall * (os.cpu_count() or 1)),
                members_us=_per_message(self._members_cpu(members) - members_cpu, done),
                database_us=_per_message(delta(after.database, servers.database), done),
            )
        finally:
            for member in members:
                member.terminate()
            for member in members:
                member.wait(60)
            async with DbSession(engine) as session:
                await session.execute(f"DROP TABLE IF EXISTS {self.table}")
            await engine.dispose()
            async for key in self.redis.scan_iter(match="{" + self.stream.name + "*"):
                await self.redis.delete(key)

    @staticmethod
    def _members_cpu(members: list[subprocess.Popen[bytes]]) -> float:
        return sum(cpu_seconds(member.pid) or 0.0 for member in members)

    def _member(
        self, name: str, engine_url: str, inbox: Inbox, fence: EpochFence
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.partition_member",
                *self.redis_args,
                "--database-url",
                engine_url,
                "--stream",
                self.stream.name,
                "--partitions",
                str(PARTITIONS),
                "--member",
                name,
                "--table",
                self.table,
                "--inbox",
                inbox.table.name,
                "--fence",
                fence.table.name,
                "--concurrency",
                str(CONCURRENCY),
            ],
            cwd=REPO_ROOT,
        )

    async def _applied(self, engine: AsyncEngine) -> int:
        async with DbSession(engine) as session:
            return int(await session.execute_scalar(f"SELECT SUM(balance) FROM {self.table}"))


async def measure(
    redis: RedisClient, redis_args: list[str], messages: int, reps: int
) -> dict[int, list[Sample]]:
    """The samples of each process count, ``reps`` interleaved runs each."""
    inbox, fence = Inbox("bench_part_inbox"), EpochFence("bench_part_epochs")
    setup = create_engine(DATABASE_URL)
    await inbox.create_table(setup)
    await fence.create_table(setup)
    rates: dict[int, list[Sample]] = {}
    try:
        for rep in range(reps):
            for processes in PROCESSES:
                run = Run(redis, redis_args, processes)
                sample = await run.measure(DATABASE_URL, messages, inbox, fence)
                rates.setdefault(processes, []).append(sample)
                progress(f"rep {rep + 1}/{reps}: {processes} process(es): {sample.rate:,.0f} msg/s")
    finally:
        async with setup.begin() as conn:
            await conn.run_sync(inbox.table.drop, checkfirst=True)
            await conn.run_sync(fence.table.drop, checkfirst=True)
        await setup.dispose()
    return rates


def render(samples: dict[int, list[Sample]], spread: str | None) -> str:
    base = median([s.rate for s in samples[1]])
    lines = [
        "| Member processes | msg/s (median) | runs | ratio to 1 process | host busy | "
        "members' CPU µs/msg | database CPU µs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for processes, runs in sorted(samples.items()):
        rate = median([r.rate for r in runs]) or 0.0
        listed = ", ".join(f"{r.rate:,.0f}" for r in runs)
        busy = median([r.host_busy for r in runs]) or 0.0
        lines.append(
            f"| {processes} | {rate:,.0f} | {listed} | {ratio(rate, base) or 0.0:.2f} | "
            f"{busy:.0%} | {_cell([r.members_us for r in runs])} | "
            f"{_cell([r.database_us for r in runs])} |"
        )
    if spread:
        lines += ["", spread]
    return "\n".join(lines)


def _cell(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{median(known):,.0f}" if known else "-"


def _spread(cluster: PrivateRedisCluster) -> str:
    stream = PartitionedStream("bench_part", PARTITIONS)
    masters = Counter(cluster.master_of(key).address for key in stream.stream_keys())
    counts = ", ".join(str(n) for n in sorted(masters.values()))
    return f"{PARTITIONS} partitions over {len(masters)} masters: {counts}"


async def run(use_cluster: bool, messages: int, reps: int) -> str:
    cluster = PrivateRedisCluster().start() if use_cluster else None
    url = cluster.url if cluster is not None else REDIS_URL
    redis = create_redis_client(url, cluster=use_cluster)
    redis_args = ["--redis-url", url, *(["--cluster"] if use_cluster else [])]
    try:
        rates = await measure(redis, redis_args, messages, reps)
        return render(rates, _spread(cluster) if cluster is not None else None)
    finally:
        await redis.aclose()
        if cluster is not None:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.partitions", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="deposits per run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--cluster", action="store_true", help="on a private Redis Cluster")
    args = parser.parse_args()
    print(asyncio.run(run(args.cluster, args.messages, args.reps)))


if __name__ == "__main__":
    main()
