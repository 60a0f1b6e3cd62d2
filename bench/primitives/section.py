"""Section 2a: the primitives against a raw-driver loop and the seed library, on
MariaDB/MySQL and on PostgreSQL. Every run is one worker process; repetition 1 runs every
cell once, repetition 2 again, and so on; every run is verified."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..procstat import DATABASE_PROCESSES, CpuMeter, is_disturbed, remainder, wait_for_quiet_host
from ..runner import RunMeasurement, run_workers
from ..settings import (
    DATABASE_URL,
    DISTURBED_SHARE,
    POSTGRES_URL,
    PRIMITIVE_WORKERS,
    QUIET_HOST_BUSY,
)
from ..stats import progress
from ..workload import wait_for_purge
from .summary import summarise
from .table import TransferTable
from .workload import SHAPE_LABELS, SHAPES, STRATEGIES, CellSpec

#: Implementations per backend, in the order they run within a cell.
IMPLEMENTATIONS = {"mariadb": ("seed", "raw", "safesync"), "postgresql": ("raw", "safesync")}
BACKEND_URLS = {"mariadb": DATABASE_URL, "postgresql": POSTGRES_URL}
PURGE_PATIENCE_SHARE = 1.0  # wait for InnoDB purge up to this x the quiet-host patience
MB = 1_000_000


@dataclass(slots=True)
class Database:
    """One backend under test: its URL, the parent's engine, the accounts table."""

    backend: str
    url: str
    engine: AsyncEngine
    table: TransferTable
    version: str
    meter: CpuMeter


async def _open(backend: str) -> Database:
    url = BACKEND_URLS[backend]
    engine = create_async_engine(url, pool_size=2)
    try:
        async with engine.connect() as conn:
            query = "SELECT version()" if backend == "mariadb" else "SHOW server_version"
            version = str((await conn.execute(sa.text(query))).scalar())
        table = TransferTable(engine, backend)
        await table.create()
    except BaseException:
        await engine.dispose()
        raise
    meter = CpuMeter(DATABASE_PROCESSES[backend])
    return Database(backend, url, engine, table, version, meter)


def time_limit(ops: int) -> float:
    """Longest a run may take (OCC on hot rows in the seed is the slowest)."""
    return 120.0 + 0.1 * ops


async def measure_run(database: Database, spec: CellSpec, patience: float) -> dict[str, Any]:
    """One verified run of one implementation; its record."""
    busy_before: list[float] = []

    async def before_go() -> None:  # the worker has warmed up: start from a clean table
        await database.table.reset()
        if database.backend == "mariadb":
            await wait_for_purge(database.engine, PURGE_PATIENCE_SHARE * patience)
        busy_before.append(await wait_for_quiet_host(QUIET_HOST_BUSY, patience))

    measurement = await run_workers(
        [spec],
        time_limit(spec.ops),
        module="bench.primitives.worker",
        meter=database.meter,
        before_go=before_go,
    )
    problems = list(measurement.errors)
    if not problems:
        problems += await database.table.verify(spec.ops)
    return run_record(spec, measurement, problems, busy_before[0] if busy_before else None)


def run_record(
    spec: CellSpec, measurement: RunMeasurement, problems: list[str], busy_before: float | None
) -> dict[str, Any]:
    counters = measurement.workers[0].counters if measurement.workers else {}
    committed = counters.get("committed", 0)
    errors = {k.removeprefix("error:"): v for k, v in counters.items() if k.startswith("error:")}
    if measurement.workers and (committed != spec.ops or errors):
        problems = [
            f"{committed:,} of {spec.ops:,} transfers completed, errors {errors}",
            *problems,
        ]
    wall = measurement.wall_seconds
    other = remainder(
        measurement.host_busy,
        measurement.worker_cpu,
        measurement.database_cpu,
        measurement.redis_cpu,
    )

    def per_op(seconds: float | None) -> float | None:
        return None if seconds is None or not committed else seconds / committed * 1e6

    return {
        "backend": spec.backend,
        "shape": next(name for name, n in SHAPES.items() if n == spec.accounts),
        "strategy": spec.strategy,
        "implementation": spec.implementation,
        "ops": spec.ops,
        "ok": not problems,
        "problems": problems,
        "wall_seconds": wall,
        "transfers_per_s": committed / wall if wall and committed else None,
        "client_cpu_s": measurement.worker_cpu,
        "client_us_per_op": per_op(measurement.worker_cpu),
        "server_cpu_s": measurement.database_cpu,
        "server_us_per_op": per_op(measurement.database_cpu),
        "host_busy_s": measurement.host_busy,
        "other_cpu_s": other,
        "host_busy_share_before": busy_before,
        "disturbed": is_disturbed(other, wall, DISTURBED_SHARE),
        "p50_ms": counters["p50_us"] / 1000 if counters.get("p50_us", -1) >= 0 else None,
        "p99_ms": counters["p99_us"] / 1000 if counters.get("p99_us", -1) >= 0 else None,
        "retries": {
            k.removeprefix("retry:"): v for k, v in counters.items() if k.startswith("retry:")
        },
        "errors": errors,
        "peak_rss_mb": measurement.workers[0].peak_rss_bytes / MB if measurement.workers else None,
    }


def schedule(databases: list[Database], ops: int) -> Iterator[tuple[Database, CellSpec]]:
    """The runs of one repetition: per database, shape and strategy, every implementation
    right after the other (so that they are compared under the same conditions)."""
    for database in databases:
        for accounts in SHAPES.values():
            for strategy in STRATEGIES:
                for implementation in IMPLEMENTATIONS[database.backend]:
                    yield (
                        database,
                        CellSpec(
                            backend=database.backend,
                            implementation=implementation,
                            strategy=strategy,
                            accounts=accounts,
                            ops=ops,
                            workers=PRIMITIVE_WORKERS,
                            table=database.table.name,
                            database_url=database.url,
                        ),
                    )


def describe(record: dict[str, Any]) -> str:
    """A progress line for one run."""
    rate, cpu = record["transfers_per_s"], record["client_us_per_op"]
    outcome = "ok" if record["ok"] else "FAILED: " + "; ".join(record["problems"])
    return (
        f"{record['backend']}, {SHAPE_LABELS[record['shape']]}, "
        f"{STRATEGIES[record['strategy']]}, {record['implementation']}: "
        f"{f'{rate:,.0f} transfers/s' if rate else '-'}, "
        f"{f'{cpu:,.0f} µs client CPU/op' if cpu else '-'}, {outcome}"
    )


async def primitives_section(ops: int, reps: int, patience: float) -> dict[str, Any]:
    """Every cell (database x shape x strategy x implementation) once per repetition,
    interleaved; then medians, ratios and targets. A PostgreSQL server that cannot be
    reached is reported as skipped. Before each run the host gets up to ``patience``
    seconds to become quiet."""
    databases: list[Database] = []
    skipped: dict[str, str] = {}
    for backend in IMPLEMENTATIONS:
        try:
            databases.append(await _open(backend))
        except Exception as exc:
            if backend == "mariadb":
                raise
            skipped[backend] = f"not reachable at {BACKEND_URLS[backend]}: {exc}"
            progress(f"[primitives] {backend} skipped: {skipped[backend]}")
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(1, reps + 1):
            for database, spec in schedule(databases, ops):
                record = await measure_run(database, spec, patience)
                record["rep"] = rep
                runs.append(record)
                progress(f"[primitives rep {rep}/{reps}] {describe(record)}")
    finally:
        for database in databases:
            await database.table.drop()
            await database.engine.dispose()
    versions = {d.backend: d.version for d in databases}
    return summarise(runs, ops=ops, reps=reps, versions=versions, skipped=skipped)
