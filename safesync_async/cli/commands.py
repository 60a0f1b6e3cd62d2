"""The ``safesync`` Typer application. Each command parses its options, then runs one
coroutine with :func:`asyncio.run`; clients are closed in ``finally`` blocks and errors
from the library become a one-line message and an exit code (see ``docs/cli.md``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from ..queue.client import RedisClient
from ..queue.health import stream_health
from ..queue.outbox import Outbox
from ..queue.partitions import PartitionedStream, partition_status
from ..worker.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from . import render
from .base import (
    Command,
    Count,
    DeadLetterStream,
    Group,
    Settings,
    Stream,
    dead_letter_key_for,
    limit_option,
    redis_of,
    run_job,
    seconds_option,
    settings_of,
)
from .dead_letters import dead_letters_app
from .operations import (
    EXIT_FAILED,
    EXIT_OK,
    Thresholds,
    list_streams,
    open_engine,
    outbox_violations,
    pending_report,
    read_outbox_status,
    stream_violations,
)
from .partitions import render_partitions
from .worker import worker_command

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL", "app"]


app = typer.Typer(
    name="safesync",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
outbox_app = typer.Typer(cls=Group, help="The transactional outbox table.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(outbox_app, name="outbox")
app.command("worker", cls=Command)(worker_command)


@app.callback()
def _global_options(
    ctx: typer.Context,
    redis_url: Annotated[
        str, typer.Option("--redis", metavar="URL", envvar="SAFESYNC_REDIS_URL", help="Redis URL.")
    ] = DEFAULT_REDIS_URL,
    database_url: Annotated[
        str,
        typer.Option(
            "--database",
            metavar="URL",
            envvar="SAFESYNC_DATABASE_URL",
            help="Database URL (outbox commands).",
        ),
    ] = DEFAULT_DATABASE_URL,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document per result, nothing else.")
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", envvar="SAFESYNC_REDIS_CLUSTER", help="The Redis URL names a cluster node."
        ),
    ] = False,
) -> None:
    """Inspect safesync_async streams, consumer groups, dead letters and outboxes."""
    ctx.obj = Settings(redis_url, database_url, as_json, cluster)


# -- safesync streams --------------------------------------------------------------


@app.command("streams", cls=Command)
def streams_command(
    ctx: typer.Context,
    pattern: Annotated[str, typer.Option(metavar="GLOB", help="Only keys matching GLOB.")] = "*",
) -> None:
    """List streams with their length, groups, pending entries and highest lag."""

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            render.streams(out, await list_streams(redis, pattern))
        return EXIT_OK

    run_job(ctx, job)


# -- safesync status ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StatusOptions:
    stream: str
    dead_letter_stream: str
    dead_letter_override: str | None  # None: the default, and old dead letters are counted
    limits: Thresholds
    idle_after_ms: int


async def _check_status(out: render.Output, redis: RedisClient, options: _StatusOptions) -> int:
    """One health report; EXIT_FAILED if a threshold is exceeded."""
    health = await stream_health(
        redis, options.stream, dead_letter_stream=options.dead_letter_override
    )
    problems = stream_violations(health, options.limits)
    render.status(
        out,
        health,
        dead_letter_stream=options.dead_letter_stream,
        problems=problems,
        idle_after_ms=options.idle_after_ms,
    )
    return EXIT_FAILED if problems else EXIT_OK


async def _repeat(
    once: Callable[[int], Awaitable[int]], every: float | None, rounds: int | None
) -> int:
    """Run ``once(0)``; with ``every``, run ``once(1)``, ``once(2)``... every ``every``
    seconds, ``rounds`` times in all (until interrupted when None). Returns the last
    round's exit code."""
    done = 0
    while True:
        code = await once(done)
        done += 1
        if every is None or (rounds is not None and done >= rounds):
            return code
        await asyncio.sleep(every)


@app.command(cls=Command)
def status(
    ctx: typer.Context,
    stream: Stream,
    dead_letter_stream: DeadLetterStream = None,
    watch: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            metavar="SECONDS",
            help="Repeat every SECONDS until Ctrl-C.",
            show_default=False,
        ),
    ] = None,
    max_lag: Annotated[int | None, limit_option("Unhealthy if a group's lag is above N.")] = None,
    max_pending: Annotated[
        int | None, limit_option("Unhealthy if a group has more than N pending entries.")
    ] = None,
    max_pending_age: Annotated[
        float | None, seconds_option("Unhealthy if a group's oldest pending entry is older.")
    ] = None,
    max_deliveries: Annotated[
        int | None, limit_option("Unhealthy if a pending entry was delivered more than N times.")
    ] = None,
    max_dead_letters: Annotated[
        int | None, limit_option("Unhealthy if the dead-letter stream holds more than N entries.")
    ] = None,
    idle_after: Annotated[
        float,
        typer.Option(min=0, metavar="SECONDS", help="Flag consumers idle this long with entries."),
    ] = 60.0,
    iterations: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
) -> None:
    """Health of one stream: groups, consumers and dead letters.

    Shows the length, per group the lag, pending entries, oldest pending age and highest
    delivery count, per consumer its pending entries and idle time (idle consumers
    holding entries are flagged), and the dead letters. Exits 1 if a threshold is
    exceeded, 0 otherwise: usable as a health probe.
    """
    options = _StatusOptions(
        stream,
        dead_letter_key_for(stream, dead_letter_stream),
        dead_letter_stream,
        Thresholds(max_lag, max_pending, max_pending_age, max_deliveries, max_dead_letters),
        int(idle_after * 1000),
    )

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:

            async def once(round_number: int) -> int:
                render.watch_header(out, round_number, watching=watch is not None)
                return await _check_status(out, redis, options)

            return await _repeat(once, watch, iterations)

    run_job(ctx, job)


# -- safesync pending --------------------------------------------------------------


@app.command(cls=Command)
def pending(
    ctx: typer.Context,
    stream: Stream,
    group: Annotated[str, typer.Argument(metavar="GROUP", help="The consumer group.")],
    consumer: Annotated[
        str | None, typer.Option(help="Only this consumer's entries.", show_default=False)
    ] = None,
    count: Count = 100,
) -> None:
    """Pending entries of a group, oldest first: id, consumer, idle time, deliveries."""

    async def job(out: render.Output) -> int:
        async with redis_of(ctx) as redis:
            report = await pending_report(redis, stream, group, consumer=consumer, count=count)
        render.pending(out, report)
        return EXIT_OK

    run_job(ctx, job)


# -- safesync partitions -----------------------------------------------------------


@app.command(cls=Command)
def partitions(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(metavar="STREAM", help="The partitioned stream's name.")],
    count: Annotated[int, typer.Argument(metavar="PARTITIONS", help="Its number of partitions.")],
    group: Annotated[str, typer.Argument(metavar="GROUP", help="The consumer group.")],
) -> None:
    """Partitions of a partitioned stream: owner, epoch, since when, lag, pending. Exits
    1 when a partition has no owner (normal for a moment during a rebalance)."""

    async def job(out: render.Output) -> int:
        layout = PartitionedStream(stream, count)
        async with redis_of(ctx) as redis:
            rows = await partition_status(redis, layout, group)
        render_partitions(out, stream, group, rows)
        return EXIT_FAILED if any(row.owner is None for row in rows) else EXIT_OK

    run_job(ctx, job)


# -- safesync outbox ---------------------------------------------------------------


@outbox_app.command("status", cls=Command)
def outbox_status(
    ctx: typer.Context,
    table: Annotated[str, typer.Option(metavar="NAME", help="The outbox table.")] = (
        "safesync_outbox"
    ),
    max_pending: Annotated[int | None, limit_option("Unhealthy above N pending rows.")] = None,
    max_pending_age: Annotated[
        float | None, seconds_option("Unhealthy if the oldest pending row is older.")
    ] = None,
) -> None:
    """Pending and sent rows of an outbox table.

    Shows the pending rows, the oldest pending row's age and the sent rows. Exits 1 if a
    threshold is exceeded, 4 if the table does not exist, 0 otherwise.
    """
    limits = Thresholds(max_pending=max_pending, max_pending_age_s=max_pending_age)

    async def job(out: render.Output) -> int:
        outbox = Outbox(table)
        async with open_engine(settings_of(ctx).database_url) as engine:
            state = await read_outbox_status(engine, outbox)
        problems = outbox_violations(state, limits)
        render.outbox_status(out, table, state, problems)
        return EXIT_FAILED if problems else EXIT_OK

    run_job(ctx, job)
