"""What the ``safesync`` commands do, free of any terminal concern: open clients, summarise
streams, check health thresholds, read, replay and purge dead letters.

Errors are the library's (:mod:`safesync_async.errors`) or :class:`CliError`; the
command layer turns both into a one-line message and an exit code.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import sqlalchemy as sa
from redis.exceptions import RedisClusterException
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db.engine import create_engine
from ..errors import (
    ConfigurationError,
    ConsumerGroupMissingError,
    DatabaseError,
    DatabaseUnavailableError,
    MessageDecodeError,
    SafeSyncError,
)
from ..queue._errors import redis_errors
from ..queue._streams import GroupStream, PendingEntry, parse_groups
from ..queue.client import RedisClient, create_redis_client
from ..queue.dead_letters import PREFIX, DeadLetter, DeadLetterReason, parse_dead_letter
from ..queue.health import ConsumerHealth, GroupHealth, StreamHealth
from ..queue.outbox import Outbox, OutboxStatus
from ..queue.producer import QueueProducer

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NO_TABLE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Letter",
    "PendingReport",
    "ReplayPlan",
    "Replayed",
    "StreamSummary",
    "Thresholds",
    "count_letters",
    "delete_letters",
    "exceeded",
    "exit_code_for",
    "find_letters",
    "holds_idle_entries",
    "is_entry_id",
    "list_streams",
    "open_engine",
    "open_redis",
    "outbox_violations",
    "pending_report",
    "plan_replay",
    "read_letters",
    "read_outbox_status",
    "replay",
    "stream_violations",
    "table_exists",
]

EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, something asked for is missing, or --yes was not given
EXIT_USAGE = 2  # bad arguments or URLs (also click's own usage errors)
EXIT_ERROR = 3  # Redis or the database failed or could not be reached
EXIT_NO_TABLE = 4  # the database is reachable but lacks the table the command reads
EXIT_INTERRUPTED = 130  # Ctrl-C

_ENTRY_ID = re.compile(r"\d+-\d+")
_PAGE = 1_000
_CLI_CONSUMER = "safesync-cli"  # never reads: GroupStream needs a consumer name


class CliError(Exception):
    """A failure the command reports as one line, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(exc: SafeSyncError) -> int:
    """The exit code for a library error: bad input 2, a missing group 1, otherwise 3."""
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, ConsumerGroupMissingError):
        return EXIT_FAILED
    return EXIT_ERROR


def is_entry_id(value: str) -> bool:
    """True for a complete stream entry id such as ``1718000000000-0``."""
    return _ENTRY_ID.fullmatch(value) is not None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- clients -----------------------------------------------------------------------


@asynccontextmanager
async def open_redis(url: str, *, cluster: bool = False) -> AsyncIterator[RedisClient]:
    """A client from :func:`create_redis_client` (a cluster client with ``cluster``),
    closed on exit."""
    try:
        client = create_redis_client(url, cluster=cluster)
    except (ValueError, RedisClusterException) as exc:
        raise CliError(f"invalid Redis URL: {exc}", EXIT_USAGE) from exc
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def open_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine from :func:`create_engine` with one connection, disposed on exit."""
    try:
        engine = create_engine(url, pool_size=1, max_overflow=0)
    except (ValueError, ImportError, sa_exc.ArgumentError) as exc:
        raise CliError(
            f"invalid database URL ({exc}), e.g. mysql+asyncmy://user:password@host/db",
            EXIT_USAGE,
        ) from exc
    try:
        yield engine
    finally:
        await engine.dispose()


# -- outbox ------------------------------------------------------------------------


async def table_exists(engine: AsyncEngine, table: sa.Table) -> bool | None:
    """Whether the database has ``table`` (None: it could not be told)."""

    def has_table(connection: sa.Connection) -> bool:
        return sa.inspect(connection).has_table(table.name, schema=table.schema)

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(has_table)
    except (sa_exc.SQLAlchemyError, OSError):
        return None


async def read_outbox_status(engine: AsyncEngine, outbox: Outbox) -> OutboxStatus:
    """``outbox.status(engine)``; a CliError with EXIT_NO_TABLE, saying how to create
    the table, when the query failed because the table does not exist."""
    try:
        return await outbox.status(engine)
    except DatabaseError as exc:
        if isinstance(exc, DatabaseUnavailableError):
            raise
        if await table_exists(engine, outbox.table) is not False:
            raise
        name = outbox.name
        raise CliError(
            f"the outbox table {name!r} does not exist in this database. Create it once "
            f"with `await Outbox({name!r}).create_table(engine)`, or put the statements of "
            f"`Outbox({name!r}).create_sql(engine)` in your migrations; or name another "
            "table with --table",
            EXIT_NO_TABLE,
        ) from exc


# -- streams -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """One stream as ``safesync streams`` lists it."""

    stream: str
    length: int
    groups: int
    pending: int
    max_lag: int | None  # None: no group, or some group's lag is unknown


async def list_streams(redis: RedisClient, pattern: str) -> list[StreamSummary]:
    """Every stream key matching ``pattern`` (SCAN ... TYPE stream), sorted by name."""
    with redis_errors("SCAN"):
        keys = {key async for key in redis.scan_iter(match=pattern, count=_PAGE, _type="stream")}
    summaries = [await _summarise(redis, key) for key in sorted(keys)]
    return [s for s in summaries if s is not None]


async def _summarise(redis: RedisClient, key: bytes) -> StreamSummary | None:
    """Length and group figures of one stream; None if it vanished since the scan."""
    name = _text(key)
    with redis_errors("XINFO GROUPS", name):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.xinfo_groups(key)
            length, groups = await pipe.execute(raise_on_error=False)
    if isinstance(groups, Exception):
        return None
    infos = parse_groups(groups)
    lags = [group.lag for group in infos]
    known = [lag for lag in lags if lag is not None]
    return StreamSummary(
        stream=name,
        length=int(length),
        groups=len(infos),
        pending=sum(group.pending for group in infos),
        max_lag=max(known) if known and len(known) == len(lags) else None,
    )


# -- health thresholds -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits a healthy stream stays within; ``None`` means not checked."""

    max_lag: int | None = None
    max_pending: int | None = None
    max_pending_age_s: float | None = None
    max_deliveries: int | None = None
    max_dead_letters: int | None = None


def exceeded(label: str, value: float | None, limit: float | None) -> list[str]:
    """``["<label> <value> > <limit>"]`` if ``value`` is known and above ``limit``."""
    if value is None or limit is None or value <= limit:
        return []
    return [f"{label} {_number(value)} > {_number(limit)}"]


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def _group_violations(group: GroupHealth, limits: Thresholds) -> Iterator[str]:
    checks: tuple[tuple[str, float | None, float | None], ...] = (
        ("lag", group.lag, limits.max_lag),
        ("pending", group.pending, limits.max_pending),
        ("oldest pending age (s)", group.oldest_pending_age_s, limits.max_pending_age_s),
        ("delivery count", group.max_delivery_count, limits.max_deliveries),
    )
    for label, value, limit in checks:
        for problem in exceeded(label, value, limit):
            yield f"group {group.name!r}: {problem}"


def stream_violations(health: StreamHealth, limits: Thresholds) -> list[str]:
    """Every threshold the stream exceeds, one readable line each (empty: healthy).

    A group whose lag the server cannot tell (``None``) does not fail ``max_lag``."""
    problems = [line for group in health.groups for line in _group_violations(group, limits)]
    return problems + exceeded("dead letters", health.dead_letters, limits.max_dead_letters)


def outbox_violations(state: OutboxStatus, limits: Thresholds) -> list[str]:
    """The outbox thresholds exceeded (``max_pending``, ``max_pending_age_s``)."""
    return exceeded("pending", state.pending, limits.max_pending) + exceeded(
        "oldest pending age (s)", state.oldest_pending_age_s, limits.max_pending_age_s
    )


def holds_idle_entries(consumer: ConsumerHealth, idle_after_ms: int) -> bool:
    """True for a consumer holding pending entries that has been idle ``idle_after_ms``."""
    return consumer.pending > 0 and consumer.idle_ms >= idle_after_ms


# -- pending entries ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingReport:
    """Pending entries of a group (optionally one consumer's), oldest first."""

    stream: str
    group: str
    consumer: str | None
    total: int  # all pending entries of the group (or of the consumer)
    entries: list[PendingEntry]


async def pending_report(
    redis: RedisClient, stream: str, group: str, *, consumer: str | None, count: int
) -> PendingReport:
    """The ``count`` oldest pending entries and the total (XPENDING)."""
    with redis_errors("XPENDING", stream):
        summary = await redis.xpending(stream, group)
    if consumer is None:
        total = int(summary["pending"])
    else:
        by_consumer = {_text(c["name"]): int(c["pending"]) for c in summary["consumers"] or ()}
        total = by_consumer.get(consumer, 0)
    reader = GroupStream(redis, stream, group, _CLI_CONSUMER)
    entries = await reader.pending(count, consumer=consumer)
    return PendingReport(stream, group, consumer, total, entries)


# -- dead letters ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Letter:
    """An entry of a dead-letter stream. ``meta`` is None when its ``dlq:`` fields are
    missing or malformed (an entry some other program wrote there)."""

    id: str
    meta: DeadLetter | None
    fields: dict[bytes, bytes]  # the original entry's fields, without the dlq: metadata

    @classmethod
    def from_entry(cls, entry_id: object, fields: Mapping[bytes, bytes]) -> Letter:
        """Parse one XRANGE row, tolerating entries without valid metadata."""
        letter_id = _text(entry_id)
        try:
            meta: DeadLetter | None = parse_dead_letter(letter_id, fields)
        except MessageDecodeError:
            meta = None
        original = {k: v for k, v in fields.items() if not k.startswith(PREFIX)}
        return cls(letter_id, meta, original)

    @property
    def replayable(self) -> bool:
        """False for tombstones (entries deleted while pending: nothing to replay) and
        for entries without dead-letter metadata (their origin is unknown)."""
        meta = self.meta
        return (
            meta is not None and meta.reason is not DeadLetterReason.DELETED and bool(self.fields)
        )


async def count_letters(redis: RedisClient, dead_letter_stream: str) -> int:
    """How many entries the dead-letter stream holds."""
    with redis_errors("XLEN", dead_letter_stream):
        return int(await redis.xlen(dead_letter_stream))


_Row = tuple[bytes, dict[bytes, bytes]]


async def _xrange(redis: RedisClient, key: str, start: str, count: int) -> list[_Row]:
    with redis_errors("XRANGE", key):
        rows = await redis.xrange(key, min=start, count=count)
    return cast(list[_Row], rows or [])


async def read_letters(
    redis: RedisClient, dead_letter_stream: str, limit: int | None
) -> list[Letter]:
    """The oldest ``limit`` dead letters (all of them for ``None``), read in pages."""
    letters: list[Letter] = []
    start = "-"
    while limit is None or len(letters) < limit:
        page = _PAGE if limit is None else min(_PAGE, limit - len(letters))
        rows = await _xrange(redis, dead_letter_stream, start, page)
        letters.extend(Letter.from_entry(entry_id, fields) for entry_id, fields in rows)
        if len(rows) < page:
            break
        start = "(" + _text(rows[-1][0])
    return letters


async def find_letters(
    redis: RedisClient, dead_letter_stream: str, ids: Sequence[str]
) -> list[Letter]:
    """The dead letters with these ids, in the order given; CliError if any is missing."""
    wanted = list(dict.fromkeys(ids))
    with redis_errors("XRANGE", dead_letter_stream):
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in wanted:
                pipe.xrange(dead_letter_stream, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
    found = {_text(i): Letter.from_entry(i, f) for rows in replies for i, f in rows}
    missing = [entry_id for entry_id in wanted if entry_id not in found]
    if missing:
        raise CliError(f"not in dead-letter stream {dead_letter_stream!r}: {', '.join(missing)}")
    return [found[entry_id] for entry_id in wanted]


async def delete_letters(redis: RedisClient, dead_letter_stream: str, ids: Sequence[str]) -> int:
    """XDEL the ids from the dead-letter stream; returns how many were deleted."""
    deleted = 0
    for start in range(0, len(ids), _PAGE):
        with redis_errors("XDEL", dead_letter_stream):
            deleted += int(await redis.xdel(dead_letter_stream, *ids[start : start + _PAGE]))
    return deleted


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Which dead letters go back to which stream, and which cannot be replayed."""

    moves: list[tuple[Letter, str]]  # a dead letter and the stream it is re-added to
    skipped: list[Letter]  # tombstones and entries without dead-letter metadata


@dataclass(frozen=True, slots=True)
class Replayed:
    """A dead letter re-added to its stream under a new id (and deleted from the DLQ)."""

    id: str
    stream: str
    new_id: str


def plan_replay(letters: Sequence[Letter], stream: str, dead_letter_stream: str) -> ReplayPlan:
    """Send each letter back to the stream it was dead-lettered from (``stream`` when
    the metadata does not name one); letters that are not replayable are skipped."""
    moves: list[tuple[Letter, str]] = []
    for letter in letters:
        if letter.meta is None or not letter.replayable:
            continue
        target = letter.meta.original_stream or stream
        if target == dead_letter_stream:
            raise CliError(f"dead letter {letter.id} names the dead-letter stream as its origin")
        moves.append((letter, target))
    return ReplayPlan(moves, [letter for letter in letters if not letter.replayable])


async def replay(redis: RedisClient, dead_letter_stream: str, plan: ReplayPlan) -> list[Replayed]:
    """Re-add the original fields (pipelined, per target stream), then delete the dead
    letters. At least once: if the deletion fails, a later replay adds them again."""
    by_target: dict[str, list[Letter]] = {}
    for letter, target in plan.moves:
        by_target.setdefault(target, []).append(letter)
    done: list[Replayed] = []
    for target, letters in by_target.items():
        producer = QueueProducer(redis, target, registry=None)
        new_ids = await producer.add_fields(letter.fields for letter in letters)
        await delete_letters(redis, dead_letter_stream, [letter.id for letter in letters])
        done += [
            Replayed(letter.id, target, new_id)
            for letter, new_id in zip(letters, new_ids, strict=True)
        ]
    return done
