"""Stream commands for one (stream, group, consumer), with response shapes normalised and
errors translated. No policy lives here: the consumer decides what to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from ..errors import QueueError
from .errors import redis_errors

__all__ = ["ClaimResult", "Delivery", "GroupStream", "PendingEntry"]

# Hand-back sets an entry's idle time this high (about 35 years) so any claimer takes it.
_HANDED_BACK_IDLE_MS = 2**40


@dataclass(frozen=True, slots=True)
class Delivery:
    """An entry delivered to this consumer, not decoded yet. Empty ``fields`` means the
    entry was deleted or trimmed while it was pending."""

    id: str
    fields: dict[bytes, bytes]
    delivery_count: int

    @property
    def size(self) -> int:
        return sum(len(k) + len(v) for k, v in self.fields.items())


@dataclass(frozen=True, slots=True)
class ClaimResult:
    next_cursor: str
    deliveries: list[Delivery]
    deleted_ids: list[str]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    id: str
    consumer: str
    idle_ms: int
    delivery_count: int


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """(id, fields) pairs from an entry list; ``None`` fields (Redis 6.2 deleted) become {}."""
    out = []
    for item in raw or ():
        entry_id, fields = item[0], item[1]
        if entry_id is None:
            continue
        out.append((_text(entry_id), dict(fields) if fields else {}))
    return out


def _read_response_entries(response: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Entries of a one-stream XREADGROUP reply, whatever the protocol/legacy setting:
    ``[[stream, entries]]`` (RESP2 shape), ``{stream: entries}`` or ``{stream: [entries]}``."""
    if not response:
        return []
    if isinstance(response, Mapping):
        value = next(iter(response.values()))
        if value and not isinstance(value[0][0], bytes | str):
            value = value[0]  # RESP3 with legacy shapes nests the entry list once more
        return _entries(value)
    return _entries(response[0][1])


class GroupStream:
    """Redis commands on ``stream`` as ``consumer`` of ``group``."""

    def __init__(self, redis: Redis, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer

    async def ensure_group(self, start_id: str) -> bool:
        """Create the group (and the stream); False if it already existed."""
        try:
            with redis_errors("XGROUP CREATE", self.stream):
                await self.redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except QueueError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        """Never-delivered entries (``>``); their delivery count is 1."""
        with redis_errors("XREADGROUP", self.stream):
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        return [Delivery(i, f, 1) for i, f in _read_response_entries(response)]

    async def read_own_pending(self, after_id: str, count: int) -> list[Delivery]:
        """This consumer's own pending entries with ids above ``after_id``."""
        with redis_errors("XREADGROUP (own pending)", self.stream):
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: after_id}, count=count
            )
        entries = _read_response_entries(response)
        counts = await self.delivery_counts([i for i, _ in entries])
        return [Delivery(i, f, counts.get(i, 1)) for i, f in entries]

    async def claim_idle(self, min_idle_ms: int, cursor: str, count: int) -> ClaimResult:
        """XAUTOCLAIM from ``cursor``: entries idle at least ``min_idle_ms``, any owner."""
        with redis_errors("XAUTOCLAIM", self.stream):
            response = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=cursor, count=count
            )
        next_cursor = _text(response[0])
        entries = _entries(response[1])
        deleted = [_text(i) for i in response[2]] if len(response) > 2 else []
        counts = await self.delivery_counts([i for i, _ in entries])
        return ClaimResult(
            next_cursor, [Delivery(i, f, counts.get(i, 1)) for i, f in entries], deleted
        )

    async def delivery_counts(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery counts of pending entries, one pipelined XPENDING per id."""
        if not ids:
            return {}
        with redis_errors("XPENDING", self.stream):
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
                replies = await pipe.execute()
        counts = {}
        for reply in replies:
            for row in reply:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def ack(self, ids: Sequence[str]) -> int:
        """XACK; returns how many were still pending (0 also when the group is gone)."""
        with redis_errors("XACK", self.stream):
            return int(await self.redis.xack(self.stream, self.group, *ids))

    async def dead_letter(
        self, dead_letter_stream: str, fields: Mapping[bytes, bytes], entry_id: str
    ) -> str:
        """Add ``fields`` to the dead-letter stream and ack the original, atomically
        (MULTI/EXEC: the dead letter is written before, and together with, the ack)."""
        with redis_errors("dead-letter XADD+XACK", self.stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_letter_stream, cast(Any, dict(fields)))
                pipe.xack(self.stream, self.group, entry_id)
                added, _acked = await pipe.execute()
        return _text(added)

    async def own_pending(self, count: int) -> list[PendingEntry]:
        """Pending entries owned by this consumer, oldest first."""
        return await self.pending(count, consumer=self.consumer)

    async def pending(self, count: int, *, consumer: str | None = None) -> list[PendingEntry]:
        with redis_errors("XPENDING", self.stream):
            rows = await self.redis.xpending_range(
                self.stream, self.group, "-", "+", count, consumername=consumer
            )
        return [
            PendingEntry(
                _text(r["message_id"]),
                _text(r["consumer"]),
                int(r["time_since_delivered"]),
                int(r["times_delivered"]),
            )
            for r in rows
        ]

    async def touch(self, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer owns, without counting a delivery
        (XCLAIM ... JUSTID to itself; entries another consumer took meanwhile move back)."""
        claimed: list[Any] = list(ids)
        with redis_errors("XCLAIM (keep alive)", self.stream):
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, claimed, justid=True)

    async def release(self, delivery: Delivery) -> None:
        """Keep an entry pending without counting this delivery (it failed for reasons
        outside the message, e.g. the database was down): XCLAIM ... RETRYCOUNT n-1 JUSTID."""
        ids: list[Any] = [delivery.id]
        with redis_errors("XCLAIM (release)", self.stream):
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, 0, ids,
                retrycount=max(delivery.delivery_count - 1, 0), justid=True,
            )  # fmt: skip

    async def hand_back(self, entries: Sequence[PendingEntry]) -> None:
        """Make entries this consumer will not process claimable by others at once, without
        counting the hand-back as a delivery (XCLAIM ... IDLE <huge> RETRYCOUNT n-1 JUSTID)."""
        by_count: dict[int, list[Any]] = {}
        for entry in entries:
            by_count.setdefault(max(entry.delivery_count - 1, 0), []).append(entry.id)
        if not by_count:
            return
        with redis_errors("XCLAIM (hand back)", self.stream):
            async with self.redis.pipeline(transaction=False) as pipe:
                for retry_count, ids in by_count.items():
                    pipe.xclaim(
                        self.stream, self.group, self.consumer, 0, ids,
                        idle=_HANDED_BACK_IDLE_MS, retrycount=retry_count, justid=True,
                    )  # fmt: skip
                await pipe.execute()
