"""Delivery accounting for fault scenarios: what was sent, what the database applied, what
went to the dead-letter stream and what is still pending, counted from the servers.

A scenario publishes messages whose *keys* it knows (the inbox's message key:
``key:<idempotency key>`` or ``id:<entry id>``), runs consumers that write one row per
applied effect into an effects table (:data:`EFFECTS`), injects its faults, then calls
:func:`count_delivery`. Operations whose outcome is unknown (an XADD whose reply was lost)
are passed as ``unknown`` keys: they are counted apart, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine

from safesync_async import (
    DbSession,
    DeadLetter,
    DeadLetterReason,
    Inbox,
    QueueMessage,
    RedisClient,
    dead_letter_key,
    parse_dead_letter,
)

__all__ = [
    "EFFECTS",
    "DeliveryCounts",
    "add_entry",
    "count_delivery",
    "dead_letters",
    "message_key",
]

#: One row per applied effect; ``message_key`` is the inbox key, ``message_id`` the entry id.
EFFECTS = (
    "CREATE TABLE `{table}` (seq BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "message_id VARCHAR(40) NOT NULL, message_key VARCHAR(200) NOT NULL, n INT, "
    "KEY (message_key), KEY (message_id))"
)
#: The same table on PostgreSQL.
EFFECTS_POSTGRES = (
    "CREATE TABLE {table} (seq BIGSERIAL PRIMARY KEY, message_id VARCHAR(40) NOT NULL, "
    "message_key VARCHAR(200) NOT NULL, n INT)"
)

_PENDING_PAGE = 10_000


def effect_key(message: QueueMessage[Any]) -> str:
    """The inbox key of a message as text (``id:<entry id>`` or ``key:<key>``; bytes that
    are not UTF-8 escaped), as the test consumers write it into ``message_key``."""
    return Inbox.message_key(message).decode("utf-8", "backslashreplace")


def message_key(stream: str, group: str, entry_id: str, fields: Mapping[bytes, bytes]) -> str:
    """The inbox key of an entry (what the consumers write into ``message_key``)."""
    message: QueueMessage[None] = QueueMessage(
        id=entry_id, stream=stream, group=group, payload=None, fields=fields
    )
    return effect_key(message)


async def dead_letters(
    redis: RedisClient, stream: str, dead_letter_stream: str | None = None
) -> list[DeadLetter]:
    """Every entry of the dead-letter stream (:func:`dead_letter_key` by default), parsed."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(  # type: ignore[assignment]
        dead_letter_stream or dead_letter_key(stream)
    )
    return [parse_dead_letter(_text(entry_id), fields) for entry_id, fields in raw]


async def add_entry(redis: RedisClient, stream: str, fields: Mapping[bytes, bytes]) -> str:
    """XADD raw fields (poison, hand-made entries); the new entry's id."""
    return _text(await redis.xadd(stream, cast(Any, dict(fields))))


@dataclass(frozen=True)
class DeliveryCounts:
    """What happened to the messages of one scenario (see :func:`count_delivery`)."""

    sent: int
    applied: int  # distinct sent keys with at least one effect row
    effect_rows: int
    duplicated: int  # effect rows beyond the first per key
    lost: int  # sent, and neither applied, dead-lettered, reported deleted nor unknown
    unknown: int  # keys whose publication outcome is unknown (counted apart)
    unknown_applied: int  # of those, how many turned out applied
    dead_lettered: Mapping[str, int]  # by reason, tombstones excluded
    dead_letter_duplicates: int  # dead-letter entries beyond the first per original entry
    reported_deleted: int  # tombstones (reason ``deleted``)
    left_pending: int  # XPENDING of the group (0 if the group is gone)
    applied_but_pending: int  # pending entries that already have an effect row
    unexpected: int  # effect keys that were neither sent nor unknown
    lost_keys: tuple[str, ...] = field(default=(), repr=False)

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    def row(self, **leading: int | float) -> dict[str, int | float]:
        """The figures for a reliability report row (``leading`` ones after *messages*)."""
        return {
            "messages": self.sent,
            **leading,
            "applied": self.applied,
            "lost": self.lost,
            "duplicate_effects": self.duplicated,
            "dead_lettered": self.dead_lettered_total,
            "unknown": self.unknown,
            "left_pending": self.left_pending,
            **({"reported_deleted": self.reported_deleted} if self.reported_deleted else {}),
        }


async def count_delivery(
    redis: RedisClient,
    engine: AsyncEngine,
    *,
    stream: str,
    group: str,
    effects: str,
    sent: Iterable[str],
    unknown: Iterable[str] = (),
    dead_letter_stream: str | None = None,
) -> DeliveryCounts:
    """Count, from Redis and the database, what became of the ``sent`` message keys."""
    sent_keys = set(sent)
    unknown_keys = set(unknown) - sent_keys
    async with DbSession(engine, registry=None) as session:
        rows = await session.fetch_all(
            f"SELECT message_key, message_id, COUNT(*) AS n FROM {effects} "
            "GROUP BY message_key, message_id"
        )
    per_key: Counter[str] = Counter()
    applied_ids: set[str] = set()
    for row in rows:
        per_key[str(row["message_key"])] += int(row["n"])
        applied_ids.add(str(row["message_id"]))

    letters = [
        letter
        for letter in await dead_letters(redis, stream, dead_letter_stream)
        if letter.original_stream == stream and letter.group == group
    ]
    deleted_keys = set()
    reasons: Counter[str] = Counter()
    lettered_keys = set()
    for letter in letters:
        key = message_key(stream, group, letter.original_id, letter.fields)
        if letter.reason is DeadLetterReason.DELETED:
            deleted_keys.add(key)
        else:
            lettered_keys.add(key)
            reasons[letter.reason.value] += 1
    distinct_letters = len({letter.original_id for letter in letters})

    pending_ids = await _pending_ids(redis, stream, group)
    accounted = set(per_key) | lettered_keys | deleted_keys | unknown_keys
    lost_keys = tuple(sorted(sent_keys - accounted))
    return DeliveryCounts(
        sent=len(sent_keys),
        applied=len(sent_keys & set(per_key)),
        effect_rows=sum(per_key.values()),
        duplicated=sum(per_key.values()) - len(per_key),
        lost=len(lost_keys),
        unknown=len(unknown_keys),
        unknown_applied=len(unknown_keys & set(per_key)),
        dead_lettered=dict(reasons),
        dead_letter_duplicates=len(letters) - distinct_letters,
        reported_deleted=len(deleted_keys),
        left_pending=len(pending_ids),
        applied_but_pending=len(pending_ids & applied_ids),
        unexpected=len(set(per_key) - sent_keys - unknown_keys),
        lost_keys=lost_keys,
    )


async def _pending_ids(redis: RedisClient, stream: str, group: str) -> set[str]:
    ids: set[str] = set()
    start = "-"
    while True:
        try:
            page: list[dict[str, Any]] = await redis.xpending_range(
                stream, group, start, "+", _PENDING_PAGE
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return ids  # the stream or the group is gone (Redis lost its data)
            raise
        ids.update(_text(entry["message_id"]) for entry in page)
        if len(page) < _PENDING_PAGE:
            return ids
        start = "(" + _text(page[-1]["message_id"])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
