"""``python -m bench.replication_wait``: what ``QueueProducer(wait_replicas=1)`` costs.

On a private Redis Cluster (3 masters, 3 replicas, loopback; the one the test suite
starts), the same publications run without and with the replication wait, interleaved,
``--reps`` times: one publication at a time (latency percentiles and rate), 16
concurrent publishers, and batches of 100. Prints a markdown table with the medians and
the with/without ratios. About half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from safesync_async import QueueProducer, create_redis_client
from safesync_async.queue.client import RedisClient

from .stats import median, percentile, progress, ratio

WAIT_TIMEOUT_MS = 1_000
CONCURRENT_PUBLISHERS = 16
BATCH = 100


@dataclass
class Sample:
    rate: float  # messages per second
    latencies_ms: list[float]


async def _one_at_a_time(producer: QueueProducer, count: int) -> Sample:
    latencies = []
    started = time.perf_counter()
    for n in range(count):
        before = time.perf_counter()
        await producer.publish({"n": n})
        latencies.append((time.perf_counter() - before) * 1000)
    return Sample(count / (time.perf_counter() - started), latencies)


async def _concurrent(producer: QueueProducer, count: int) -> Sample:
    per_task = count // CONCURRENT_PUBLISHERS
    latencies: list[float] = []

    async def publisher() -> None:
        for n in range(per_task):
            before = time.perf_counter()
            await producer.publish({"n": n})
            latencies.append((time.perf_counter() - before) * 1000)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(CONCURRENT_PUBLISHERS):
            tasks.create_task(publisher())
    return Sample(per_task * CONCURRENT_PUBLISHERS / (time.perf_counter() - started), latencies)


async def _batches(producer: QueueProducer, count: int) -> Sample:
    latencies = []
    started = time.perf_counter()
    for start in range(0, count, BATCH):
        before = time.perf_counter()
        await producer.publish_batch({"n": n} for n in range(start, start + BATCH))
        latencies.append((time.perf_counter() - before) * 1000)
    return Sample(count / (time.perf_counter() - started), latencies)


Workload = Callable[[QueueProducer, int], Awaitable[Sample]]
WORKLOADS: dict[str, tuple[Workload, int]] = {
    "one at a time": (_one_at_a_time, 1_000),
    f"{CONCURRENT_PUBLISHERS} concurrent publishers": (_concurrent, 4_000),
    f"batches of {BATCH}": (_batches, 10_000),
}


async def measure(redis: RedisClient, reps: int) -> dict[tuple[str, int], list[Sample]]:
    samples: dict[tuple[str, int], list[Sample]] = {}
    for rep in range(reps):
        for name, (workload, count) in WORKLOADS.items():
            for wait in (0, 1):
                stream = f"bench_wait_{rep}_{wait}_{name.split()[0]}"
                producer = QueueProducer(
                    redis,
                    stream,
                    wait_replicas=wait,
                    wait_timeout_ms=WAIT_TIMEOUT_MS,
                    registry=None,
                )
                samples.setdefault((name, wait), []).append(await workload(producer, count))
                await redis.delete(stream)
                progress(f"rep {rep + 1}/{reps}: {name}, wait_replicas={wait}")
    return samples


def render(samples: dict[tuple[str, int], list[Sample]]) -> str:
    lines = [
        "| Publishing | wait_replicas | msg/s | p50 ms | p99 ms | msg/s with / without |",
        "|---|---|---|---|---|---|",
    ]
    for name in WORKLOADS:
        base = median([s.rate for s in samples[(name, 0)]])
        for wait in (0, 1):
            runs = samples[(name, wait)]
            rate = median([s.rate for s in runs])
            latencies = [latency for s in runs for latency in s.latencies_ms]
            share = ratio(rate, base)
            lines.append(
                f"| {name} | {wait} | {rate or 0:,.0f} | {percentile(latencies, 50) or 0:.2f} | "
                f"{percentile(latencies, 99) or 0:.2f} | {'' if wait == 0 else f'{share:.2f}'} |"
            )
    return "\n".join(lines)


async def run(url: str | None, reps: int) -> str:
    cluster = None
    if url is None:
        from tests.support.cluster import PrivateRedisCluster

        cluster = PrivateRedisCluster().start()
        url = cluster.url
    redis = create_redis_client(url, cluster=True)
    try:
        await QueueProducer(redis, "bench_wait_warmup", wait_replicas=1, registry=None).publish({})
        await redis.delete("bench_wait_warmup")
        return render(await measure(redis, reps))
    finally:
        await redis.aclose()
        if cluster is not None:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replication_wait", description=__doc__)
    parser.add_argument("--cluster", metavar="URL", help="a node of an existing cluster")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args()
    print(asyncio.run(run(args.cluster, args.reps)))


if __name__ == "__main__":
    main()
