"""The ``safesync`` Typer application. Each command parses its options, then runs one
coroutine with :func:`asyncio.run`; clients are closed in ``finally`` blocks and errors
from the library become a one-line message and an exit code (see ``docs/cli.md``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigurationError, SafeSyncError
from ..queue.client import RedisClient
from ..queue.health import stream_health
from ..queue.keys import dead_letter_key
from ..queue.outbox import Outbox
from ..queue.partitions import PartitionedStream, partition_status
from ..worker.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from . import render
from .operations import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    Letter,
    Thresholds,
    count_letters,
    delete_letters,
    exit_code_for,
    find_letters,
    is_entry_id,
    list_streams,
    open_engine,
    open_redis,
    outbox_violations,
    pending_report,
    plan_replay,
    read_letters,
    read_outbox_status,
    replay,
    stream_violations,
)
from .partitions import render_partitions
from .worker import worker_command

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL", "app"]


def _without_flag_types(params: list[Any]) -> list[Any]:
    """Flags take no value, so help shows none for them: recent typer versions print a
    type (``<bool>``) next to every flag, ``--help`` included, unless a metavar is set."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """A command group whose help shows flags without a value type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


class _Command(TyperCommand):
    """A command whose help shows flags without a value type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


app = typer.Typer(
    name="safesync",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_letters_app = typer.Typer(
    cls=_Group, help="List, show, replay and purge dead letters.", no_args_is_help=True
)
outbox_app = typer.Typer(cls=_Group, help="The transactional outbox table.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(outbox_app, name="outbox")
app.command("worker", cls=_Command)(worker_command)


@dataclass(frozen=True, slots=True)
class Settings:
    """The global options, shared with every command through the click context."""

    redis_url: str
    database_url: str
    as_json: bool
    cluster: bool = False


Job = Callable[[render.Output], Coroutine[Any, Any, int]]


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:
        raise RuntimeError("safesync commands must run through the safesync app")
    return settings


def _redis(ctx: typer.Context) -> AbstractAsyncContextManager[RedisClient]:
    """The Redis client of the global options (a cluster client with ``--cluster``)."""
    settings = _settings(ctx)
    return open_redis(settings.redis_url, cluster=settings.cluster)


def _run(ctx: typer.Context, job: Job) -> None:
    """Run a command's coroutine and exit with its code; errors become one line."""
    out = render.Output(_settings(ctx).as_json)
    try:
        code = asyncio.run(job(out))
    except CliError as exc:
        code = _report(out, exc, exc.exit_code)
    except SafeSyncError as exc:
        code = _report(out, exc, exit_code_for(exc))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


def _report(out: render.Output, exc: Exception, code: int) -> int:
    out.error(" ".join(str(exc).split()) or type(exc).__name__)
    return code


def _entry_id(value: str) -> str:
    if not is_entry_id(value):
        raise typer.BadParameter(f"{value!r} is not a stream entry id (like 1718000000000-0)")
    return value


def _entry_ids(values: list[str] | None) -> list[str]:
    return [_entry_id(value) for value in values or ()]


def _dead_letter_key(stream: str, override: str | None) -> str:
    if override:
        return override
    try:
        return dead_letter_key(stream)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="STREAM") from None


# -- shared option types -----------------------------------------------------------

Stream = Annotated[
    str, typer.Argument(metavar="STREAM", help="The stream key.", show_default=False)
]
DeadLetterStream = Annotated[
    str | None,
    typer.Option(
        "--dead-letter-stream",
        metavar="KEY",
        help="The dead-letter stream (default: {STREAM}:dead, or STREAM:dead when STREAM "
        "has a hash tag).",
        show_default=False,
    ),
]
EntryIds = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ENTRY_ID",
        help="Dead-letter entry ids.",
        callback=_entry_ids,
        show_default=False,
    ),
]
AllFlag = Annotated[bool, typer.Option("--all", help="Every entry of the dead-letter stream.")]
YesFlag = Annotated[bool, typer.Option("--yes", help="Really do it (else: only show what).")]
Count = Annotated[int, typer.Option(min=1, metavar="N", help="Show at most N entries.")]


def _limit(help_text: str) -> Any:
    """An optional threshold: a count (``N``) the checked figure may not exceed."""
    return typer.Option(min=0, metavar="N", help=help_text, show_default=False)


def _seconds(help_text: str) -> Any:
    """An optional threshold in seconds."""
    return typer.Option(min=0, metavar="SECONDS", help=help_text, show_default=False)


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


@app.command("streams", cls=_Command)
def streams_command(
    ctx: typer.Context,
    pattern: Annotated[str, typer.Option(metavar="GLOB", help="Only keys matching GLOB.")] = "*",
) -> None:
    """List streams with their length, groups, pending entries and highest lag."""

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:
            render.streams(out, await list_streams(redis, pattern))
        return EXIT_OK

    _run(ctx, job)


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


@app.command(cls=_Command)
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
    max_lag: Annotated[int | None, _limit("Unhealthy if a group's lag is above N.")] = None,
    max_pending: Annotated[
        int | None, _limit("Unhealthy if a group has more than N pending entries.")
    ] = None,
    max_pending_age: Annotated[
        float | None, _seconds("Unhealthy if a group's oldest pending entry is older.")
    ] = None,
    max_deliveries: Annotated[
        int | None, _limit("Unhealthy if a pending entry was delivered more than N times.")
    ] = None,
    max_dead_letters: Annotated[
        int | None, _limit("Unhealthy if the dead-letter stream holds more than N entries.")
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
        _dead_letter_key(stream, dead_letter_stream),
        dead_letter_stream,
        Thresholds(max_lag, max_pending, max_pending_age, max_deliveries, max_dead_letters),
        int(idle_after * 1000),
    )

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:

            async def once(round_number: int) -> int:
                render.watch_header(out, round_number, watching=watch is not None)
                return await _check_status(out, redis, options)

            return await _repeat(once, watch, iterations)

    _run(ctx, job)


# -- safesync pending --------------------------------------------------------------


@app.command(cls=_Command)
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
        async with _redis(ctx) as redis:
            report = await pending_report(redis, stream, group, consumer=consumer, count=count)
        render.pending(out, report)
        return EXIT_OK

    _run(ctx, job)


# -- safesync partitions -----------------------------------------------------------


@app.command(cls=_Command)
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
        async with _redis(ctx) as redis:
            rows = await partition_status(redis, layout, group)
        render_partitions(out, stream, group, rows)
        return EXIT_FAILED if any(row.owner is None for row in rows) else EXIT_OK

    _run(ctx, job)


# -- safesync dead-letters ---------------------------------------------------------


@dead_letters_app.command("list", cls=_Command)
def list_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    count: Count = 50,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """The oldest dead letters of a stream: reason, deliveries, error."""
    key = _dead_letter_key(stream, dead_letter_stream)

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:
            total = await count_letters(redis, key)
            letters = await read_letters(redis, key, count)
        render.dead_letters(out, letters, dead_letter_stream=key, total=total)
        return EXIT_OK

    _run(ctx, job)


@dead_letters_app.command("show", cls=_Command)
def show_dead_letter(
    ctx: typer.Context,
    stream: Stream,
    entry_id: Annotated[
        str, typer.Argument(metavar="ENTRY_ID", help="The dead letter's id.", callback=_entry_id)
    ],
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """One dead letter: metadata and original fields (text when UTF-8, else base64)."""
    key = _dead_letter_key(stream, dead_letter_stream)

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:
            [letter] = await find_letters(redis, key, [entry_id])
        render.dead_letter(out, letter, dead_letter_stream=key)
        return EXIT_OK

    _run(ctx, job)


def _selection(entry_ids: list[str], all_: bool) -> list[str] | None:
    """The ids to act on (None: all); exactly one of ENTRY_IDs and --all is required."""
    if bool(entry_ids) == all_:
        raise typer.BadParameter("give ENTRY_IDs or --all (not both)", param_hint="ENTRY_ID")
    return None if all_ else entry_ids


async def _select(redis: RedisClient, key: str, ids: list[str] | None) -> list[Letter]:
    if ids is None:
        return await read_letters(redis, key, None)
    return await find_letters(redis, key, ids)


def _change_exit_code(rows: list[dict[str, str]], applied: bool) -> int:
    """A dry run that would change something exits 1, so scripts cannot mistake it."""
    return EXIT_FAILED if rows and not applied else EXIT_OK


@dead_letters_app.command("replay", cls=_Command)
def replay_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    entry_ids: EntryIds = None,
    all_: AllFlag = False,
    yes: YesFlag = False,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """Put dead letters back on the stream they came from.

    Re-adds each dead letter's original fields to its stream, then deletes it from the
    dead-letter stream. Without --yes: only show what would happen, exit 1.
    """
    key = _dead_letter_key(stream, dead_letter_stream)
    ids = _selection(entry_ids or [], all_)

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:
            plan = plan_replay(await _select(redis, key, ids), stream, key)
            rows = [{"id": letter.id, "stream": target} for letter, target in plan.moves]
            if yes:
                done = await replay(redis, key, plan)
                rows = [{"id": r.id, "stream": r.stream, "new_id": r.new_id} for r in done]
        skipped = [letter.id for letter in plan.skipped]
        render.changes(
            out, action="replay", applied=yes, dead_letter_stream=key, rows=rows, skipped=skipped
        )
        return _change_exit_code(rows, yes)

    _run(ctx, job)


@dead_letters_app.command("purge", cls=_Command)
def purge_dead_letters(
    ctx: typer.Context,
    stream: Stream,
    entry_ids: EntryIds = None,
    all_: AllFlag = False,
    yes: YesFlag = False,
    dead_letter_stream: DeadLetterStream = None,
) -> None:
    """Delete dead letters for good.

    Without --yes: only show what would be deleted, exit 1.
    """
    key = _dead_letter_key(stream, dead_letter_stream)
    ids = _selection(entry_ids or [], all_)

    async def job(out: render.Output) -> int:
        async with _redis(ctx) as redis:
            letters = await _select(redis, key, ids)
            if yes:
                await delete_letters(redis, key, [letter.id for letter in letters])
        rows = [{"id": letter.id, "reason": _reason(letter)} for letter in letters]
        render.changes(out, action="purge", applied=yes, dead_letter_stream=key, rows=rows)
        return _change_exit_code(rows, yes)

    _run(ctx, job)


def _reason(letter: Letter) -> str:
    return letter.meta.reason.value if letter.meta else "?"


# -- safesync outbox ---------------------------------------------------------------


@outbox_app.command("status", cls=_Command)
def outbox_status(
    ctx: typer.Context,
    table: Annotated[str, typer.Option(metavar="NAME", help="The outbox table.")] = (
        "safesync_outbox"
    ),
    max_pending: Annotated[int | None, _limit("Unhealthy above N pending rows.")] = None,
    max_pending_age: Annotated[
        float | None, _seconds("Unhealthy if the oldest pending row is older.")
    ] = None,
) -> None:
    """Pending and sent rows of an outbox table.

    Shows the pending rows, the oldest pending row's age and the sent rows. Exits 1 if a
    threshold is exceeded, 4 if the table does not exist, 0 otherwise.
    """
    limits = Thresholds(max_pending=max_pending, max_pending_age_s=max_pending_age)

    async def job(out: render.Output) -> int:
        outbox = Outbox(table)
        async with open_engine(_settings(ctx).database_url) as engine:
            state = await read_outbox_status(engine, outbox)
        problems = outbox_violations(state, limits)
        render.outbox_status(out, table, state, problems)
        return EXIT_FAILED if problems else EXIT_OK

    _run(ctx, job)
