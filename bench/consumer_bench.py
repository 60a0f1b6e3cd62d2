"""Section 1: end-to-end consumption, every variant once per repetition (interleaved)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from .procstat import is_disturbed, remainder
from .protocol import WorkerSpec
from .runner import RunMeasurement, run_workers
from .settings import ACCOUNTS, DATABASE_URL, DISTURBED_SHARE, REDIS_URL
from .stats import median, progress, ratio
from .workload import AccountsWorkload, Deposits, status_counters

MB = 1_000_000


@dataclass(frozen=True, slots=True)
class ConsumerVariant:
    """One line of the consumer table."""

    key: str
    label: str
    kind: str
    processes: int
    concurrency: int
    batch_size: int = 1
    deferred: bool = False


def _safesync(processes: int, concurrency: int) -> ConsumerVariant:
    """safesync_async's consumer in ``processes`` processes at ``concurrency`` each."""
    return ConsumerVariant(
        key=f"safesync-p{processes}-c{concurrency}",
        label=f"safesync_async, {processes} proc x concurrency {concurrency}",
        kind="safesync",
        processes=processes,
        concurrency=concurrency,
    )


VARIANTS = (
    *(_safesync(p, c) for p in (1, 2) for c in (1, 16, 32)),
    ConsumerVariant(
        "safesync-p1-c32-deferred",
        "safesync_async, 1 proc x concurrency 32, deferred write",
        "safesync", 1, 32, deferred=True,
    ),
    ConsumerVariant(
        "safesync-p1-c32-ordered",
        "safesync_async, 1 proc x concurrency 32, key-ordered by account",
        "safesync-ordered", 1, 32,
    ),
    ConsumerVariant(
        "safesync-batch", "safesync_async batch mode (batch 10, concurrency 8), 1 proc",
        "safesync", 1, 8, batch_size=10,
    ),
    ConsumerVariant(
        "safesync-batch-deferred",
        "safesync_async batch mode, deferred writes (batch 10, concurrency 8), 1 proc",
        "safesync", 1, 8, batch_size=10, deferred=True,
    ),
    *(
        ConsumerVariant(
            f"runner-p{p}", f"safesync worker runner, {p} proc x concurrency 32", "runner", p, 32
        )
        for p in (1, 2)
    ),
    ConsumerVariant("seed-p1", "seed library, 1 proc", "seed", 1, 1),
    ConsumerVariant("seed-p4", "seed library, 4 proc", "seed", 4, 1),
    ConsumerVariant("raw", "raw asyncmy + redis.asyncio loop, 32 workers", "raw", 1, 32),
)  # fmt: skip

#: (name, numerator variant, denominator variant, minimum the ratio should reach)
RATIOS = (
    ("safesync 1 proc c=32 / raw ceiling", "safesync-p1-c32", "raw", 0.6),
    ("safesync 1 proc c=32 / seed 1 proc", "safesync-p1-c32", "seed-p1", 5.0),
    ("safesync 1 proc c=32, deferred write / raw ceiling", "safesync-p1-c32-deferred", "raw", 0.6),
    ("runner 1 proc / plain consumer 1 proc (c=32)", "runner-p1", "safesync-p1-c32", 0.95),
    ("runner 2 proc / plain consumer 2 proc (c=32)", "runner-p2", "safesync-p2-c32", 0.95),
    ("key-ordered / unordered, 1 proc c=32", "safesync-p1-c32-ordered", "safesync-p1-c32", 0.8),
    ("batch mode / raw ceiling", "safesync-batch", "raw", 1.5),
    ("batch mode, deferred writes / raw ceiling", "safesync-batch-deferred", "raw", 1.5),
)


def run_timeout(messages: int) -> float:
    """Seconds a run may take before its workers are killed and it counts as failed."""
    return 60.0 + messages / 100


def specs_for(variant: ConsumerVariant, workload: AccountsWorkload, tag: str) -> list[WorkerSpec]:
    """One worker process per process of ``variant``, each with its own consumer name
    (the runner variant: one worker process that runs all of them)."""
    if variant.kind == "runner":
        return [
            WorkerSpec(
                kind="runner", stream=workload.stream, group=workload.group,
                consumer=f"{variant.key}-{tag}", table=workload.table,
                concurrency=variant.concurrency, database_url=DATABASE_URL,
                redis_url=REDIS_URL, processes=variant.processes,
            )
        ]  # fmt: skip
    return [
        WorkerSpec(
            kind=variant.kind,
            stream=workload.stream,
            group=workload.group,
            consumer=f"{variant.key}-{tag}-w{index}",
            table=workload.table,
            concurrency=variant.concurrency,
            batch_size=variant.batch_size,
            deferred=variant.deferred,
            database_url=DATABASE_URL,
            redis_url=REDIS_URL,
        )
        for index in range(variant.processes)
    ]


def _minus(value: int | None, amount: int) -> int | None:
    return None if value is None else value - amount


def _per(value: int | None, messages: int) -> float | None:
    return None if value is None else value / messages


def run_record(
    measurement: RunMeasurement,
    messages: int,
    problems: list[str],
    server_status: dict[str, int],
    busy_before: float,
) -> dict[str, Any]:
    """A run as stored in the results: throughput, CPU, memory, server counters (deltas
    over the run) and what went wrong."""
    wall = measurement.wall_seconds
    workers = measurement.workers
    other = remainder(
        measurement.host_busy,
        measurement.worker_cpu,
        measurement.untimed_cpu,
        measurement.database_cpu,
        measurement.redis_cpu,
    )
    return {
        "ok": not problems,
        "problems": problems,
        "host_busy_share_before": busy_before,
        "disturbed": is_disturbed(other, wall, DISTURBED_SHARE),
        "messages": messages,
        "wall_seconds": wall,
        "msg_per_s": messages / wall if wall else None,
        "worker_cpu_s": measurement.worker_cpu,
        "database_cpu_s": measurement.database_cpu,
        "redis_cpu_s": measurement.redis_cpu,
        "host_busy_s": measurement.host_busy,
        "untimed_cpu_s": measurement.untimed_cpu,
        "other_cpu_s": other,
        "peak_rss_mb": max((w.peak_rss_bytes for w in workers), default=0) / MB or None,
        "ready_rss_mb": max((w.rss_ready_bytes for w in workers), default=0) / MB or None,
        "worker_counters": [w.counters for w in workers],
        "server_status": server_status,
        "extra_updates": _minus(server_status.get("Com_update"), messages),
        "statements_per_msg": _per(server_status.get("Questions"), messages),
        "fsyncs_per_msg": _per(server_status.get("Innodb_data_fsyncs"), messages),
    }


async def measure_run(
    workload: AccountsWorkload,
    deposits: Deposits,
    variant: ConsumerVariant,
    tag: str,
    patience: float,
) -> dict[str, Any]:
    """Reset, publish, consume with ``variant``'s workers, verify; one run's record."""
    busy_before = await workload.prepare_run(deposits, patience)
    before = await status_counters(workload.engine)
    measurement = await run_workers(
        specs_for(variant, workload, tag), run_timeout(len(deposits.payloads))
    )
    after = await status_counters(workload.engine)
    changes = {name: after[name] - before[name] for name in after.keys() & before.keys()}
    problems = measurement.errors + await workload.verify(deposits)
    await workload.drop_stream()
    return run_record(measurement, len(deposits.payloads), problems, changes, busy_before)


def summarise(variant: ConsumerVariant, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over the successful runs of one variant."""
    good = [r for r in runs if r["ok"]]

    def middle(name: str) -> float | None:
        return median([r[name] for r in good if r[name] is not None])

    rates = [r["msg_per_s"] for r in good]
    return {
        "key": variant.key,
        "label": variant.label,
        "processes": variant.processes,
        "concurrency": variant.concurrency,
        "batch_size": variant.batch_size,
        "runs": len(runs),
        "ok_runs": len(good),
        "disturbed_runs": sum(r["disturbed"] for r in good),
        "median_msg_per_s": median(rates),
        "min_msg_per_s": min(rates, default=None),
        "max_msg_per_s": max(rates, default=None),
        "median_wall_s": middle("wall_seconds"),
        "median_worker_cpu_s": middle("worker_cpu_s"),
        "median_database_cpu_s": middle("database_cpu_s"),
        "median_redis_cpu_s": middle("redis_cpu_s"),
        "median_host_busy_s": middle("host_busy_s"),
        "median_untimed_cpu_s": middle("untimed_cpu_s"),
        "median_other_cpu_s": middle("other_cpu_s"),
        "median_extra_updates": middle("extra_updates"),
        "median_statements_per_msg": middle("statements_per_msg"),
        "median_fsyncs_per_msg": middle("fsyncs_per_msg"),
        "median_counters": {
            name: median([sum(c.get(name, 0) for c in r["worker_counters"]) for r in good])
            for name in sorted({name for r in good for c in r["worker_counters"] for name in c})
        },
        "max_peak_rss_mb": max((r["peak_rss_mb"] or 0 for r in good), default=None),
    }


async def consumer_section(
    engine: AsyncEngine, client: redis.asyncio.Redis, messages: int, reps: int, patience: float
) -> dict[str, Any]:
    """Every variant in every repetition, in the same order; then the summary. Before each
    run the host gets up to ``patience`` seconds to become quiet."""
    deposits = Deposits.generate(messages)
    workload = AccountsWorkload(engine, client)
    await workload.create()
    runs: dict[str, list[dict[str, Any]]] = {v.key: [] for v in VARIANTS}
    try:
        for rep in range(1, reps + 1):
            for variant in VARIANTS:
                record = await measure_run(workload, deposits, variant, f"r{rep}", patience)
                record["rep"] = rep
                runs[variant.key].append(record)
                outcome = "ok" if record["ok"] else "FAILED: " + "; ".join(record["problems"])
                rate = record["msg_per_s"]
                progress(
                    f"[consumer rep {rep}/{reps}] {variant.label}: "
                    f"{f'{rate:,.0f} msg/s' if rate else '-'} {outcome}"
                )
    finally:
        await workload.cleanup()
    summary = [summarise(v, runs[v.key]) for v in VARIANTS]
    medians = {s["key"]: s["median_msg_per_s"] for s in summary}
    ratios = [
        {
            "name": name,
            "value": ratio(medians[top], medians[bottom]),
            "target": target,
        }
        for name, top, bottom, target in RATIOS
    ]
    return {
        "messages": messages,
        "reps": reps,
        "accounts": ACCOUNTS,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
