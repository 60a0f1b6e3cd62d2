"""``python -m bench``: run the sections, write the JSON and markdown results, print the
markdown."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import shlex
import signal
import sys
from typing import Any

import redis.asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from safesync_async import create_engine

from .consumer_bench import consumer_section
from .environment import describe
from .memory_bench import memory_section
from .overhead import overhead_section
from .primitives import primitives_section
from .report import render, targets
from .settings import (
    DATABASE_URL,
    FULL,
    PRIMITIVE_WORKERS,
    QUICK,
    REDIS_URL,
    RESULTS_DIR,
    Sizes,
)
from .stats import progress
from .workload import wait_for_purge

SECTIONS = ("consumer", "primitives", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke run (under 3 minutes)"
    )
    parser.add_argument(
        "--reps", type=int, help=f"interleaved repetitions (default {FULL.reps}; quick 1)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        help=f"messages per consumer run (default {FULL.messages:,}; quick {QUICK.messages:,})",
    )
    parser.add_argument(
        "--ops",
        type=int,
        help=f"transfers per primitives run (default {FULL.primitive_ops:,}; quick "
        f"{QUICK.primitive_ops:,})",
    )
    parser.add_argument("--only", choices=SECTIONS, help="run one section only")
    args = parser.parse_args(argv)
    for name in ("reps", "messages", "ops"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        messages=args.messages or base.messages,
        reps=args.reps or base.reps,
        primitive_ops=args.ops or base.primitive_ops,
        memory_backlog=base.memory_backlog,
        quiet_wait_seconds=base.quiet_wait_seconds,
    )


async def run(args: argparse.Namespace, started: datetime.datetime) -> dict[str, Any]:
    sizes = sizes_for(args)
    wanted = (args.only,) if args.only else SECTIONS
    engine = create_async_engine(DATABASE_URL, pool_size=2)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    results: dict[str, Any] = {
        "started_at": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "sizes": dataclasses.asdict(sizes),
    }
    try:
        results["environment"] = await describe(engine, client)
        if "consumer" in wanted:
            results["consumer"] = await consumer_section(
                engine, client, sizes.messages, sizes.reps, sizes.quiet_wait_seconds
            )
        if "primitives" in wanted:
            await wait_for_purge(engine)
            results["primitives"] = await primitives_section(
                sizes.primitive_ops, sizes.reps, sizes.quiet_wait_seconds
            )
            await wait_for_purge(engine)
            primitives_engine = _primitives_engine()
            try:
                results["overhead"] = await overhead_section(
                    primitives_engine, sizes.primitive_ops, sizes.reps, sizes.quiet_wait_seconds
                )
            finally:
                await primitives_engine.dispose()
        if "memory" in wanted:
            await wait_for_purge(engine)
            results["memory"] = await memory_section(
                engine, client, sizes.memory_backlog, sizes.quiet_wait_seconds
            )
    finally:
        await client.aclose()
        await engine.dispose()
    results["finished_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    results["targets"] = targets(results)
    return results


def _primitives_engine() -> AsyncEngine:
    """The engine of the DbSession overhead section: the library's recommended one, one
    connection per worker."""
    return create_engine(DATABASE_URL, pool_size=PRIMITIVE_WORKERS, max_overflow=0)


def verification_failures(results: dict[str, Any]) -> int:
    """Runs whose results were wrong (money lost, entries left pending, counters off)."""
    failed = 0
    for runs in (results.get("consumer") or {}).get("runs", {}).values():
        failed += sum(not run["ok"] for run in runs)
    failed += sum(not r["ok"] for r in (results.get("primitives") or {}).get("runs", []))
    failed += sum(not r["ok"] for r in (results.get("overhead") or {}).get("runs", []))
    memory = results.get("memory")
    return failed + (0 if not memory or memory["run"]["ok"] else 1)


async def run_until_terminated(
    args: argparse.Namespace, started: datetime.datetime
) -> dict[str, Any]:
    """:func:`run`, cancelled by SIGTERM as by Ctrl-C, so that the workers are stopped and
    the run's tables and streams are dropped either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(args, started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    progress(f"benchmark started {started:%Y-%m-%d %H:%M:%S} UTC")
    try:
        results = asyncio.run(run_until_terminated(args, started))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted: workers stopped, this run's tables and streams dropped")
        return 130
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (RESULTS_DIR / "latest.md").write_text(markdown)
    print(markdown)
    progress(f"results: bench/results/{stamp}.json and bench/results/latest.md")
    failed = verification_failures(results)
    if failed:
        progress(f"{failed} run(s) FAILED verification")
    return 1 if failed else 0
